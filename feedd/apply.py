"""`feedd apply` and `feedd get`: schemas, connections and pipelines kept in YAML files, sent through the side
API's management routes and read back in the same shape (README, "Managing objects over the API").

A YAML file for `apply` has the config file's own sections and object shape, so a block moves between the
config file, an apply file and an API body unchanged. `apply` sends schemas first, then connections, then
pipelines (each refers to the ones before); `--prune` deletes the managed objects the file does not name, in
the reverse order. `get -o yaml` prints what `apply` takes: applying it again changes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import yaml

from feedd.client import Client, ClientError

SECTIONS = ("schemas", "connections", "pipelines")  # the order objects refer to each other in
KINDS = {"schemas": "schema", "connections": "connection", "pipelines": "pipeline"}
# Answer keys inside `object` that are no config keys: a connection shows whether it has a password.
NOT_CONFIG = frozenset({"hasPassword"})

Objects = dict[str, dict[str, dict[str, Any]]]  # section -> name -> object


class ApplyFileError(Exception):
    """An apply file that cannot be read as sections of named objects."""


def read_objects(path: Path, warn: Callable[[str], None]) -> Objects:
    """The schemas, connections and pipelines of a YAML file, read as the config file is (YAML 1.2
    booleans, duplicate keys refused); other top-level keys are not applied, with a warning."""
    from feedd.config.managed import plain
    from feedd.config.source import read_yaml

    issues: list[Any] = []
    tree = read_yaml(path, issues, base=Path.cwd())  # messages name the file as the command line did
    if issues or tree is None:
        raise ApplyFileError("; ".join(str(i) for i in issues) or f"{path}: cannot read")
    data = plain(tree)
    out: Objects = {}
    for key, value in data.items():
        if key not in SECTIONS:
            warn(f"{path}: top-level key {key!r} is not applied (only {', '.join(SECTIONS)} are)")
            continue
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ApplyFileError(f"{path}: {key}: expected a mapping of name -> object")
        for name, body in value.items():
            if body is not None and not isinstance(body, dict):
                raise ApplyFileError(f"{path}: {key}.{name}: expected a mapping (the object's keys)")
        out[key] = {name: _jsonable(body or {}) for name, body in value.items()}
    return out


def _jsonable(value: Any) -> Any:
    """YAML dates and times as the ISO text a JSON body carries."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value


def _path(section: str, name: str | None = None, *, dry_run: bool = False) -> str:
    path = f"/{section}" + (f"/{urllib.parse.quote(name, safe='')}" if name is not None else "")
    return path + ("?dryRun=true" if dry_run else "")


def apply(client: Client, objects: Objects, *, prune: bool = False, dry_run: bool = False,
          out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Create or update every object, then (with `prune`) delete the managed ones not named; one line per
    object. 0 when every object went through, 1 when any was refused (the others are still tried)."""
    suffix = " (dry run)" if dry_run else ""
    failed = False

    def report(kind: str, name: str, what: str) -> None:
        print(f"{kind} {name}: {what}{suffix}", file=out, flush=True)

    def refused(kind: str, name: str, exc: ClientError) -> None:
        nonlocal failed
        failed = True
        if exc.code == "invalid_config" and exc.details:
            for detail in exc.details:
                where = f"{detail.get('path')}: " if detail.get("path") else ""
                print(f"{kind} {name}: {where}{detail.get('message')}", file=err, flush=True)
        else:
            print(f"{kind} {name}: {exc}", file=err, flush=True)

    try:
        server = {s: {a["name"]: a for a in client.request("GET", _path(s))["data"]} for s in SECTIONS}
    except ClientError as exc:
        print(f"feedd apply: {exc}", file=err)
        return 1
    for section in SECTIONS:
        kind = KINDS[section]
        for name, body in objects.get(section, {}).items():
            current = server[section].get(name)
            try:
                if current is None:
                    sent = {k: v for k, v in body.items() if v is not None}  # null: the default, as in a PATCH
                    client.request("POST", _path(section, dry_run=dry_run), {"name": name, **sent})
                    report(kind, name, "created")
                    continue
                # The whole object: keys the server's object has and the file does not go back to their defaults.
                whole = {**{k: None for k in current["object"] if k not in NOT_CONFIG}, **body}
                headers = {"If-Match": f'"{current["version"]}"'} if current.get("version") is not None else {}
                answer = client.request("PATCH", _path(section, name, dry_run=dry_run), whole, headers=headers)
                report(kind, name, "updated" if answer.get("changed", True) else "unchanged")
            except ClientError as exc:
                refused(kind, name, exc)
    if prune:
        for section in reversed(SECTIONS):
            kind = KINDS[section]
            named = objects.get(section, {})
            for name, answer in server[section].items():
                if answer["source"] != "api" or name in named:
                    continue
                if dry_run:  # a deletion cannot be tried without doing it
                    report(kind, name, "deleted")
                    continue
                try:
                    headers = {"If-Match": f'"{answer["version"]}"'} if answer.get("version") is not None else {}
                    client.request("DELETE", _path(section, name), headers=headers)
                    report(kind, name, "deleted")
                except ClientError as exc:
                    refused(kind, name, exc)
    return 1 if failed else 0


def get(client: Client, section: str, name: str | None = None) -> Objects:
    """Objects as the API shows them, in the config file's shape: {section: {name: object}}."""
    answers = [client.request("GET", _path(section, name))] if name else client.request("GET", _path(section))["data"]
    return {section: {a["name"]: config_shape(a["object"]) for a in answers}}


def config_shape(obj: Mapping[str, Any]) -> dict[str, Any]:
    """An answer's object without the keys that are not config keys. Secrets stay as the API shows them
    (`<redacted>`, or `${VAR}`): sent back, the server keeps the stored secret."""
    return {k: v for k, v in obj.items() if k not in NOT_CONFIG}


def dump(objects: Objects, output: str) -> str:
    if output == "json":
        return json.dumps(objects, indent=2, ensure_ascii=False) + "\n"
    return yaml.safe_dump(objects, sort_keys=False, allow_unicode=True, default_flow_style=False)
