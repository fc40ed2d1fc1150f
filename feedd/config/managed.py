"""Objects created over the API inside the config tree: an API body becomes a located YAML block, merged with
the file's own, so that one validator (and one set of messages) judges both; and the plain, secret-free shape
in which any object is shown back."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from feedd.config.source import API, Loc, LocList, LocMap
from feedd.errors import ConfigIssue
from feedd.model import ManagedObject

REDACTED = "<redacted>"
_ENV_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")
# Keys inside an object whose values are secrets wherever they appear (a webhook destination's `secret`, an
# sftp destination's `password`, a key's `passphrase`). Connections' passwords are answered as `hasPassword`.
SECRET_KEYS = frozenset({"secret", "password", "passphrase"})


def located(value: Any, loc: Loc) -> Any:
    """A JSON value as the YAML reader would have given it: mappings and lists that know where they are."""
    if isinstance(value, Mapping):
        out = LocMap(loc)
        for key, item in value.items():
            out[str(key)] = located(item, loc)
            out.locs[str(key)] = loc
        return out
    if isinstance(value, list):
        seq = LocList((located(item, loc) for item in value), loc)
        seq.locs = [loc] * len(value)
        return seq
    return value


def plain(value: Any) -> Any:
    """A located tree back to plain dicts and lists (what JSON and YAML writers expect)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def merge(tree: LocMap, objects: Iterable[ManagedObject], base: Path, issues: list[ConfigIssue]) -> LocMap:
    """A copy of the file's tree with the API's objects added to their sections. A name both define is an
    issue naming the file's place and the store, and the file's object stays."""
    merged = copy.deepcopy(tree)
    for obj in objects:
        section = obj.kind.section
        target = merged.get(section)
        if not isinstance(target, LocMap):
            if target is not None:
                continue  # the file's section is malformed: its own issue says so
            target = LocMap(Loc(API, base, 0))
            merged[section], merged.locs[section] = target, target.loc
        where = Loc(API, base, 0)
        if obj.name in target:
            first = target.locs.get(obj.name, target.loc)
            issues.append(ConfigIssue(first.file, first.line, f"{section}.{obj.name}",
                                      f"defined in the config file ({first.file}:{first.line}) and in the store "
                                      f"(created over the API); rename or delete one of them"))
            continue
        target[obj.name], target.locs[obj.name] = located(obj.body, where), where
    return merged


def relative_issues(issues: Iterable[ConfigIssue], section: str, name: str) -> list[dict[str, str]]:
    """Issues as an API answer's `details`: paths inside the object when they are in it, whole otherwise."""
    prefix = f"{section}.{name}"
    out = []
    for issue in issues:
        path = issue.path
        if path == prefix:
            path = ""
        elif path.startswith(prefix + ".") or path.startswith(prefix + "["):
            path = path[len(prefix) + 1:] if path[len(prefix)] == "." else path[len(prefix):]
        elif issue.file != API:
            path = f"{path} ({issue.file}:{issue.line})" if issue.line else path
        out.append({"path": path, "message": issue.message})
    return out


def shown(section: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """An object as answers and the audit log show it: no password, hash or literal secret. A secret given as
    `${VAR}` is shown (it names a variable, not its value); a literal one as `<redacted>`."""
    out: dict[str, Any] = _redact(plain(body))
    if section == "connections":
        has = any(k in body for k in ("password", "password_hash"))
        out.pop("password_hash", None)
        out.pop("password", None)
        out["hasPassword"] = has
    return out


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (_redact_secret(v) if k in SECRET_KEYS else _redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _redact_secret(value: Any) -> Any:
    return value if isinstance(value, str) and _ENV_REF.match(value) else REDACTED


def keep_secrets(new: Any, old: Any) -> Any:
    """`new` with every `<redacted>` secret taken from `old` at the same place (a body shown by the API and
    sent back keeps the secrets it could not show)."""
    if isinstance(new, dict):
        return {k: (old.get(k) if v == REDACTED and k in SECRET_KEYS and isinstance(old, dict) and k in old
                    else keep_secrets(v, old.get(k) if isinstance(old, dict) else None)) for k, v in new.items()}
    if isinstance(new, list):
        return [keep_secrets(v, old[i] if isinstance(old, list) and i < len(old) else None)
                for i, v in enumerate(new)]
    return new
