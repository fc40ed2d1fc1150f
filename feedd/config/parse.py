"""The config file's top level, server sections, connections and webhooks -> frozen values."""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedd.config import pipelines as pl
from feedd.config.algorithms import Algorithms, algorithms
from feedd.config.managed import merge, plain
from feedd.config.reader import (
    At,
    Bad,
    Converter,
    Reader,
    boolean,
    choice,
    duration,
    http_url,
    integer,
    nonempty,
    path,
    size,
    string,
    strings,
)
from feedd.config.source import NAMED_SECTIONS, LocMap, load_tree
from feedd.config.units import suggest
from feedd.config.values import (
    ANY_IP,
    DEFAULT_TEMP_PATTERNS,
    Address,
    ApiKey,
    BanConfig,
    ClusterConfig,
    Config,
    Connection,
    HttpConfig,
    IPNetwork,
    LogConfig,
    Operator,
    OperatorRole,
    Pgp,
    Retention,
    Role,
    SftpConfig,
    StoreConfig,
    StoreType,
    TlsConfig,
    TusConfig,
    WebhookSubscription,
)
from feedd.errors import ConfigError, ConfigIssue
from feedd.model import ManagedObject

EVENT_TYPES = (
    "run.queued", "run.completed", "run.delivered", "run.failed", "run.held", "run.needs_review",
    "upload.completed", "upload.aborted", "schema.drift", "config.changed", "arrival.missed",
)
TOP_KEYS = ("state_dir", "store", "include", "log", "sftp", "http", "lookups", "schemas", "connections",
            "pipelines", "webhooks", "retention", "cluster")
DEFAULT_STATE_DIR = Path("/var/lib/feedd")
ALL: tuple[str, ...] = ("*",)


@dataclass(frozen=True, slots=True)
class FileTree:
    """The config file as read (merged with its includes) but not yet judged: kept by the config in force,
    so that a change over the API is judged with the file as it was last loaded, not as it is on disk now."""

    path: Path
    tree: LocMap
    files: tuple[str, ...]
    issues: tuple[ConfigIssue, ...]


def read_file(file: str | os.PathLike[str]) -> FileTree:
    cfg_path = Path(file).expanduser().absolute()
    issues: list[ConfigIssue] = []
    tree, files = load_tree(cfg_path, issues)
    return FileTree(cfg_path, tree, tuple(files), tuple(issues))


def load_config(file: str | os.PathLike[str], env: Mapping[str, str] | None = None,
                managed: Sequence[ManagedObject] = ()) -> Config:
    """Read, merge and validate a config file. Raises ConfigError listing every problem found."""
    return build(read_file(file), managed, env)


def build(source: FileTree, managed: Sequence[ManagedObject] = (), env: Mapping[str, str] | None = None) -> Config:
    """The file's objects and the store's, judged together. Raises ConfigError listing every problem found."""
    r = Reader(os.environ if env is None else env)
    r.issues.extend(source.issues)
    tree = merge(source.tree, managed, source.path.parent, r.issues)
    top = r.mapping(tree, At(tree.loc, ""), TOP_KEYS) or tree
    root = At(tree.loc, "")
    state_dir = r.get(top, root, "state_dir", path, DEFAULT_STATE_DIR)
    connections = _connections(r, top.get("connections"), root.key(top, "connections"))
    lookups = pl.lookups(r, top.get("lookups"), root.key(top, "lookups"))
    schemas = pl.schemas(r, top.get("schemas"), root.key(top, "schemas"), lookups)
    retention_at = root.key(top, "retention")
    retention = pl.retention_of(r, top.get("retention"), retention_at, Retention(), ("sweep_every",))
    retention_m = top.get("retention") if isinstance(top.get("retention"), LocMap) else None
    config = Config(
        path=source.path,
        state_dir=state_dir,
        log=_log(r, top, root),
        sftp=_sftp(r, top, root, state_dir),
        http=_http(r, top, root, connections),
        schemas=schemas,
        connections=connections,
        pipelines=pl.pipelines(r, top.get("pipelines"), root.key(top, "pipelines"), schemas, connections,
                               retention),
        webhooks=_webhooks(r, top.get("webhooks"), root.key(top, "webhooks")),
        retention=retention,
        sweep_every=r.get(retention_m, retention_at, "sweep_every", _positive_duration, 3600.0),
        store=_store(r, top, root),
        cluster=_cluster(r, top, root),
        lookups=lookups,
        files=source.files,
        bodies={section: {name: plain(body) for name, body in top[section].items()}
                for section in NAMED_SECTIONS if isinstance(top.get(section), LocMap)},
    )
    if r.issues:
        order = {f: i for i, f in enumerate(source.files)}
        raise ConfigError(sorted(r.issues, key=lambda i: (order.get(i.file, len(order)), i.line)))
    return config


def _positive_duration(r: Reader, v: Any, at: At) -> float:
    seconds = duration(r, v, at)
    if seconds <= 0:
        raise Bad("expected a duration above 0 like 1h")
    return seconds


def _log(r: Reader, top: LocMap, root: At) -> LogConfig:
    at = root.key(top, "log")
    m = r.mapping(top.get("log"), at, ("level", "format"))
    return LogConfig(
        level=r.get(m, at, "level", choice("debug", "info", "warning", "error"), "info"),
        format=r.get(m, at, "format", choice("console", "json"), None),
    )


def _store(r: Reader, top: LocMap, root: At) -> StoreConfig:
    at = root.key(top, "store")
    m = r.mapping(top.get("store"), at, ("type", "dsn"))
    kind = StoreType(r.get(m, at, "type", choice(*StoreType), str(StoreType.SQLITE)))
    dsn = r.get(m, at, "dsn", nonempty, None)
    if kind is StoreType.POSTGRESQL and dsn is None and m is not None:
        r.issue(at, "missing required key 'dsn' (the PostgreSQL connection string, e.g. "
                    "postgresql://feedd@db.example.com/feedd)")
    elif kind is StoreType.SQLITE and dsn is not None and m is not None:
        r.issue(at.key(m, "dsn"), "dsn is only read with type: postgresql (SQLite lives in state_dir)")
    return StoreConfig(kind, dsn)


def _cluster(r: Reader, top: LocMap, root: At) -> ClusterConfig:
    at = root.key(top, "cluster")
    m = r.mapping(top.get("cluster"), at, ("takeover_after",))
    return ClusterConfig(takeover_after=r.get(m, at, "takeover_after", _positive_duration, 30.0))


def listen(r: Reader, v: Any, at: At) -> tuple[Address, ...]:
    out = []
    for item, sub in r.items(v, at):
        text = string(r, item, sub).strip()
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\s\[\]]+):(\d+)", text)
        if not m:
            r.issue(sub, f"expected host:port (or [ipv6]:port), got {text!r}")
            continue
        host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        if int(port) > 65535:
            r.issue(sub, f"port {port} is out of range (0-65535)")
            continue
        out.append(Address(host, int(port)))
    if not out:
        raise Bad("expected at least one host:port address")
    return tuple(out)


def _sftp(r: Reader, top: LocMap, root: At, state_dir: Path) -> SftpConfig:
    at = root.key(top, "sftp")
    keys = ("listen", "host_keys", "spaces_dir", "settle", "temp_patterns", "done_marker", "login_grace",
            "max_connections_per_connection",
            "idle_timeout", "max_sessions_per_connection", "ban", "partial_max_age", "scan_interval",
            "min_free_space", "max_folder_depth", "max_entries_per_space", "fast_path",
            "algorithms", "proxy_protocol")
    m = r.mapping(top.get("sftp"), at, keys)
    ban_at = at.key(m, "ban") if m else at
    ban = r.mapping(m.get("ban") if m else None, ban_at, ("after_failures", "within", "for"))
    return SftpConfig(
        listen=r.get(m, at, "listen", listen, (Address("127.0.0.1", 2222),)),
        host_keys=tuple(r.get(m, at, "host_keys", _paths, ())),
        spaces_dir=r.get(m, at, "spaces_dir", path, state_dir / "spaces"),
        settle=r.get(m, at, "settle", duration, 2.0),
        temp_patterns=r.get(m, at, "temp_patterns", strings, DEFAULT_TEMP_PATTERNS),
        done_marker=r.get(m, at, "done_marker", _marker, None),
        login_grace=r.get(m, at, "login_grace", duration, 30.0),
        idle_timeout=r.get(m, at, "idle_timeout", duration, 600.0),
        max_sessions_per_connection=r.get(m, at, "max_sessions_per_connection", integer(1, 1000), 10),
        max_connections_per_connection=r.get(m, at, "max_connections_per_connection", integer(1, 10000), 20),
        partial_max_age=r.get(m, at, "partial_max_age", duration, 86400.0),
        min_free_space=r.get(m, at, "min_free_space", size, 64 * 1024**2),
        scan_interval=r.get(m, at, "scan_interval", duration, 60.0),
        max_folder_depth=r.get(m, at, "max_folder_depth", integer(1, 256), 32),
        max_entries_per_space=r.get(m, at, "max_entries_per_space", integer(1), 100_000),
        fast_path=r.get(m, at, "fast_path", boolean, True),
        algorithms=r.get(m, at, "algorithms", algorithms, Algorithms()),
        proxy_protocol=r.get(m, at, "proxy_protocol", boolean, False),
        ban=BanConfig(
            after_failures=r.get(ban, ban_at, "after_failures", integer(1), 5),
            within=r.get(ban, ban_at, "within", duration, 300.0),
            duration=r.get(ban, ban_at, "for", duration, 900.0),
        ),
    )


def _paths(r: Reader, v: Any, at: At) -> list[Path]:
    out = []
    for item, sub in r.items(v, at):
        try:
            out.append(path(r, item, sub))
        except Bad as exc:
            r.issue(sub, str(exc))
    return out


def _marker(r: Reader, v: Any, at: At) -> str:
    s = nonempty(r, v, at)
    if "/" in s:
        raise Bad(f"expected a file name suffix like '.done', got {s!r}")
    return s


def _http(r: Reader, top: LocMap, root: At, connections: Mapping[str, Connection]) -> HttpConfig:
    at = root.key(top, "http")
    m = r.mapping(top.get("http"), at, ("listen", "max_part_size", "upload_expire_after", "api_keys", "tus",
                                            "tls", "console", "operators", "session_ttl",
                                            "proxy_protocol", "public_url"))
    tus_at = at.key(m, "tus") if m else at
    tus = r.mapping(m.get("tus") if m else None, tus_at, ("max_size", "expire_after", "cors_origins"))
    keys: list[ApiKey] = []
    if m is not None and m.get("api_keys") is not None:
        keys_at = at.key(m, "api_keys")
        for item, sub in r.items(m["api_keys"], keys_at):
            km = r.mapping(item, sub, ("name", "key_sha256", "connections", "role"))
            if km is None:
                r.issue(sub, "expected {name, key_sha256, connections}")
                continue
            key = ApiKey(
                name=r.require(km, sub, "name", nonempty, "?"),
                key_sha256=r.require(km, sub, "key_sha256", _sha256_hex, ""),
                connections=r.get(km, sub, "connections", strings, ALL),
                role=Role(r.get(km, sub, "role", choice(*Role), "app")),
            )
            for name in key.connections:
                if name != "*" and name not in connections:
                    r.issue(sub.key(km, "connections"), f"unknown connection {name!r}{suggest(name, connections)}")
            keys.append(key)
    return HttpConfig(
        listen=r.get(m, at, "listen", listen, (Address("127.0.0.1", 8080),)),
        max_part_size=r.get(m, at, "max_part_size", size, 64 * 1024**2),
        upload_expire_after=r.get(m, at, "upload_expire_after", duration, 86400.0),
        api_keys=tuple(keys),
        tus=TusConfig(
            max_size=r.get(tus, tus_at, "max_size", size, 5 * 1024**3),
            expire_after=r.get(tus, tus_at, "expire_after", duration, 86400.0),
            cors_origins=r.get(tus, tus_at, "cors_origins", strings, ()),
        ),
        tls=r.get(m, at, "tls", _tls, None),
        console=r.get(m, at, "console", boolean, True),
        operators=tuple(r.get(m, at, "operators", _operators, [])),
        session_ttl=r.get(m, at, "session_ttl", duration, 12 * 3600.0),
        proxy_protocol=r.get(m, at, "proxy_protocol", boolean, False),
        public_url=r.get(m, at, "public_url", _public_url, None),
    )


def _operators(r: Reader, v: Any, at: At) -> list[Operator]:
    out: list[Operator] = []
    seen: set[str] = set()
    for item, sub in r.items(v, at):
        om = r.mapping(item, sub, ("name", "password_hash", "role"))
        if om is None:
            r.issue(sub, "expected {name, password_hash, role}")
            continue
        op = Operator(
            name=r.require(om, sub, "name", nonempty, "?"),
            password_hash=r.require(om, sub, "password_hash", _password_hash, ""),
            role=OperatorRole(r.get(om, sub, "role", choice(*OperatorRole), "viewer")),
        )
        if op.name in seen:
            r.issue(sub.key(om, "name"), f"operator {op.name!r} is defined twice")
        seen.add(op.name)
        out.append(op)
    return out



def _public_url(r: Reader, v: Any, at: At) -> str:
    """The base people reach the HTTP port by (behind a proxy: its URL), without a trailing slash."""
    s = http_url(r, v, at).rstrip("/")
    if "?" in s or "#" in s:
        raise Bad(f"expected a base URL without a query or fragment, got {s!r}")
    return s


def _tls(r: Reader, v: Any, at: At) -> TlsConfig | None:
    m = r.mapping(v, at, ("cert", "key"))
    if m is None:
        return None
    cert = r.require(m, at, "cert", _readable, None)
    key = r.require(m, at, "key", _readable, None)
    return TlsConfig(cert, key) if cert is not None and key is not None else None


def _readable(r: Reader, v: Any, at: At) -> Path:
    """A file that can be read now: found by `feedd check`, not at the first connection."""
    p = path(r, v, at)
    try:
        with open(p, "rb"):
            pass
    except OSError as exc:
        raise Bad(f"cannot read {p}: {exc.strerror or exc}") from None
    return p


def _sha256_hex(r: Reader, v: Any, at: At) -> str:
    s = string(r, v, at).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", s):
        raise Bad("expected 64 hex digits (the sha256 that `feedd apikey` prints)")
    return s


def _connections(r: Reader, v: Any, at: At) -> dict[str, Connection]:
    keys = ("password_hash", "authorized_keys", "authorized_keys_file", "allowed_ips", "enabled", "quota",
            "max_file_size", "pgp")
    out = {}
    for name, body, sub in r.named(v, at, "connection"):
        m = r.mapping(body, sub, keys) or LocMap(sub.loc)
        conn = Connection(
            name=name,
            password_hash=r.get(m, sub, "password_hash", _password_hash, None),
            authorized_keys=r.get(m, sub, "authorized_keys", _public_keys, ()),
            authorized_keys_file=r.get(m, sub, "authorized_keys_file", _keys_file, None),
            allowed_ips=r.get(m, sub, "allowed_ips", _networks, ANY_IP),
            enabled=r.get(m, sub, "enabled", boolean, True),
            quota=r.get(m, sub, "quota", size, None),
            max_file_size=r.get(m, sub, "max_file_size", size, None),
            pgp=r.get(m, sub, "pgp", _pgp, None),
        )
        if not (conn.password_hash or conn.authorized_keys or conn.authorized_keys_file):
            r.issue(sub, "no way to log in: set password_hash, authorized_keys or authorized_keys_file")
        out[name] = conn
    return out


def _pgp(r: Reader, v: Any, at: At) -> Pgp | None:
    """`pgp: {decrypt_key, passphrase, encrypt_to}`: each key file is read now and must hold a usable key."""
    from feedd.pgp import check_key_file  # here: gnupg is needed only by connections that use OpenPGP

    m = r.mapping(v, at, ("decrypt_key", "passphrase", "encrypt_to"))
    if m is None:
        return None

    def key_file(secret: bool) -> Converter[Path]:
        def conv(r: Reader, v: Any, at: At) -> Path:
            p = path(r, v, at)
            problem = check_key_file(p, secret=secret)
            if problem is not None:
                raise Bad(problem)
            return p
        return conv

    recipients: list[Path] = []
    if m.get("encrypt_to") is not None:
        for item, sub in r.items(m["encrypt_to"], at.key(m, "encrypt_to")):
            try:
                recipients.append(key_file(False)(r, item, sub))
            except Bad as exc:
                r.issue(sub, str(exc))
    pgp = Pgp(decrypt_key=r.get(m, at, "decrypt_key", key_file(True), None),
              passphrase=r.get(m, at, "passphrase", _passphrase, None), encrypt_to=tuple(recipients))
    if pgp.passphrase is not None and "decrypt_key" not in m:
        r.issue(at.key(m, "passphrase"), "a passphrase is for decrypt_key, which is not set")
    if "decrypt_key" not in m and "encrypt_to" not in m:
        r.issue(at, "expected decrypt_key (a secret key file), encrypt_to (public key files), or both")
    return pgp


def _passphrase(r: Reader, v: Any, at: At) -> str:
    s = nonempty(r, v, at)
    if "\n" in s or "\r" in s:
        raise Bad("a passphrase cannot hold a line break (gpg reads it as one line)")
    return s


def _password_hash(r: Reader, v: Any, at: At) -> str:
    s = nonempty(r, v, at).strip()
    if not s.startswith(("$argon2id$", "$argon2i$", "$argon2d$")):
        raise Bad("expected an argon2 hash starting with '$argon2id$' (make one with `feedd passwd`)")
    return s


def _public_keys(r: Reader, v: Any, at: At) -> tuple[str, ...]:
    import asyncssh  # here, not at the top: worker processes import the config types without it (~0.3 s)

    out = []
    for item, sub in r.items(v, at):
        text = string(r, item, sub).strip()
        try:
            asyncssh.import_public_key(text)
        except (asyncssh.KeyImportError, ValueError) as exc:
            r.issue(sub, f"not a valid SSH public key: {exc}")
            continue
        out.append(text)
    return tuple(out)


def _keys_file(r: Reader, v: Any, at: At) -> Path:
    import asyncssh

    p = path(r, v, at)
    try:
        asyncssh.read_authorized_keys(str(p))
    except OSError as exc:
        raise Bad(f"cannot read authorized keys file {p}: {exc.strerror or exc}") from None
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise Bad(f"bad authorized keys file {p}: {exc}") from None
    return p


def _networks(r: Reader, v: Any, at: At) -> tuple[IPNetwork, ...]:
    out = []
    for item, sub in r.items(v, at):
        text = string(r, item, sub).strip()
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            r.issue(sub, f"expected an IP address or CIDR network like 10.0.0.0/8, got {text!r}")
    return tuple(out)


def _webhooks(r: Reader, v: Any, at: At) -> tuple[WebhookSubscription, ...]:
    if v is None:
        return ()
    out = []
    for item, sub in r.items(v, at):
        m = r.mapping(item, sub, ("url", "secret", "events"))
        if m is None:
            r.issue(sub, "expected {url, secret, events}")
            continue
        events: tuple[str, ...] = r.get(m, sub, "events", strings, ("*",))
        for pattern in events:
            if not fnmatch.filter(EVENT_TYPES, pattern):
                r.issue(sub.key(m, "events"),
                        f"{pattern!r} matches no event type{suggest(pattern, EVENT_TYPES)}; "
                        f"types: {', '.join(EVENT_TYPES)}")
        out.append(WebhookSubscription(
            url=r.require(m, sub, "url", http_url, ""),
            secret=r.get(m, sub, "secret", nonempty, None),
            events=events,
        ))
    return tuple(out)

