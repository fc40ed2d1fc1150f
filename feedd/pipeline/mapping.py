"""Which source column fills which schema field, and the compiled function that maps one row.

Explicit mappings from the config come first. With `auto_map`, every other field is matched to a
header (and so is a field whose configured column is not in the file, with or without `auto_map`: a
renamed column is better guessed and explained than silently left empty): by the mapping this
connection used for the same header set before (memory), then the exact or normalised name (case,
spaces, punctuation, snake/camel), then the field's `aliases`, then string similarity above a
threshold. Each choice carries its reason and score. Below the threshold nothing is guessed. Without
`auto_map`, memory still fills a field that has no configured column: what it holds was a person's
choice (a reviewer's) or a mapping that worked, not a guess.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from feedd.config.values import FieldMapping, FieldType, Pipeline, Schema
from feedd.pipeline.transforms import TransformError, compile_transforms
from feedd.pipeline.validate import Unique, build, field_code, rules_code, unique_code

SIMILARITY_THRESHOLD = 0.8
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]+)\}")


def normalize(name: str) -> str:
    """`E-Mail Address`, `e_mail_address` and `eMailAddress` all become `e_mail_address`."""
    return _NON_ALNUM.sub("_", _CAMEL.sub("_", name.strip()).lower()).strip("_")


def header_key(headers: Sequence[str]) -> str:
    """A stable key for a header set (order-insensitive), for mapping memory and drift."""
    return hashlib.sha256("\x1f".join(sorted(headers)).encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Choice:
    target: str
    source: str | None  # the header used, or None for a template/constant
    reason: str  # mapping | review | template | value | remembered | exact | normalized | alias | similar
    score: float = 1.0
    configured: str | None = None  # the configured column, absent from the file, this choice stands in for

    def describe(self) -> dict[str, Any]:
        """The choice as runs and reports show it (`fallback` says why a configured column was not used)."""
        out: dict[str, Any] = {"source": self.source, "reason": self.reason, "score": self.score}
        if self.configured is not None:
            found = f"{self.source!r} ({self.reason} match)" if self.source is not None else "no column"
            out["fallback"] = (f"the configured column {self.configured!r} is not in the file's header; "
                               f"the auto-map chose {found} instead")
        return out


@dataclass(frozen=True, slots=True)
class Plan:
    choices: dict[str, Choice]
    unmapped_required: dict[str, list[str]]  # field -> best candidate headers (empty when none close)
    missing: dict[str, str]  # field -> its configured column, absent from the file's header

    def reasons(self) -> dict[str, dict[str, Any]]:
        """target -> how it was chosen; a field whose configured column is missing and that nothing
        replaced is listed too, with no source."""
        out = {t: c.describe() for t, c in self.choices.items()}
        for target, column in self.missing.items():
            if target not in out:
                out[target] = Choice(target, None, "missing", 0.0, column).describe()
        return out

    def as_mapping(self) -> dict[str, str]:
        """target -> source as the run records it (templates and constants shown as written)."""
        return {t: (c.source if c.source is not None else f"<{c.reason}>") for t, c in self.choices.items()}


def plan(pipeline: Pipeline, schema: Schema, headers: Sequence[str],
         memory: Mapping[str, str] | None = None, reviewed: Collection[str] = ()) -> Plan:
    """`reviewed`: the fields whose mapping a reviewer chose for this run (reason `review`)."""
    explicit = {m.target: m for m in pipeline.mappings}
    choices: dict[str, Choice] = {}
    missing: dict[str, str] = {}
    present = set(headers)
    for field in schema.fields:
        m = explicit.get(field.name)
        if m is not None and m.source and m.source not in present:
            missing[field.name] = m.source
        elif m is not None and (m.source or m.template or m.has_value):
            reason = "review" if field.name in reviewed else \
                "mapping" if m.source else "template" if m.template else "value"
            choices[field.name] = Choice(field.name, m.source, reason)
    memory = memory or {}
    if pipeline.auto_map or missing or memory:
        taken: set[str] = {c.source for c in choices.values() if c.source}
        for field in schema.fields:
            guess = pipeline.auto_map or field.name in missing
            if field.name in choices or not (guess or field.name in memory):
                continue
            choice = _guess(field.name, field.aliases, headers, taken, memory, guess=guess)
            if choice is None or choice.source is None:
                continue
            taken.add(choice.source)
            if field.name in missing:
                choice = Choice(choice.target, choice.source, choice.reason, choice.score, missing[field.name])
            choices[field.name] = choice
    unmapped = {f.name: _candidates(f.name, headers) for f in schema.fields
                if f.required and f.name not in choices and f.default is None}
    return Plan(choices, unmapped, missing)


def _guess(target: str, aliases: Sequence[str], headers: Sequence[str], taken: set[str],
           memory: Mapping[str, str], *, guess: bool = True) -> Choice | None:
    free = [h for h in headers if h not in taken]
    remembered = memory.get(target)
    if remembered in free:
        return Choice(target, remembered, "remembered")
    if not guess:
        return None
    if target in free:
        return Choice(target, target, "exact")
    by_norm = {normalize(h): h for h in free}
    if (hit := by_norm.get(normalize(target))) is not None:
        return Choice(target, hit, "normalized")
    for alias in aliases:
        if (hit := by_norm.get(normalize(alias))) is not None:
            return Choice(target, hit, "alias")
    best, score = None, 0.0
    for norm, header in by_norm.items():
        for name in (target, *aliases):
            ratio = difflib.SequenceMatcher(None, normalize(name), norm).ratio()
            if ratio > score:
                best, score = header, ratio
    if best is not None and score >= SIMILARITY_THRESHOLD:
        return Choice(target, best, "similar", round(score, 3))
    return None


def _candidates(target: str, headers: Sequence[str]) -> list[str]:
    by_norm = {normalize(h): h for h in headers}
    return [by_norm[n] for n in difflib.get_close_matches(normalize(target), list(by_norm), n=3, cutoff=0.4)]


RowErrors = list[tuple[str, str, str]]  # (field, code, message)
RowFn = Callable[[Sequence[str]], tuple[dict[str, Any], RowErrors | None]]
_TEXT_METHODS = {"trim": "strip", "lower": "lower", "upper": "upper", "title": "title"}


def compile_row(pipeline: Pipeline, schema: Schema, headers: Sequence[str], chosen: Plan, rows: int = 0,
                at: list[int] | None = None) -> RowFn:
    """One function: a row of source cells -> (typed record, errors or None). Built once per file, as
    generated code: per field, the getter, the transforms, the type and every rule in one straight line.
    `rows`: how many rows are expected, when known (sizes the `unique` tables). `at`: the slower variant
    that names the row a `unique` value repeats (`at[0]` is the row number, set by the caller before
    each row): a second pass made only when a file has repeats, so the first pays nothing for it."""
    index = {h: i for i, h in enumerate(headers)}
    explicit = {m.target: m for m in pipeline.mappings}
    ns: dict[str, Any] = {"_TE": TransformError, "_warns": []}
    # A short row (fewer cells than the header) is padded once, so that each getter is a plain index.
    width = len(headers)
    lines = ["def row_fn(row):", f"    if len(row) < {width}: row = [*row, *([None] * ({width} - len(row)))]",
             "    errs = None"]
    for k, field in enumerate(schema.fields):
        key = str(k)
        m = explicit.get(field.name)
        body = [*_getter_code(m, chosen.choices.get(field.name), index, key, ns)]
        if m is not None:
            body += _transform_code(m, key, ns)
        body += field_code(field, key, ns)
        if field.unique and at is not None:
            ns["_at"], ns[f"_first_{key}"] = at, {}
            body += ["if v is not None:",
                     f"    f = _first_{key}.setdefault(v, _at[0])",
                     "    if f != _at[0]: raise _FE('unique', "
                     "f'{_show(v)} appears more than once in this file (repeats row {f})')"]
        elif field.unique:
            body += unique_code(key, ns, ints=field.type == FieldType.INTEGER, rows=rows)
        name = repr(field.name)
        lines += [
            "    try:",
            *("        " + line for line in body),
            "    except _TE as exc:",
            "        v, errs = None, errs or []",
            f"        errs.append(({name}, 'transform', {name} + ': ' + str(exc)))",
            "    except _FE as exc:",
            "        v, errs = None, errs or []",
            f"        errs.append(({name}, exc.code, {name} + ': ' + exc.message))",
            f"    v{key} = v",
        ]
    lines += ["    " + line for line in rules_code(schema, {f.name: f"v{k}" for k, f in enumerate(schema.fields)}, ns)]
    record = ", ".join(f"{field.name!r}: v{k}" for k, field in enumerate(schema.fields))
    lines.append(f"    return {{{record}}}, errs")
    return build("\n".join(lines), ns, "row_fn")  # type: ignore[no-any-return]


def warnings_of(row_fn: RowFn) -> list[tuple[str | None, str, str]]:
    """The list a compiled row function adds the row's warnings to (the caller reads and clears it)."""
    warns: list[tuple[str | None, str, str]] = row_fn.__globals__["_warns"]
    return warns


def unique_tables(row_fn: RowFn, schema: Schema) -> dict[str, Unique]:
    """The `unique` tables a compiled row function has filled so far, by field name."""
    ns = row_fn.__globals__
    return {f.name: ns[f"_unique_{k}"] for k, f in enumerate(schema.fields) if f.unique}


def _getter_code(m: FieldMapping | None, choice: Choice | None, index: Mapping[str, int], key: str,
                 ns: dict[str, Any]) -> list[str]:
    if m is not None and m.has_value:
        ns[f"_value_{key}"] = m.value
        return [f"v = _value_{key}"]
    if m is not None and m.template:
        ns[f"_template_{key}"] = _template(m.template, index)
        return [f"v = _template_{key}(row)"]
    source = choice.source if choice is not None else None
    if source is None or source not in index:
        return ["v = None"]
    i = int(index[source])
    return [f"v = row[{i}]"]


def _transform_code(m: FieldMapping, key: str, ns: dict[str, Any]) -> list[str]:
    """Text transforms (trim, lower, upper, title) run as string methods in place; the others are calls."""
    lines: list[str] = []
    methods: list[str] = []

    def flush() -> None:
        if methods:
            lines.append(f"if v is not None: v = (v if v.__class__ is str else str(v)).{'().'.join(methods)}()")
            methods.clear()

    for j, transform in enumerate(m.transforms):
        if transform.name in _TEXT_METHODS:
            methods.append(_TEXT_METHODS[transform.name])
            continue
        flush()
        fn = compile_transforms([transform])
        ns[f"_transform_{key}_{j}"] = fn
        lines.append(f"v = _transform_{key}_{j}(v)")
    flush()
    if m.default is not None:
        ns[f"_fallback_{key}"] = m.default
        lines.append(f"if v is None or v == '': v = _fallback_{key}")
    return lines


def _template(template: str, index: Mapping[str, int]) -> Callable[[Sequence[str]], Any]:
    parts: list[str | int | None] = []  # literal text, a column index, or None for a missing column
    pos = 0
    for match in _PLACEHOLDER.finditer(template):
        parts.append(template[pos:match.start()])
        token = match.group(0)
        if token in ("{{", "}}"):
            parts.append(token[0])
        else:
            parts.append(index.get(match.group(1)))
        pos = match.end()
    parts.append(template[pos:])

    def render(row: Sequence[str]) -> Any:
        out = []
        for part in parts:
            if isinstance(part, str):
                out.append(part)
            elif part is not None and part < len(row) and (cell := row[part]) is not None:
                out.append(cell if isinstance(cell, str) else str(cell))  # JSON cells may be numbers
        text = "".join(out).strip()
        return text or None

    return render
