"""Which source column fills which schema field, and the compiled function that maps one row.

Explicit mappings from the config come first. With `auto_map`, every other field is matched to a
header: by the mapping this connection used for the same header set before (memory), then the exact or
normalised name (case, spaces, punctuation, snake/camel), then the field's `aliases`, then string
similarity above a threshold. Each choice carries its reason and score. Below the threshold nothing is
guessed.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from feedd.config.values import FieldMapping, Pipeline, Schema
from feedd.pipeline.transforms import TransformError, compile_transforms
from feedd.pipeline.validate import FieldError, Unique, compile_field

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
    reason: str  # mapping | template | value | memory | exact | normalized | alias | similar
    score: float = 1.0


@dataclass(frozen=True, slots=True)
class Plan:
    choices: dict[str, Choice]
    unmapped_required: dict[str, list[str]]  # field -> best candidate headers (empty when none close)

    def as_mapping(self) -> dict[str, str]:
        """target -> source as the run records it (templates and constants shown as written)."""
        return {t: (c.source if c.source is not None else f"<{c.reason}>") for t, c in self.choices.items()}


def plan(pipeline: Pipeline, schema: Schema, headers: Sequence[str],
         memory: Mapping[str, str] | None = None) -> Plan:
    explicit = {m.target: m for m in pipeline.mappings}
    choices: dict[str, Choice] = {}
    for field in schema.fields:
        m = explicit.get(field.name)
        if m is not None and (m.source or m.template or m.has_value):
            reason = "mapping" if m.source else "template" if m.template else "value"
            choices[field.name] = Choice(field.name, m.source, reason)
    if pipeline.auto_map:
        taken: set[str] = {c.source for c in choices.values() if c.source}
        for field in schema.fields:
            if field.name in choices:
                continue
            choice = _guess(field.name, field.aliases, headers, taken, memory or {})
            if choice is not None and choice.source is not None:
                choices[field.name] = choice
                taken.add(choice.source)
    unmapped = {f.name: _candidates(f.name, headers) for f in schema.fields
                if f.required and f.name not in choices and f.default is None}
    return Plan(choices, unmapped)


def _guess(target: str, aliases: Sequence[str], headers: Sequence[str], taken: set[str],
           memory: Mapping[str, str]) -> Choice | None:
    free = [h for h in headers if h not in taken]
    remembered = memory.get(target)
    if remembered in free:
        return Choice(target, remembered, "memory")
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
RowFn = Callable[[Sequence[str]], tuple[dict[str, Any], RowErrors]]


def compile_row(pipeline: Pipeline, schema: Schema, headers: Sequence[str], chosen: Plan) -> RowFn:
    """One function: a row of source cells -> (typed record, errors). Built once per file."""
    index = {h: i for i, h in enumerate(headers)}
    explicit = {m.target: m for m in pipeline.mappings}
    steps: list[tuple[str, Callable[[Sequence[str]], Any], Callable[[Any], Any] | None, Callable[[Any], Any],
                      Unique | None]] = []
    for field in schema.fields:
        m = explicit.get(field.name)
        choice = chosen.choices.get(field.name)
        getter = _getter(m, choice, index)
        transform = compile_transforms(m.transforms) if m is not None else None
        if m is not None and m.default is not None:
            transform = _with_default(transform, m.default)
        steps.append((field.name, getter, transform, compile_field(field), Unique.new() if field.unique else None))

    def row_fn(row: Sequence[str]) -> tuple[dict[str, Any], RowErrors]:
        record: dict[str, Any] = {}
        errors: RowErrors = []
        for name, get, transform, check, unique in steps:
            value = get(row)
            try:
                if transform is not None:
                    value = transform(value)
                value = check(value)
                if unique is not None:
                    unique.check(value)
            except TransformError as exc:
                errors.append((name, "transform", f"{name}: {exc}"))
                value = None
            except FieldError as exc:
                errors.append((name, exc.code, f"{name}: {exc.message}"))
                value = None
            record[name] = value
        return record, errors

    return row_fn


def _with_default(transform: Callable[[Any], Any] | None, default: Any) -> Callable[[Any], Any]:
    def apply(value: Any) -> Any:
        if transform is not None:
            value = transform(value)
        return default if value is None or value == "" else value

    return apply


def _getter(m: FieldMapping | None, choice: Choice | None, index: Mapping[str, int]) -> Callable[[Sequence[str]], Any]:
    if m is not None and m.has_value:
        constant = m.value
        return lambda row: constant
    if m is not None and m.template:
        return _template(m.template, index)
    source = choice.source if choice is not None else None
    if source is None or source not in index:
        return lambda row: None
    i = index[source]
    return lambda row: row[i] if i < len(row) else None


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
            elif part is not None and part < len(row):
                out.append(row[part])
        text = "".join(out).strip()
        return text or None

    return render
