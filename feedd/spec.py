"""The data spec a partner reads in its outbox (README, "A data spec for partners"): for each inbound pipeline
with `reports: true`, `outbox/<pipeline>.spec.csv` and `outbox/<pipeline>.spec.md` say which fields the
feed takes, their types and rules, the column names accepted for each (the configured column, and with
`auto_map` the field's own name and its aliases, in any case or spacing), and an example row in the
partner's own formats (a `{date: '%m/%d/%Y'}` transform shows a US date).

`render` is pure; `write_specs` (in a thread) writes the files whose text changed and says how each
file's size changed, so that the space's byte count, owned by the event loop, follows.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

from feedd import pgp
from feedd.config import Config
from feedd.config.values import FieldMapping, FieldSpec, FieldType, Pipeline, Schema
from feedd.durable import write_whole
from feedd.model import Direction

COLUMNS = ("field", "type", "required", "unique", "rules", "accepted_headers", "example")
_SAMPLE_DATE = date(2026, 1, 31)
_SAMPLE_DATETIME = datetime(2026, 1, 31, 9, 30)


def spec_names(pipeline: str) -> tuple[str, str]:
    return f"{pipeline}.spec.csv", f"{pipeline}.spec.md"


def wanted(config: Config) -> dict[str, list[Pipeline]]:
    """Connection -> the pipelines whose partner gets a spec."""
    out: dict[str, list[Pipeline]] = {}
    for pipe in config.pipelines.values():
        if pipe.reports and pipe.direction is Direction.INBOUND and pipe.schema in config.schemas:
            out.setdefault(pipe.connection, []).append(pipe)
    return out


def _mapping(pipe: Pipeline, name: str) -> FieldMapping | None:
    return next((m for m in pipe.mappings if m.target == name), None)


def accepted(pipe: Pipeline, f: FieldSpec) -> list[str]:
    """The column names a file may use for the field, the configured one first; [] when feedd sets it."""
    m = _mapping(pipe, f.name)
    names: list[str] = []
    if m is not None and m.source:
        names.append(m.source)
    elif m is not None and m.template:
        names += [
            p.strip() for p in m.template.replace("{{", "").replace("}}", "").split("{")[1:] for p in [p.split("}")[0]]
        ]
    elif m is not None and m.has_value:
        return []
    # an unmapped field is auto-mapped when the pipeline says so; a configured column missing from a file
    # falls back to the auto-map whatever it says
    if (m is None and pipe.auto_map) or (m is not None and m.source):
        names += [n for n in (f.name, *f.aliases) if n not in names]
    return names


def rules(f: FieldSpec) -> str:
    parts = []
    if f.pattern:
        parts.append(f"matches {f.pattern}")
    if f.values:
        parts.append(f"one of {', '.join(f.values)}")
    if f.min is not None:
        parts.append(f"at least {_number(f.min)}")
    if f.max is not None:
        parts.append(f"at most {_number(f.max)}")
    if f.min_length is not None:
        parts.append(f"at least {f.min_length} characters")
    if f.max_length is not None:
        parts.append(f"at most {f.max_length} characters")
    if f.default is not None:
        parts.append(f"{f.default} when empty")
    return "; ".join(parts)


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def example(pipe: Pipeline, f: FieldSpec) -> str:
    """A value the field takes, written as the partner's file would (its mapping's transforms read back)."""
    m = _mapping(pipe, f.name)
    transforms = {t.name: t.arg for t in m.transforms} if m else {}
    if "map" in transforms and isinstance(transforms["map"], dict) and transforms["map"]:
        return str(next(iter(transforms["map"])))
    if f.default is not None:
        return str(f.default)
    if f.type is FieldType.ENUM and f.values:
        return f.values[0]
    if f.type is FieldType.DATE:
        return _SAMPLE_DATE.strftime(transforms["date"]) if "date" in transforms else _SAMPLE_DATE.isoformat()
    if f.type is FieldType.DATETIME:
        fmt = transforms.get("datetime")
        return _SAMPLE_DATETIME.strftime(fmt) if fmt else _SAMPLE_DATETIME.isoformat() + "Z"
    if f.type is FieldType.BOOLEAN:
        arg = transforms.get("boolean")
        return str(arg[0][0]) if arg and arg[0] else "true"
    if f.type in (FieldType.INTEGER, FieldType.DECIMAL, FieldType.NUMBER):
        low = f.min if f.min is not None else 1
        value = (
            f"{int(low) if f.type is FieldType.INTEGER else float(low) + 0.5:g}"
            if f.type is not FieldType.DECIMAL
            else f"{float(low) + 10.5:.2f}"
        )
        arg = transforms.get("number")
        return value.replace(".", arg[0]) if arg else value
    if f.type is FieldType.EMAIL:
        return "name@example.com"
    if f.pattern:
        return ""  # a value that matches is the partner's own; the rule says what it looks like
    return "text"


def _rows(pipe: Pipeline, schema: Schema) -> Iterator[dict[str, str]]:
    for f in schema.fields:
        names = accepted(pipe, f)
        yield {
            "field": f.name,
            "type": str(f.type),
            "required": "yes" if f.required else "no",
            "unique": "yes" if f.unique else "no",
            "rules": rules(f),
            "accepted_headers": " | ".join(names) if names else "(set by us, not sent)",
            "example": example(pipe, f) if names else "",
        }


def render(pipe: Pipeline, schema: Schema) -> tuple[str, str]:
    """(csv text, markdown text) of the pipeline's spec."""
    rows = list(_rows(pipe, schema))
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    sent = [(f, r) for f, r in zip(schema.fields, rows, strict=True) if accepted(pipe, f)]
    sample = io.StringIO()
    csv.writer(sample, lineterminator="\n").writerows(
        [[accepted(pipe, f)[0] for f, _ in sent], [r["example"] for _, r in sent]]
    )
    lines = [
        f"# Feed '{pipe.name}': what to send",
        "",
        f"Upload files named like {', '.join(f'`{g}`' for g in pipe.match)} ({_kind(pipe)}).",
        "Column names are matched without regard to case, spaces or punctuation"
        + ("." if pipe.auto_map else " only where the table lists more than one."),
        "",
        "| Field | Type | Required | Unique | Rules | Accepted column names | Example |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(
            f"| {r['field']} | {r['type']} | {r['required']} | {r['unique']} | {_md(r['rules'])} | "
            f"{_md(r['accepted_headers'])} | {_md(r['example'])} |"
            for r in rows
        ),
        "",
        "An example file:",
        "",
        "```csv",
        sample.getvalue().rstrip("\n"),
        "```",
        "",
    ]
    return out.getvalue(), "\n".join(lines)


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_specs(config: Config, outboxes: dict[str, Path]) -> dict[str, int]:
    """In a thread: write every wanted spec whose text changed into its connection's outbox (from
    `outboxes`, connection -> folder); connection -> bytes its outbox grew by (negative when it shrank)."""
    grown: dict[str, int] = {}
    for connection, pipes in wanted(config).items():
        folder = outboxes.get(connection)
        if folder is None:
            continue
        seal = pgp.sealing(config, connection)  # the partner's encrypt_to keys, if any
        for pipe in pipes:
            texts = render(pipe, config.schemas[pipe.schema])
            for name, text in zip(spec_names(pipe.name), texts, strict=True):
                if seal is None:
                    added = _write_if_changed(folder / name, text.encode())
                else:
                    added = _seal_if_changed(seal, folder, name, text.encode(),
                                             pgp.home_of(config.state_dir, connection).with_suffix(".specs"))
                grown[connection] = grown.get(connection, 0) + added
    return grown


def _seal_if_changed(seal: pgp.Keys, folder: Path, name: str, data: bytes, kept: Path) -> int:
    """The spec encrypted into `folder` as `name.pgp` when its text changed. Encryption is randomised, so
    the text last sealed is kept (in the state folder, never in the partner's space) to compare with."""
    sealed, plain = folder / pgp.sealed_name(name), kept / name
    try:
        same = plain.read_bytes() == data and sealed.exists()
    except FileNotFoundError:
        same = False
    if same:
        return 0
    before = sealed.stat().st_size if sealed.exists() else 0
    after = pgp.seal_bytes(seal, data, sealed).stat().st_size
    kept.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_whole(plain, data)
    with contextlib.suppress(FileNotFoundError):  # the plain spec of before the partner had a key
        before += (folder / name).stat().st_size
        (folder / name).unlink()
    return after - before


def _write_if_changed(path: Path, data: bytes) -> int:
    try:
        with open(path, "rb") as f:
            old = f.read(len(data) + 1)
        before = os.lstat(path).st_size
    except FileNotFoundError:
        old, before = None, 0
    if old == data:
        return 0
    write_whole(path, data)
    return len(data) - before


def _kind(pipe: Pipeline) -> str:
    """What files the pipeline reads, in the partner's words."""
    fmt = pipe.format
    if fmt.type != "xlsx":
        return "CSV with a header row, or JSON"
    sheet = f"the sheet named {fmt.sheet!r}" if isinstance(fmt.sheet, str) else \
        "the first sheet" if fmt.sheet == 0 else f"sheet number {fmt.sheet + 1}"
    return f"an Excel or OpenDocument workbook, .xlsx, .xls or .ods, with the rows in {sheet} under a header row"
