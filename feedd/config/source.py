"""Reading config files: YAML with the file and line of every key, `include` globs, merging files.

Values come back as plain Python values inside `LocMap`/`LocList`, which remember where each key or
item was written so that every later error can name `file:line`.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from feedd.errors import ConfigIssue

NAMED_SECTIONS = ("lookups", "schemas", "connections", "pipelines")
API = "api"  # the "file" of objects sent over the API: their issues are located by key path only
LIST_SECTIONS = ("webhooks",)


@dataclass(frozen=True, slots=True)
class Loc:
    file: str  # as shown in messages
    dir: Path  # relative paths written in this file resolve against it
    line: int


class LocMap(dict[str, Any]):
    """A YAML mapping that knows where it and each of its keys were written."""

    def __init__(self, loc: Loc | None = None) -> None:
        super().__init__()
        self.loc = loc or Loc("", Path("."), 0)
        self.locs: dict[str, Loc] = {}


class LocList(list[Any]):
    """A YAML sequence that knows where it and each of its items were written."""

    def __init__(self, items: Iterable[Any] = (), loc: Loc | None = None) -> None:
        super().__init__(items)
        self.loc = loc or Loc("", Path("."), 0)
        self.locs: list[Loc] = []


def display_path(path: Path, base: Path) -> str:
    """A file as messages name it: relative to the main config's folder (`feedd.yaml`, `conf.d/acme.yaml`)."""
    rel = os.path.relpath(path, base)
    return rel if not rel.startswith("..") else str(path)


class _Loader(yaml.SafeLoader):
    display: str
    dir: Path
    issues: list[ConfigIssue]


def _loc(loader: _Loader, node: yaml.Node) -> Loc:
    return Loc(loader.display, loader.dir, node.start_mark.line + 1)


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> LocMap:
    out = LocMap(_loc(loader, node))
    for key_node, value_node in node.value:
        raw = loader.construct_object(key_node, deep=True)
        # YAML 1.1 reads `true:`/`yes:` keys as booleans; config keys are always names.
        key = ("true" if raw else "false") if isinstance(raw, bool) else "" if raw is None else str(raw)
        where = _loc(loader, key_node)
        if key in out:
            first = out.locs[key].line
            loader.issues.append(ConfigIssue(where.file, where.line, key, f"duplicate key (first set on line {first})"))
        out[key] = loader.construct_object(value_node, deep=True)
        out.locs[key] = where
    return out


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> LocList:
    out = LocList((loader.construct_object(child, deep=True) for child in node.value), _loc(loader, node))
    out.locs = [_loc(loader, child) for child in node.value]
    return out


# YAML 1.2 booleans: only true/false. YAML 1.1 also reads yes/no/on/off/y/n as booleans, which turns
# country codes and `{boolean: {true: [yes, y]}}` lists into True/False (the "Norway problem").
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def read_yaml(path: Path, issues: list[ConfigIssue], base: Path | None = None) -> LocMap | None:
    """One file as a located mapping; problems are appended to `issues`.

    Relative paths in it will resolve against `base` (default: the file's own folder).
    """
    base = path.parent if base is None else base
    shown = display_path(path, base)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        issues.append(ConfigIssue(shown, 0, "", "file not found"))
        return None
    except (OSError, UnicodeDecodeError) as exc:
        issues.append(ConfigIssue(shown, 0, "", f"cannot read: {exc}"))
        return None
    loader = _Loader(text)
    loader.display, loader.dir, loader.issues = shown, base, issues
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        issues.append(ConfigIssue(shown, line, "", f"YAML syntax error: {exc.problem or exc}"))
        return None
    except yaml.YAMLError as exc:
        issues.append(ConfigIssue(shown, 0, "", f"YAML error: {exc}"))
        return None
    finally:
        loader.dispose()
    if data is None:
        return LocMap(Loc(shown, base, 1))
    if not isinstance(data, LocMap):
        issues.append(ConfigIssue(shown, 1, "", "expected a mapping of config keys at the top of the file"))
        return None
    return data


def load_tree(path: Path, issues: list[ConfigIssue]) -> tuple[LocMap, list[str]]:
    """The main file merged with everything it includes, and the list of files read.

    Include globs resolve against the including file's folder; relative paths written in any of the
    files resolve against the main file's folder, so fragments read as parts of one config.

    Named sections (schemas, connections, pipelines) merge by name; a name defined twice is an
    error naming both places. List sections concatenate. Any other key may be set in one file only.
    """
    merged = LocMap(Loc(display_path(path, path.parent), path.parent, 1))
    files: list[str] = []
    seen: set[Path] = set()

    def visit(file: Path) -> None:
        real = file.resolve()
        if real in seen:
            return  # a file included twice (or a cycle) is read once
        seen.add(real)
        doc = read_yaml(file, issues, path.parent)
        if doc is None:
            return
        files.append(doc.loc.file)
        includes = doc.pop("include", None)
        inc_loc = doc.locs.pop("include", doc.loc)
        _merge(merged, doc, issues)
        for pattern in _include_patterns(includes, inc_loc, issues):
            full = pattern if os.path.isabs(pattern) else str(file.parent / pattern)
            for found in sorted(glob.glob(full, recursive=True)):
                if os.path.isfile(found):
                    visit(Path(found))

    visit(path)
    return merged, files


def _include_patterns(value: Any, loc: Loc, issues: list[ConfigIssue]) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        issues.append(ConfigIssue(loc.file, loc.line, "include", "expected a list of glob patterns"))
        return []
    return list(items)


def _merge(into: LocMap, doc: LocMap, issues: list[ConfigIssue]) -> None:
    for key, value in doc.items():
        where = doc.locs[key]
        if key not in into:
            if key in NAMED_SECTIONS and isinstance(value, LocMap):
                fresh = LocMap(value.loc)
                into[key], into.locs[key] = fresh, where
            else:
                into[key], into.locs[key] = value, where
                continue
        target = into[key]
        if key in NAMED_SECTIONS and isinstance(target, LocMap) and isinstance(value, LocMap):
            for name, body in value.items():
                loc = value.locs[name]
                if name in target:
                    first = target.locs[name]
                    issues.append(ConfigIssue(loc.file, loc.line, f"{key}.{name}", _twice("defined", first, loc)))
                    continue
                target[name], target.locs[name] = body, loc
        elif key in LIST_SECTIONS and isinstance(target, LocList) and isinstance(value, LocList):
            target.extend(value)
            target.locs.extend(value.locs)
        elif target is not value:
            first = into.locs[key]
            issues.append(ConfigIssue(where.file, where.line, key, _twice("set", first, where)))


def _twice(verb: str, first: Loc, second: Loc) -> str:
    return f"{verb} twice: in {first.file}:{first.line} and in {second.file}:{second.line}"
