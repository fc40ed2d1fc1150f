"""Schemas and pipelines in the config: fields and rules, mappings, transforms, formats, destinations."""

from __future__ import annotations

import codecs
import csv
import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from feedd.config import expressions
from feedd.config.reader import (
    At,
    Bad,
    Reader,
    boolean,
    choice,
    describe,
    duration,
    http_url,
    integer,
    nonempty,
    number,
    path,
    string,
    strings,
)
from feedd.config.source import LocList, LocMap
from feedd.config.units import suggest
from feedd.config.values import (
    REVIEW_REASONS,
    Connection,
    Destination,
    DestinationType,
    Expect,
    FieldMapping,
    FieldSpec,
    FieldType,
    FormatConfig,
    Lookup,
    OutputConfig,
    Pipeline,
    Retention,
    Rule,
    Schema,
    Severity,
    Transform,
)
from feedd.model import Direction

FIELD_KEYS = ("type", "required", "unique", "pattern", "min", "max", "min_length", "max_length", "values",
              "default", "aliases", "in_lookup", "severity")
RULE_KEYS = ("when", "require", "check", "message", "severity")
LOOKUP_KEYS = ("file", "column", "refresh")
NONE: tuple[str, ...] = ()
TEXT_TYPES = (FieldType.STRING, FieldType.EMAIL, FieldType.ENUM)
ORDERED_TYPES = (FieldType.INTEGER, FieldType.DECIMAL, FieldType.NUMBER, FieldType.DATE, FieldType.DATETIME)
PIPELINE_KEYS = ("connection", "schema", "direction", "active", "match", "format", "auto_map", "mappings",
                 "egress", "max_error_rate", "reports", "output", "destinations", "skip_duplicates",
                 "allow_empty", "review", "expect", "retention")
RETENTION_KEYS = ("inputs", "outputs", "outbox", "after_ack")
KEEP = Retention()  # every age null: kept forever
OUTPUT_PLACEHOLDERS = ("stem", "name", "ext", "run_id", "connection", "pipeline", "date", "time")
NO_ARG_TRANSFORMS = ("trim", "lower", "upper", "title", "digits")
ARG_TRANSFORMS = ("null_if", "replace", "date", "datetime", "number", "boolean", "map", "default", "truncate",
                  "split")
TRANSFORMS = NO_ARG_TRANSFORMS + ARG_TRANSFORMS
DESTINATION_KEYS: dict[DestinationType, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # type: (required keys, optional keys)
    DestinationType.DIRECTORY: (("path",), ()),
    DestinationType.OUTBOX: ((), ()),
    DestinationType.WEBHOOK: (("url",), ("secret", "timeout", "batch_size", "body")),
    DestinationType.S3: (("bucket",), ("prefix", "endpoint_url", "region")),
    DestinationType.SFTP: (("host", "username", "path"), ("port", "key_file", "password", "known_hosts")),
}


def template_placeholders(text: str) -> list[str]:
    """Names inside `{...}`; `{{` and `}}` are literal braces. Raises Bad when malformed."""
    names, i = [], 0
    while i < len(text):
        ch = text[i]
        if text.startswith(("{{", "}}"), i):
            i += 2
        elif ch == "{":
            end = text.find("}", i + 1)
            inner = text[i + 1:end] if end != -1 else ""
            if end == -1 or "{" in inner:
                raise Bad(f"unclosed '{{' at position {i} in template {text!r}")
            if not inner.strip():
                raise Bad(f"empty placeholder '{{}}' at position {i} in template {text!r}")
            names.append(inner)
            i = end + 1
        elif ch == "}":
            raise Bad(f"unmatched '}}' at position {i} in template {text!r} (write '}}}}' for a literal brace)")
        else:
            i += 1
    return names


def lookups(r: Reader, v: Any, at: At) -> dict[str, Lookup]:
    out = {}
    for name, body, sub in r.named(v, at, "lookup"):
        m = r.mapping(body, sub, LOOKUP_KEYS)
        if m is None:
            r.issue(sub, "expected a mapping with 'file' and 'column'")
            continue
        file = r.require(m, sub, "file", path, None)
        column = r.require(m, sub, "column", nonempty, "")
        refresh = r.get(m, sub, "refresh", duration, None)
        if refresh is not None and refresh <= 0:
            r.issue(sub.key(m, "refresh"), "refresh must be more than 0 seconds")
        if file is None or not column:
            continue
        try:
            headers = lookup_headers(file)
        except OSError as exc:
            r.issue(sub.key(m, "file"), f"cannot read the lookup file {str(file)!r}: {exc.strerror or exc}")
            continue
        if column not in headers:
            r.issue(sub.key(m, "column"), f"the lookup file {str(file)!r} has no column {column!r} "
                                          f"(its columns: {', '.join(headers) or 'none'}){suggest(column, headers)}")
            continue
        out[name] = Lookup(name, file, column, refresh)
    return out


def lookup_headers(file: Path) -> list[str]:
    """The header row of a lookup file (CSV; tab-separated when its name ends in .tsv)."""
    with open(file, encoding="utf-8-sig", newline="") as f:
        return next(csv.reader(f, delimiter="\t" if file.suffix.lower() == ".tsv" else ","), [])


def schemas(r: Reader, v: Any, at: At, lookups: Mapping[str, Lookup] | None = None) -> dict[str, Schema]:
    out = {}
    for name, body, sub in r.named(v, at, "schema"):
        m = r.mapping(body, sub, ("fields", "rules"))
        fields_v = m.get("fields") if m else None
        if not isinstance(fields_v, LocMap) or not fields_v:
            r.issue(sub, "expected 'fields': a mapping of field name -> {type, rules}")
            continue
        fields_at = sub.key(m, "fields") if m else sub
        fields = tuple(_field(r, fname, fbody, fields_at.key(fields_v, fname), lookups or {})
                       for fname, fbody in fields_v.items())
        rules = _rules(r, m.get("rules"), sub.key(m, "rules"), fields) if m is not None and "rules" in m else ()
        out[name] = Schema(name, fields, rules)
    return out


def field_infos(fields: tuple[FieldSpec, ...]) -> dict[str, expressions.FieldInfo]:
    """What rule expressions know of each field: its kind, and whether a valid record may lack it."""
    return {f.name: expressions.FieldInfo(expressions.FIELD_KINDS[f.type], not f.required and f.default is None)
            for f in fields}


def _rules(r: Reader, v: Any, at: At, fields: tuple[FieldSpec, ...]) -> tuple[Rule, ...]:
    if not isinstance(v, LocList):
        r.issue(at, f"expected a list of rules ({{when, require}} or {{check, message}}), got {describe(v)}")
        return ()
    infos, names = field_infos(fields), [f.name for f in fields]
    out = []
    for body, sub in r.items(v, at):
        m = r.mapping(body, sub, RULE_KEYS)
        if m is None:
            if body is None:  # anything else that is not a mapping has been reported by `mapping`
                r.issue(sub, "expected a rule: {when, require} or {check, message}")
            continue
        if "require" not in m and "check" not in m:
            r.issue(sub, "a rule needs 'require' (fields that must have a value) or 'check' (a condition)")
            continue
        exprs = {}
        for key in ("when", "check"):
            text = r.get(m, sub, key, string, None)
            if text is None:
                continue
            try:
                expressions.condition(text, infos)
            except expressions.ExpressionError as exc:
                r.issue(sub.key(m, key), f"{text!r}: {exc}")
                continue
            exprs[key] = text
        require = r.get(m, sub, "require", strings, NONE)
        for field_name in require:
            if field_name not in infos:
                r.issue(sub.key(m, "require"), f"unknown field {field_name!r}{suggest(field_name, names)}")
        out.append(Rule(when=exprs.get("when"), require=require, check=exprs.get("check"),
                        message=r.get(m, sub, "message", nonempty, None),
                        severity=Severity(r.get(m, sub, "severity", choice(*Severity), "error"))))
    return tuple(out)


def _field(r: Reader, name: str, body: Any, at: At, lookups: Mapping[str, Lookup]) -> FieldSpec:
    m = r.mapping(body, at, FIELD_KEYS)
    if m is None:
        r.issue(at, "expected a mapping with at least 'type'")
        return FieldSpec(name, FieldType.STRING)
    ftype = FieldType(r.require(m, at, "type", choice(*FieldType), "string"))
    for key in m:
        if key in ("pattern", "min_length", "max_length") and ftype not in TEXT_TYPES:
            r.issue(at.key(m, key), f"{key!r} applies to string, email and enum fields, not {ftype}")
        if key in ("min", "max") and ftype not in ORDERED_TYPES:
            r.issue(at.key(m, key),
                    f"{key!r} applies to integer, decimal, number, date and datetime fields, not {ftype}")
        if key == "values" and ftype is not FieldType.ENUM:
            r.issue(at.key(m, key), f"'values' applies to enum fields, not {ftype}")
    bound = number() if ftype in (FieldType.INTEGER, FieldType.DECIMAL, FieldType.NUMBER) else string
    spec = FieldSpec(
        name=name,
        type=ftype,
        required=r.get(m, at, "required", boolean, False),
        unique=r.get(m, at, "unique", boolean, False),
        pattern=r.get(m, at, "pattern", _regex, None),
        min=r.get(m, at, "min", bound, None),
        max=r.get(m, at, "max", bound, None),
        min_length=r.get(m, at, "min_length", integer(0), None),
        max_length=r.get(m, at, "max_length", integer(0), None),
        values=r.get(m, at, "values", strings, NONE),
        default=m.get("default"),
        aliases=r.get(m, at, "aliases", strings, NONE),
        in_lookup=r.get(m, at, "in_lookup", _lookup_name(lookups), None),
        severity=Severity(r.get(m, at, "severity", choice(*Severity), "error")),
    )
    if spec.min is not None and spec.max is not None and spec.min > spec.max:
        r.issue(at, f"min ({spec.min}) is greater than max ({spec.max})")
    if spec.min_length is not None and spec.max_length is not None and spec.min_length > spec.max_length:
        r.issue(at, f"min_length ({spec.min_length}) is greater than max_length ({spec.max_length})")
    if ftype is FieldType.ENUM and not spec.values:
        r.issue(at, "an enum field needs 'values': the allowed values")
    if ftype is FieldType.ENUM and spec.default is not None and str(spec.default) not in spec.values:
        r.issue(at.key(m, "default"), f"default {spec.default!r} is not one of the values {list(spec.values)}")
    return spec


def _lookup_name(lookups: Mapping[str, Lookup]) -> Any:
    def conv(r: Reader, v: Any, at: At) -> Lookup:
        name = string(r, v, at)
        if name not in lookups:
            raise Bad(f"unknown lookup {name!r}{suggest(name, lookups)} (lookups are defined under 'lookups:' "
                      "at the top level)")
        return lookups[name]

    return conv


def _regex(r: Reader, v: Any, at: At) -> str:
    s = string(r, v, at)
    try:
        re.compile(s)
    except re.error as exc:
        raise Bad(f"invalid regular expression {s!r}: {exc}") from None
    return s


def pipelines(r: Reader, v: Any, at: At, schemas: Mapping[str, Schema],
              connections: Mapping[str, Connection], retention: Retention = KEEP) -> dict[str, Pipeline]:
    out = {}
    for name, body, sub in r.named(v, at, "pipeline"):
        m = r.mapping(body, sub, PIPELINE_KEYS)
        if m is None:
            r.issue(sub, "expected a mapping with connection, schema and direction")
            continue
        conn = r.require(m, sub, "connection", nonempty, "")
        if conn and conn not in connections:
            r.issue(sub.key(m, "connection"), f"unknown connection {conn!r}{suggest(conn, connections)}")
        schema_name = r.require(m, sub, "schema", nonempty, "")
        schema = schemas.get(schema_name)
        if schema_name and schema is None:
            r.issue(sub.key(m, "schema"), f"unknown schema {schema_name!r}{suggest(schema_name, schemas)}")
        direction = Direction(r.get(m, sub, "direction", choice(*Direction), "inbound"))
        match: tuple[str, ...] = r.get(m, sub, "match", strings, ())
        if direction is Direction.INBOUND and not match:
            r.issue(sub, "an inbound pipeline needs 'match': globs like 'inbox/*.csv'")
        if direction is Direction.OUTBOUND and match:
            r.issue(sub.key(m, "match"), "an outbound pipeline takes no 'match' (its input comes from the side API)")
        for glob_ in match:
            if glob_.startswith("/") or ".." in glob_.split("/"):
                r.issue(sub.key(m, "match"), f"{glob_!r}: globs are relative to the space root, like 'inbox/*.csv'")
        dests = _destinations(r, m, sub)
        if direction is Direction.OUTBOUND and not dests:
            dests = (Destination(DestinationType.OUTBOX, "outbox"),)
        out[name] = Pipeline(
            name=name,
            connection=conn,
            schema=schema_name,
            direction=direction,
            active=r.get(m, sub, "active", boolean, True),
            match=match,
            format=_format(r, m, sub),
            auto_map=r.get(m, sub, "auto_map", boolean, True),
            mappings=_mappings(r, m, sub, schema),
            egress=r.get(m, sub, "egress", choice("valid_only", "all"), "valid_only"),
            max_error_rate=r.get(m, sub, "max_error_rate", number(0.0, 1.0), 1.0),
            reports=r.get(m, sub, "reports", boolean, direction is Direction.INBOUND),
            output=_output(r, m, sub),
            destinations=dests,
            skip_duplicates=r.get(m, sub, "skip_duplicates", boolean, True),
            allow_empty=r.get(m, sub, "allow_empty", boolean, False),
            review=r.get(m, sub, "review", _review, ()),
            expect=_expect(r, m, sub, direction),
            retention=retention_of(r, m.get("retention"), sub.key(m, "retention"), retention),
        )
    return out


def _review(r: Reader, v: Any, at: At) -> tuple[str, ...]:
    """`review: [unmapped_required_field, ...]`: each a known reason (with a did-you-mean), each once."""
    out: list[str] = []
    for item, sub in r.items(v, at):
        try:
            reason = choice(*REVIEW_REASONS)(r, item, sub)
        except Bad as exc:
            r.issue(sub, str(exc))
            continue
        if reason not in out:
            out.append(reason)
    return tuple(out)


def retention_of(r: Reader, v: Any, at: At, base: Retention, more: tuple[str, ...] = ()) -> Retention:
    """`retention: {inputs, outputs, outbox, after_ack}` over `base`: a key given as null keeps forever, a key
    left out keeps `base`'s age. `more`: other keys allowed here (read by the caller)."""
    m = r.mapping(v, at, RETENTION_KEYS + more)
    if m is None:
        return base
    ages = {}
    for key in RETENTION_KEYS:
        if key in m:
            ages[key] = None if m[key] is None else r.get(m, at, key, _age, None)
    return dataclasses.replace(base, **ages)


def _age(r: Reader, v: Any, at: At) -> float:
    seconds = duration(r, v, at)
    if seconds <= 0:
        raise Bad("expected an age above 0 like 30d or 12h (null keeps forever)")
    return seconds


def _expect(r: Reader, pm: LocMap, pat: At, direction: Direction) -> Expect | None:
    at = pat.key(pm, "expect")
    m = r.mapping(pm.get("expect"), at, ("cron", "timezone", "grace", "min_rows", "notify_partner"))
    if m is None:
        return None
    expect = Expect(
        cron=r.require(m, at, "cron", _cron, "0 0 * * *"),
        timezone=r.get(m, at, "timezone", _timezone, "UTC"),
        grace=r.get(m, at, "grace", duration, 0.0),
        min_rows=r.get(m, at, "min_rows", integer(0), 0),
        notify_partner=r.get(m, at, "notify_partner", boolean, False),
    )
    if expect.notify_partner and direction is Direction.OUTBOUND:
        r.issue(at.key(m, "notify_partner"), "an outbound pipeline's files come from the side API, not from "
                                             "the partner: there is nobody to notify")
    return expect


def _cron(r: Reader, v: Any, at: At) -> str:
    # cronsim judges the expression exactly as the schedule will read it (5 fields, or 6 with seconds first)
    from datetime import UTC, datetime

    from cronsim import CronSim, CronSimError

    s = " ".join(nonempty(r, v, at).split())
    try:
        CronSim(s, datetime.now(UTC))
    except CronSimError as exc:
        raise Bad(f"invalid cron expression {s!r}: {exc} (expected 5 fields: minute hour day-of-month month "
                  "day-of-week, like '0 6 * * 1-5')") from None
    return s


def _timezone(r: Reader, v: Any, at: At) -> str:
    import zoneinfo

    s = nonempty(r, v, at).strip()
    try:
        zoneinfo.ZoneInfo(s)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        zones = zoneinfo.available_timezones()
        raise Bad(f"unknown time zone {s!r}{suggest(s, zones)} (an IANA name like 'Europe/Berlin' or 'UTC')") \
            from None
    return s


def _format(r: Reader, pm: LocMap, pat: At) -> FormatConfig:
    at = pat.key(pm, "format")
    raw = pm.get("format")
    if isinstance(raw, str):  # `format: csv` is short for `format: {type: csv}`
        return FormatConfig(type=r.get(pm, pat, "format", choice(*FORMAT_TYPES), "auto"))
    m = r.mapping(raw, at, ("type", "delimiter", "encoding", "header", "skip_rows", "sheet"))
    kind = r.get(m, at, "type", choice(*FORMAT_TYPES), "auto")
    if m is not None and m.get("sheet") is not None and kind not in ("xlsx", "auto"):
        r.issue(at.key(m, "sheet"), f"'sheet' is read only from workbooks (type: xlsx or auto), not {kind}")
    return FormatConfig(
        type=kind,
        delimiter=r.get(m, at, "delimiter", _delimiter, "auto"),
        encoding=r.get(m, at, "encoding", _encoding, "auto"),
        header=r.get(m, at, "header", boolean, True),
        skip_rows=r.get(m, at, "skip_rows", integer(0), 0),
        sheet=r.get(m, at, "sheet", _sheet, _FIRST_SHEET),
    )


FORMAT_TYPES = ("csv", "tsv", "json", "jsonl", "xlsx", "auto")
_FIRST_SHEET: str | int = 0


def _sheet(r: Reader, v: Any, at: At) -> str | int:
    """A workbook's sheet: a name (text), or a position counted from 0 (an integer)."""
    if isinstance(v, int) and not isinstance(v, bool):
        if v < 0:
            raise Bad(f"expected a sheet name or a position counted from 0, got {v}")
        return v
    if not isinstance(v, str):
        raise Bad(f"expected a sheet name or a position counted from 0, got {describe(v)}")
    return nonempty(r, v, at)


def _delimiter(r: Reader, v: Any, at: At) -> str:
    s = string(r, v, at)
    s = {"tab": "\t", "\\t": "\t"}.get(s, s)
    if s != "auto" and len(s) != 1:
        raise Bad(f"expected 'auto' or a single character like ',' ';' '|' or 'tab', got {s!r}")
    return s


def _encoding(r: Reader, v: Any, at: At) -> str:
    s = nonempty(r, v, at)
    if s != "auto":
        try:
            codecs.lookup(s)
        except (LookupError, UnicodeError):  # a name that is no text (a lone surrogate, from an API body)
            raise Bad(f"unknown encoding {s!r} (for example utf-8, utf-16, cp1252, latin-1, or auto)") from None
    return s


def _output(r: Reader, pm: LocMap, pat: At) -> OutputConfig:
    at = pat.key(pm, "output")
    m = r.mapping(pm.get("output"), at, ("format", "filename"))
    return OutputConfig(
        format=r.get(m, at, "format", choice("csv", "json", "jsonl"), "jsonl"),
        filename=r.get(m, at, "filename", _filename_template, "{stem}.{run_id}.{ext}"),
    )


def _filename_template(r: Reader, v: Any, at: At) -> str:
    s = nonempty(r, v, at)
    for name in template_placeholders(s):
        if name not in OUTPUT_PLACEHOLDERS:
            raise Bad(f"unknown placeholder {{{name}}}{suggest(name, OUTPUT_PLACEHOLDERS)}; "
                      f"known: {', '.join('{' + p + '}' for p in OUTPUT_PLACEHOLDERS)}")
    if "/" in s or s.startswith("."):
        raise Bad(f"a file name may not contain '/' or start with '.', got {s!r}")
    return s


def _mappings(r: Reader, pm: LocMap, pat: At, schema: Schema | None) -> tuple[FieldMapping, ...]:
    at = pat.key(pm, "mappings")
    raw = pm.get("mappings")
    if raw is None:
        return ()
    if not isinstance(raw, LocMap):
        r.issue(at, f"expected a mapping of schema field -> source, got {describe(raw)}")
        return ()
    out = []
    for target, body in raw.items():
        sub = at.key(raw, target)
        if schema is not None and schema.field(target) is None:
            r.issue(sub, f"no field {target!r} in schema {schema.name!r}"
                         f"{suggest(target, [f.name for f in schema.fields])}")
        if isinstance(body, str | int | float) and not isinstance(body, bool):
            out.append(FieldMapping(target, source=r.get(raw, at, target, nonempty, "")))
            continue
        m = r.mapping(body, sub, ("from", "transforms", "default", "value", "template"))
        if m is None:
            r.issue(sub, "expected a source column name or {from, transforms, default, value, template}")
            continue
        given = [k for k in ("from", "template", "value") if k in m]
        if len(given) > 1:
            r.issue(sub, f"use only one of from, template and value (got {', '.join(given)})")
        out.append(FieldMapping(
            target=target,
            source=r.get(m, sub, "from", nonempty, None),
            template=r.get(m, sub, "template", _template, None),
            value=m.get("value"),
            has_value="value" in m,
            transforms=_transforms(r, m.get("transforms"), sub.key(m, "transforms")),
            default=m.get("default"),
        ))
    return tuple(out)


def _template(r: Reader, v: Any, at: At) -> str:
    s = nonempty(r, v, at)
    if not template_placeholders(s):
        raise Bad(f"template {s!r} has no {{column}} placeholder (use 'value' for a constant)")
    return s


def _transforms(r: Reader, v: Any, at: At) -> tuple[Transform, ...]:
    if v is None:
        return ()
    out = []
    for item, sub in r.items(v, at):
        if isinstance(item, str):
            name, arg, has_arg = item, None, False
        elif isinstance(item, LocMap) and len(item) == 1:
            name, arg = next(iter(item.items()))
            has_arg, sub = True, sub.key(item, name)
        else:
            r.issue(sub, "expected a transform name or a one-key mapping like {date: '%m/%d/%Y'}, "
                         f"got {describe(item)}")
            continue
        if name not in TRANSFORMS:
            r.issue(sub, f"unknown transform {name!r}{suggest(name, TRANSFORMS)}")
            continue
        if name in NO_ARG_TRANSFORMS and has_arg and arg is not None:
            r.issue(sub, f"transform {name!r} takes no argument: write it as '{name}'")
            continue
        if name in ARG_TRANSFORMS and not has_arg:
            r.issue(sub, f"transform {name!r} needs an argument, like {{{name}: ...}}")
            continue
        try:
            out.append(Transform(name, _transform_arg(r, name, arg, sub)))
        except Bad as exc:
            r.issue(sub, f"{name}: {exc}")
    return tuple(out)


def _transform_arg(r: Reader, name: str, arg: Any, at: At) -> Any:
    if name in NO_ARG_TRANSFORMS:
        return None
    if name == "null_if":
        return tuple(str(x) for x in (arg if isinstance(arg, list) else [arg]))
    if name == "replace":
        if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(x, str) for x in arg)):
            raise Bad("expected [regex, replacement]")
        return (_regex(r, arg[0], at), arg[1])
    if name in ("date", "datetime"):
        fmt = nonempty(r, arg, at)
        if "%" not in fmt:
            raise Bad(f"expected a strptime format like '%m/%d/%Y', got {fmt!r}")
        return fmt
    if name == "number":
        m = r.mapping(arg, at, ("decimal", "thousands"))
        if m is None:
            raise Bad("expected {decimal: ',', thousands: '.'}")
        return (r.get(m, at, "decimal", string, "."), r.get(m, at, "thousands", string, ""))
    if name == "boolean":
        m = r.mapping(arg, at, ("true", "false"))
        if m is None:
            raise Bad("expected {true: [yes, y, 1], false: [no, n, 0]}")
        truthy, falsy = r.get(m, at, "true", strings, NONE), r.get(m, at, "false", strings, NONE)
        if not truthy and not falsy:
            raise Bad("expected {true: [yes, y, 1], false: [no, n, 0]}")
        return (tuple(x.lower() for x in truthy), tuple(x.lower() for x in falsy))
    if name == "map":
        if not isinstance(arg, LocMap):
            raise Bad("expected a mapping of value -> replacement")
        return dict(arg)
    if name == "default":
        return arg
    if name == "truncate":
        return integer(0)(r, arg, at)
    if name == "split":
        if not (isinstance(arg, list) and len(arg) == 2 and isinstance(arg[0], str) and arg[0]
                and isinstance(arg[1], int) and not isinstance(arg[1], bool)):
            raise Bad("expected [separator, index], like [' ', 0]")
        return (arg[0], arg[1])
    raise Bad(f"unknown transform {name!r}")  # pragma: no cover - names are checked before


def _destinations(r: Reader, pm: LocMap, pat: At) -> tuple[Destination, ...]:
    raw = pm.get("destinations")
    if raw is None:
        return ()
    at = pat.key(pm, "destinations")
    out: list[Destination] = []
    for item, sub in r.items(raw, at):
        if not isinstance(item, LocMap) or "type" not in item:
            r.issue(sub, f"expected a mapping with 'type' ({', '.join(DestinationType)})")
            continue
        dtype_s = r.get(item, sub, "type", string, "")
        if dtype_s not in DestinationType.__members__.values():
            r.issue(sub.key(item, "type"),
                    f"unknown destination type {dtype_s!r}{suggest(dtype_s, list(DestinationType))}; "
                    f"known: {', '.join(DestinationType)}")
            continue
        dtype = DestinationType(dtype_s)
        required, optional = DESTINATION_KEYS[dtype]
        m = r.mapping(item, sub, ("type", "name", "max_attempts", *required, *optional))
        for key in required:
            if m is not None and m.get(key) is None:
                r.issue(sub, f"a {dtype} destination needs {key!r}")
        dest = _destination(r, dtype, item, sub)
        if any(d.key == dest.key for d in out):
            r.issue(sub, f"two destinations named {dest.key!r}: give one a distinct 'name'")
        out.append(dest)
    return tuple(out)


def _destination(r: Reader, dtype: DestinationType, m: LocMap, at: At) -> Destination:
    d = Destination(
        type=dtype,
        key="",
        max_attempts=r.get(m, at, "max_attempts", integer(1, 1000), 10),
        path=r.get(m, at, "path", path, None) if dtype is DestinationType.DIRECTORY else None,
        url=r.get(m, at, "url", http_url, None),
        secret=r.get(m, at, "secret", nonempty, None),
        timeout=r.get(m, at, "timeout", duration, 30.0),
        batch_size=r.get(m, at, "batch_size", integer(1, 100_000), 1000),
        body=r.get(m, at, "body", choice("ndjson", "json"), "ndjson"),
        bucket=r.get(m, at, "bucket", _bucket, None),
        prefix=r.get(m, at, "prefix", string, ""),
        endpoint_url=r.get(m, at, "endpoint_url", http_url, None),
        region=r.get(m, at, "region", nonempty, None),
        host=r.get(m, at, "host", nonempty, None),
        port=r.get(m, at, "port", integer(1, 65535), 22),
        username=r.get(m, at, "username", nonempty, None),
        password=r.get(m, at, "password", nonempty, None),
        key_file=r.get(m, at, "key_file", path, None),
        known_hosts=r.get(m, at, "known_hosts", path, None),
        remote_path=r.get(m, at, "path", nonempty, None) if dtype is DestinationType.SFTP else None,
    )
    if dtype is DestinationType.SFTP and not (d.password or d.key_file):
        r.issue(at, "an sftp destination needs 'key_file' or 'password'")
    name = r.get(m, at, "name", nonempty, None)
    target = {
        DestinationType.DIRECTORY: str(d.path),
        DestinationType.OUTBOX: "",
        DestinationType.WEBHOOK: d.url or "",
        DestinationType.S3: f"{d.bucket}/{d.prefix}",
        DestinationType.SFTP: f"{d.username}@{d.host}:{d.port}{d.remote_path}",
    }[dtype]
    key = name or (f"{dtype}:{target}" if target else str(dtype))
    return dataclasses.replace(d, key=key)


def _bucket(r: Reader, v: Any, at: At) -> str:
    s = nonempty(r, v, at)
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", s):
        raise Bad(f"invalid S3 bucket name {s!r} (3-63 of a-z, 0-9, '.', '-')")
    return s

