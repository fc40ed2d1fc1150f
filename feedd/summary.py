"""The short human summaries: what `feedd check` prints for a valid config, and where to go next once
`feedd serve` listens."""

from __future__ import annotations

from collections.abc import Sequence

from feedd.config import Config
from feedd.config.values import Address, StoreType

_ANY = ("0.0.0.0", "::", "")  # a wildcard listen address is reached locally through the loopback


def next_steps(config: Config, sftp: Sequence[Address], http: Sequence[Address]) -> dict[str, str]:
    """The bound SFTP and HTTP addresses and what to do next: upload a file, then list its run."""
    # the example config's demo partner when there is one (its password is in the README), else the first
    enabled = [c.name for c in config.connections.values() if c.enabled]
    user = "demo" if "demo" in enabled else enabled[0] if enabled else "<connection>"
    out: dict[str, str] = {}
    steps: list[str] = []
    if sftp:
        host = "127.0.0.1" if sftp[0].host in _ANY else sftp[0].host
        out["sftp"] = str(sftp[0])
        steps.append(f"upload into inbox/: sftp -P {sftp[0].port} {user}@{host}")
    if http:
        host = "127.0.0.1" if http[0].host in _ANY else http[0].host
        url = f"{'https' if config.http.tls else 'http'}://{Address(host, http[0].port)}"
        out["http"] = url
        steps.append(f"then: feedd runs list --url {url} --key <api key>")
        if config.http.console and config.http.operators:
            steps.append(f"or open the console: {url}/ui/")
    out["next"] = ", ".join(steps)
    return out


def summarize(config: Config) -> str:
    lines = [f"config OK: {config.path}"]
    if len(config.files) > 1:
        lines.append(f"  files: {', '.join(config.files)}")
    lines.append(f"  state_dir: {config.state_dir}")
    if config.store.type is StoreType.POSTGRESQL:
        lines.append("  store: postgresql (store.dsn; shared by every node)")  # the DSN may hold a password
    lines.append(f"  sftp: {', '.join(map(str, config.sftp.listen))}   http: {', '.join(map(str, config.http.listen))}")
    lines.append(f"  connections ({len(config.connections)}):")
    for c in config.connections.values():
        auth = [a for a, on in (("password", c.password_hash), ("keys", c.authorized_keys or c.authorized_keys_file))
                if on]
        state = "" if c.enabled else "  [disabled]"
        lines.append(f"    {c.name}: {'+'.join(auth)}{state}")
    lines.append(f"  schemas ({len(config.schemas)}):")
    for s in config.schemas.values():
        rules = f", {len(s.rules)} rule{'s' if len(s.rules) != 1 else ''}" if s.rules else ""
        lines.append(f"    {s.name}: {len(s.fields)} fields{rules}")
    if config.lookups:
        lines.append(f"  lookups ({len(config.lookups)}):")
        for lk in config.lookups.values():
            refresh = f", refresh {lk.refresh:g}s" if lk.refresh else ""
            lines.append(f"    {lk.name}: {lk.file} column {lk.column!r}{refresh}")
    lines.append(f"  pipelines ({len(config.pipelines)}):")
    for p in config.pipelines.values():
        dests = ", ".join(d.key for d in p.destinations) or "none"
        state = "" if p.active else "  [inactive]"
        lines.append(f"    {p.name}: {p.direction} {p.connection} -> {p.schema} -> {dests}{state}")
    lines.append(f"  webhooks: {len(config.webhooks)}   api keys: {len(config.http.api_keys)}")
    return "\n".join(lines)
