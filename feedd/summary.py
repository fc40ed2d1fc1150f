"""The short human summary `feedd check` prints for a valid config."""

from __future__ import annotations

from feedd.config import Config


def summarize(config: Config) -> str:
    lines = [f"config OK: {config.path}"]
    if len(config.files) > 1:
        lines.append(f"  files: {', '.join(config.files)}")
    lines.append(f"  state_dir: {config.state_dir}")
    lines.append(f"  sftp: {', '.join(map(str, config.sftp.listen))}   http: {', '.join(map(str, config.http.listen))}")
    lines.append(f"  connections ({len(config.connections)}):")
    for c in config.connections.values():
        auth = [a for a, on in (("password", c.password_hash), ("keys", c.authorized_keys or c.authorized_keys_file))
                if on]
        state = "" if c.enabled else "  [disabled]"
        lines.append(f"    {c.name}: {'+'.join(auth)}{state}")
    lines.append(f"  schemas ({len(config.schemas)}):")
    for s in config.schemas.values():
        lines.append(f"    {s.name}: {len(s.fields)} fields")
    lines.append(f"  pipelines ({len(config.pipelines)}):")
    for p in config.pipelines.values():
        dests = ", ".join(d.key for d in p.destinations) or "none"
        state = "" if p.active else "  [inactive]"
        lines.append(f"    {p.name}: {p.direction} {p.connection} -> {p.schema} -> {dests}{state}")
    lines.append(f"  webhooks: {len(config.webhooks)}   api keys: {len(config.http.api_keys)}")
    return "\n".join(lines)
