"""The config as frozen dataclasses: what the rest of feedd reads. Built only by `feedd.config.parse`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from feedd.config.algorithms import Algorithms
from feedd.model import Direction

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ANY_IP: tuple[IPNetwork, ...] = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
DEFAULT_TEMP_PATTERNS: tuple[str, ...] = ("*.part", "*.tmp", "*.filepart", ".*", "~*")


class FieldType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    DECIMAL = "decimal"
    NUMBER = "number"
    BOOLEAN = "boolean"
    DATE = "date"
    DATETIME = "datetime"
    EMAIL = "email"
    ENUM = "enum"


class DestinationType(StrEnum):
    DIRECTORY = "directory"
    OUTBOX = "outbox"
    WEBHOOK = "webhook"
    S3 = "s3"
    SFTP = "sftp"


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class StoreType(StrEnum):
    SQLITE = "sqlite"  # embedded, in state_dir: one node
    POSTGRESQL = "postgresql"  # shared by any number of nodes


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where durable state lives. `dsn` (a libpq URI or key=value string) is set for PostgreSQL only."""

    type: StoreType = StoreType.SQLITE
    dsn: str | None = None


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """How nodes sharing a store watch each other: a node whose heartbeat is older than `takeover_after`
    (seconds) is taken for dead, and the work it held goes back to the others."""

    takeover_after: float = 30.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: str | None = None  # None: console on a TTY, JSON otherwise


@dataclass(frozen=True, slots=True)
class BanConfig:
    after_failures: int = 5
    within: float = 300.0
    duration: float = 900.0  # `for` in the file


@dataclass(frozen=True, slots=True)
class SftpConfig:
    listen: tuple[Address, ...]
    host_keys: tuple[Path, ...]
    spaces_dir: Path
    settle: float = 2.0
    temp_patterns: tuple[str, ...] = DEFAULT_TEMP_PATTERNS
    done_marker: str | None = None
    login_grace: float = 30.0
    idle_timeout: float = 600.0
    max_sessions_per_connection: int = 10
    max_connections_per_connection: int = 20  # SSH connections logged in at once, per partner connection
    ban: BanConfig = BanConfig()
    partial_max_age: float = 86400.0  # partial uploads (client gone mid-upload) are deleted after this
    min_free_space: int = 64 * 1024**2  # below this free on the spaces' or state's disk, new uploads are refused
    scan_interval: float = 60.0  # reconciliation scan of every inbox
    max_folder_depth: int = 32  # folders below inbox/ nest at most this deep (SFTP mkdir and rename)
    max_entries_per_space: int = 100_000  # files and folders in one inbox/ (SFTP create and mkdir)
    fast_path: bool = True  # feedd's speed-ups to asyncssh's receive path (feedd.sftp.wire)
    algorithms: Algorithms = field(default_factory=Algorithms)  # what the SSH server offers
    proxy_protocol: bool = False  # behind a load balancer: each connection starts with a PROXY header


class Role(StrEnum):
    """What an API key may do: `app` uploads and reads runs and views of its connections; `admin` also
    manages objects and reads the audit log."""

    APP = "app"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    key_sha256: str
    connections: tuple[str, ...] = ("*",)
    role: Role = Role.APP

    @property
    def admin(self) -> bool:
        return self.role is Role.ADMIN

    def allows(self, connection: str) -> bool:
        return "*" in self.connections or connection in self.connections


@dataclass(frozen=True, slots=True)
class TusConfig:
    max_size: int = 5 * 1024**3
    expire_after: float = 86400.0
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to use /tus/ ("*" for any)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: Path  # PEM: the server certificate, then any intermediates
    key: Path  # PEM: its private key (unencrypted)


class OperatorRole(StrEnum):
    """What a console operator may do: `admin` changes things; `viewer` sees everything and changes nothing."""

    ADMIN = "admin"
    VIEWER = "viewer"


@dataclass(frozen=True, slots=True)
class Operator:
    """A person who logs in to the console with a name and password."""

    name: str
    password_hash: str
    role: OperatorRole = OperatorRole.VIEWER

    @property
    def admin(self) -> bool:
        return self.role is OperatorRole.ADMIN


@dataclass(frozen=True, slots=True)
class HttpConfig:
    listen: tuple[Address, ...]
    max_part_size: int = 64 * 1024**2
    upload_expire_after: float = 86400.0  # an outbound upload not touched for this long is aborted
    api_keys: tuple[ApiKey, ...] = ()
    tus: TusConfig = TusConfig()
    tls: TlsConfig | None = None  # None: plain HTTP
    console: bool = True  # the operator console at /ui/
    operators: tuple[Operator, ...] = ()
    session_ttl: float = 12 * 3600.0  # a console session ends this long after its login
    proxy_protocol: bool = False  # behind a load balancer: each connection starts with a PROXY header
    public_url: str | None = None  # how people reach this port (links in events); None: from `listen`


class Severity(StrEnum):
    """What a failed rule does: `error` makes the row invalid; `warning` lists it and keeps the row valid."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Lookup:
    """Reference values: one column of a CSV file (`lookups:` at the top level), read by each worker
    process and re-read when the file changes or `refresh` seconds have passed."""

    name: str
    file: Path
    column: str
    refresh: float | None = None


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    type: FieldType
    required: bool = False
    unique: bool = False
    pattern: str | None = None
    min: Any = None
    max: Any = None
    min_length: int | None = None
    max_length: int | None = None
    values: tuple[str, ...] = ()
    default: Any = None
    aliases: tuple[str, ...] = ()
    in_lookup: Lookup | None = None
    severity: Severity = Severity.ERROR  # of the value rules (not of the type: a value of another type is unusable)


@dataclass(frozen=True, slots=True)
class Rule:
    """A cross-field rule of a schema: when `when` holds (always, if None), the fields in `require` must have
    values and `check` must not be false. Expressions are kept as written, checked at load."""

    when: str | None = None
    require: tuple[str, ...] = ()
    check: str | None = None
    message: str | None = None
    severity: Severity = Severity.ERROR


@dataclass(frozen=True, slots=True)
class Schema:
    name: str
    fields: tuple[FieldSpec, ...]
    rules: tuple[Rule, ...] = ()

    def field(self, name: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.name == name), None)


@dataclass(frozen=True, slots=True)
class Pgp:
    """A connection's OpenPGP keys (README, "OpenPGP"): `decrypt_key` (a secret key file) decrypts its inbound
    `*.pgp`/`*.gpg`/`*.asc` files; `encrypt_to` (public key files) is whom its outbox files are encrypted to."""

    decrypt_key: Path | None = None
    passphrase: str | None = field(default=None, repr=False)  # of decrypt_key; never shown or logged
    encrypt_to: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True)
class Connection:
    name: str
    password_hash: str | None = None
    authorized_keys: tuple[str, ...] = ()
    authorized_keys_file: Path | None = None
    allowed_ips: tuple[IPNetwork, ...] = ANY_IP
    enabled: bool = True
    quota: int | None = None
    max_file_size: int | None = None
    pgp: Pgp | None = None  # None: files in and out as they are


@dataclass(frozen=True, slots=True)
class Transform:
    name: str
    arg: Any = None


@dataclass(frozen=True, slots=True)
class FieldMapping:
    """How one schema field is filled: from a source column, a template or a constant."""

    target: str
    source: str | None = None
    template: str | None = None
    value: Any = None
    has_value: bool = False
    transforms: tuple[Transform, ...] = ()
    default: Any = None


@dataclass(frozen=True, slots=True)
class FormatConfig:
    type: str = "auto"  # csv | tsv | json | jsonl | xlsx | auto
    delimiter: str = "auto"
    encoding: str = "auto"
    header: bool = True
    skip_rows: int = 0
    sheet: str | int = 0  # a workbook's sheet: its name, or its position counted from 0


@dataclass(frozen=True, slots=True)
class OutputConfig:
    format: str = "jsonl"  # csv | json | jsonl
    filename: str = "{stem}.{run_id}.{ext}"


@dataclass(frozen=True, slots=True)
class Destination:
    """One place a run's output goes. `key` names it in deliveries and stays stable across reloads."""

    type: DestinationType
    key: str
    max_attempts: int = 10  # then the delivery is `failed` (a permanent refusal fails at the first)
    path: Path | None = None  # directory
    url: str | None = None  # webhook
    secret: str | None = None  # webhook
    timeout: float = 30.0  # webhook: seconds for one POST
    batch_size: int = 1000  # webhook: records per POST
    body: str = "ndjson"  # webhook: ndjson | json (an array)
    bucket: str | None = None  # s3
    prefix: str = ""  # s3
    endpoint_url: str | None = None  # s3
    region: str | None = None  # s3
    host: str | None = None  # sftp
    port: int = 22  # sftp
    username: str | None = None  # sftp
    password: str | None = None  # sftp
    key_file: Path | None = None  # sftp
    known_hosts: Path | None = None  # sftp
    remote_path: str | None = None  # sftp `path`


# What a pipeline's `review` may name: the run-level failures a person can settle by choosing columns
# (`unmapped_required_field`), accepting the rows that are valid (`too_many_errors`) or the new header
# set (`schema_drift`, not a failure on its own).
REVIEW_REASONS = ("unmapped_required_field", "too_many_errors", "schema_drift")


@dataclass(frozen=True, slots=True)
class Expect:
    """When a pipeline's file is expected: at each `cron` time (in `timezone`) plus `grace`, at least one
    file must have arrived since the window before closed (README, "Expected arrivals")."""

    cron: str
    timezone: str = "UTC"
    grace: float = 0.0
    min_rows: int = 0  # valid rows a run needs to count (a completed empty file always counts)
    notify_partner: bool = False

    @property
    def key(self) -> str:
        """What decides the windows and what counts in them: a change starts watching afresh."""
        return f"{self.cron}|{self.timezone}|{self.grace:g}|{self.min_rows}"


@dataclass(frozen=True, slots=True)
class Retention:
    """How long feedd keeps what it holds, in seconds; None keeps forever (README, "Retention")."""

    inputs: float | None = None  # spooled inputs, after their run finished
    outputs: float | None = None  # a run's outputs (records, rejects, report), after it finished
    outbox: float | None = None  # files in a partner's outbox/, by age
    after_ack: float | None = None  # inputs and outputs of an acknowledged run, after its acknowledgement


@dataclass(frozen=True, slots=True)
class Pipeline:
    name: str
    connection: str
    schema: str
    direction: Direction = Direction.INBOUND
    active: bool = True
    match: tuple[str, ...] = ()
    format: FormatConfig = FormatConfig()
    auto_map: bool = True
    mappings: tuple[FieldMapping, ...] = ()
    egress: str = "valid_only"  # valid_only | all
    max_error_rate: float = 1.0
    reports: bool = True
    output: OutputConfig = OutputConfig()
    destinations: tuple[Destination, ...] = ()
    skip_duplicates: bool = True  # the same content again from the same connection is recorded, not processed
    allow_empty: bool = False  # a 0-byte input completes with 0 rows ("nothing today") instead of failing
    review: tuple[str, ...] = ()  # failures (REVIEW_REASONS) that send a run to a person instead of failing it
    expect: Expect | None = None  # None: no file is expected at any time
    retention: Retention = Retention()  # the top-level retention with this pipeline's own keys over it


@dataclass(frozen=True, slots=True)
class WebhookSubscription:
    url: str
    secret: str | None = None
    events: tuple[str, ...] = ("*",)


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    state_dir: Path
    log: LogConfig
    sftp: SftpConfig
    http: HttpConfig
    schemas: dict[str, Schema] = field(default_factory=dict)
    connections: dict[str, Connection] = field(default_factory=dict)
    pipelines: dict[str, Pipeline] = field(default_factory=dict)
    webhooks: tuple[WebhookSubscription, ...] = ()
    retention: Retention = Retention()
    sweep_every: float = 3600.0  # seconds between retention sweeps (one also runs at start)
    lookups: dict[str, Lookup] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    # Each named object as written (file or API), section -> name -> body: what the API shows back.
    bodies: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    store: StoreConfig = StoreConfig()
    cluster: ClusterConfig = ClusterConfig()
