"""Field rules from the schema, compiled once per pipeline into straight-line Python code.

A field's check takes the mapped value and returns the typed output value (integers as numbers,
decimals as exact strings, dates and datetimes in ISO 8601) or raises `FieldError` with a code and a
message that says which value failed and what was expected. The checks are generated as source text
(`field_code`) so that a whole row compiles into one function without a call per rule: this is where a
run spends its time. Only identifiers and `repr()` literals are ever put into the source; every value
from the config travels in the namespace. A schema's cross-field rules (`rules_code`) go in the same
function, as the source `feedd.config.expressions` writes from their checked syntax trees. A rule or field
with `severity: warning` adds to the `_warns` list in the namespace instead of failing the row.
"""

from __future__ import annotations

import math
import re
from array import array
from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from feedd.config import expressions
from feedd.config.pipelines import field_infos
from feedd.config.values import FieldSpec, FieldType, Rule, Schema, Severity
from feedd.pipeline import lookups

Check = Callable[[Any], Any]
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
_INTEGER = re.compile(r"[+-]?\d+")
_TRUE = frozenset({"true", "t", "yes", "y", "1", "on"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "off"})
_BOOLEANS = {**dict.fromkeys(_TRUE, True), **dict.fromkeys(_FALSE, False)}


class FieldError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def show(value: Any) -> str:
    """A value as it appears in an error message: quoted, cut at 60 characters."""
    text = repr(value) if isinstance(value, str) else repr(str(value))
    return text if len(text) <= 60 else text[:57] + "...'"


def _to_string(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _to_integer(value: Any) -> int:
    if isinstance(value, bool):
        raise FieldError("type", f"{show(value)} is not an integer")
    if isinstance(value, int):
        return value
    text = _to_string(value).strip()
    if not _INTEGER.fullmatch(text):
        raise FieldError("type", f"{show(value)} is not an integer")
    if len(text) > 30:  # a JSON number past Python's int digit limit comes as a Decimal (see read.py)
        digits = len(text.lstrip("+-"))
        raise FieldError("type", f"{show(value)} has {digits} digits: too many for an integer")
    return int(text)


def _to_decimal(value: Any) -> Decimal:
    try:
        number = Decimal(_to_string(value).strip())
    except InvalidOperation:
        raise FieldError("type", f"{show(value)} is not a decimal number") from None
    if not number.is_finite():
        raise FieldError("type", f"{show(value)} is not a decimal number")
    return number


def _to_number(value: Any) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise FieldError("type", f"{show(value)} is not a number")
    return number


def _to_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    found = _BOOLEANS.get(_to_string(value).strip().lower())
    if found is None:
        raise FieldError("type", f"{show(value)} is not a boolean (true/false, yes/no, 1/0)")
    return found


def _to_date(value: Any) -> str:
    if value.__class__ is date:  # what a date transform gives: the common case first
        return value.isoformat()
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    text = _to_string(value).strip()
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise FieldError("type", f"{show(value)} is not a date (YYYY-MM-DD)") from None


def _to_datetime(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    text = _to_string(value).strip()
    try:
        return datetime.fromisoformat(text).isoformat()
    except ValueError:
        raise FieldError("type", f"{show(value)} is not a date and time (ISO 8601)") from None


def _to_email(value: Any) -> str:
    text = _to_string(value).strip()
    if not _EMAIL.fullmatch(text):
        raise FieldError("type", f"{show(value)} is not an email address")
    return text


_CONVERT: dict[FieldType, Callable[[Any], Any]] = {
    FieldType.STRING: _to_string,
    FieldType.INTEGER: _to_integer,
    FieldType.DECIMAL: _to_decimal,
    FieldType.NUMBER: _to_number,
    FieldType.BOOLEAN: _to_boolean,
    FieldType.DATE: _to_date,
    FieldType.DATETIME: _to_datetime,
    FieldType.EMAIL: _to_email,
    FieldType.ENUM: _to_string,
}

# The common case, a non-blank string `v` whose stripped text is `s`, converted without a call where the
# result is the same as `_CONVERT`'s (which handles every other input: numbers, booleans, dates from JSON).
_FAST: dict[FieldType, list[str]] = {
    FieldType.STRING: [],
    FieldType.ENUM: [],
    # isdecimal() is exactly the digits `\\d` matches and int() reads; the regex then handles signs
    FieldType.INTEGER: ["if not (s.isdecimal() and len(s) <= 30) and (len(s) > 30 or not _INT(s)):",
                        "    raise _FE('type', f'{_show(v)} is not an integer')",
                        "v = int(s)"],
    FieldType.DECIMAL: ["try: d = _Decimal(s)",
                        "except _InvalidOperation: raise _FE('type', f'{_show(v)} is not a decimal number') from None",
                        "if not d.is_finite(): raise _FE('type', f'{_show(v)} is not a decimal number')",
                        "v = d"],
    FieldType.NUMBER: ["try: n = float(s)",
                       "except ValueError: n = _nan",
                       "if not _isfinite(n): raise _FE('type', f'{_show(v)} is not a number')",
                       "v = n"],
    FieldType.BOOLEAN: ["b = _BOOL(s.lower())",
                        "if b is None: raise _FE('type', f'{_show(v)} is not a boolean (true/false, yes/no, 1/0)')",
                        "v = b"],
    FieldType.DATE: ["try: v = _date(s).isoformat()",
                     "except ValueError: raise _FE('type', f'{_show(v)} is not a date (YYYY-MM-DD)') from None"],
    FieldType.DATETIME: ["try: v = _datetime(s).isoformat()",
                         "except ValueError: raise _FE('type', f'{_show(v)} is not a date and time (ISO 8601)')"
                         " from None"],
    FieldType.EMAIL: ["if not _EMAIL(s): raise _FE('type', f'{_show(v)} is not an email address')", "v = s"],
}

BASE_NAMESPACE: dict[str, Any] = {
    "_FE": FieldError, "_show": show, "_INT": _INTEGER.fullmatch, "_EMAIL": _EMAIL.fullmatch,
    "_BOOL": _BOOLEANS.get, "_Decimal": Decimal, "_InvalidOperation": InvalidOperation,
    "_date": date.fromisoformat, "_datetime": datetime.fromisoformat, "_nan": math.nan, "_isfinite": math.isfinite,
    "_date_type": date, "_HALF": 1 << 63, "_MIX": 0x9E3779B97F4A7C15, "_MASK": (1 << 64) - 1,
    "_today": lambda: date.today().isoformat(),
}


def field_code(spec: FieldSpec, key: str, ns: dict[str, Any]) -> list[str]:
    """Lines that turn `v` into the field's output value or raise `FieldError`. Names used in the lines
    are suffixed with `key` and their values put into `ns`."""
    ns[f"_conv_{key}"] = _CONVERT[spec.type]
    rules = _rule_code(spec, key, ns)
    finish = ["v = str(v)"] if spec.type is FieldType.DECIMAL else []
    if spec.default is not None:
        ns[f"_default_{key}"] = _output(_CONVERT[spec.type](spec.default))
        blank = [f"v = _default_{key}"]
    elif spec.required and spec.severity is Severity.WARNING:
        blank = [f"_warns.append(({spec.name!r}, 'required', {spec.name + ': is required'!r}))", "v = None"]
    elif spec.required:
        blank = ["raise _FE('required', 'is required')"]
    else:
        blank = ["v = None"]
    # What a date transform makes, taken without a call (datetime is a subclass: it goes the long way)
    dates = ["elif v.__class__ is _date_type:", *_indent(["v = v.isoformat()", *rules])] \
        if spec.type is FieldType.DATE else []
    return [
        "if v.__class__ is str and (s := v.strip()):",
        *_indent(_FAST[spec.type] + rules + finish),
        "elif v is None or v.__class__ is str:",
        *_indent(blank),
        *dates,
        "else:",
        *_indent([f"v = _conv_{key}(v)", *rules, *finish]),
    ]


def unique_code(key: str, ns: dict[str, Any], ints: bool = False, rows: int = 0) -> list[str]:
    """Lines that record `v` in a new `Unique` table (its name suffixed with `key`) or raise FieldError
    when it was seen before. Compiled rows inline them: one call fewer per row. `ints`: the field's
    values are all ints, so dense ones can go into bitmaps. `rows`: how many rows are expected, when
    known: the table starts at that size instead of growing (each growth rehashes every key)."""
    bits = 16 if ints else max(16, min(24, (rows * 10 // 7).bit_length()))  # up to 128 MiB up front
    ns[f"_unique_{key}"] = table = Unique(bits, ints=ints)
    ns[f"_unique_key_{key}"] = table.key
    return _unique_lines(f"_unique_{key}", f"_unique_key_{key}", ints)


def _unique_lines(table: str, key_fn: str, ints: bool) -> list[str]:
    hashed = [
        # strs as Unique.key() would hash them, without the call; ints within 64 bits are their own hash
        # (exact); everything else goes through Unique.key()
        "k = (hash(v) * _MIX) & _MASK or 1 if v.__class__ is str else "
        f"(v * _MIX) & _MASK or 1 if v.__class__ is int and -_HALF <= v < _HALF else {key_fn}(v)",
        f"t, i = {table}.table, k >> {table}.shift",
        "while x := t[i]:",
        f"    if x == k: {_DUPLICATE}",
        f"    i = (i + 1) & {table}.mask",
        "t[i] = k",
        f"{table}.count += 1",
        f"if {table}.count > {table}.limit: {table}.grow()",
    ]
    if not ints:
        return ["if v is not None:", *_indent(hashed)]
    return [
        "if v is not None:",
        f"    c = ({table}.chunks.get(v >> 16) or {table}.chunk(v >> 16)) if {table}.dense else None",
        "    if c is not None:",
        "        j, m = (v >> 3) & 8191, 1 << (v & 7)",
        f"        if c[j] & m: {_DUPLICATE}",
        "        c[j] |= m",
        f"        {table}.count += 1",
        "    else:",
        *_indent(hashed, "        "),
    ]


_DUPLICATE = "raise _FE('unique', f'{_show(v)} appears more than once in this file')"


def _rule_code(spec: FieldSpec, key: str, ns: dict[str, Any]) -> list[str]:
    lines: list[str] = []

    def fail(test: str, code: str, message: str) -> None:
        """`message` is the body of an f-string; a warning is listed and the value kept."""
        if spec.severity is Severity.WARNING:  # the field's name travels in the namespace, never in an f-string
            ns[f"_name_{key}"] = spec.name
            lines.append(f"if {test}: _warns.append((_name_{key}, {code!r}, _name_{key} + f{(': ' + message)!r}))")
        else:
            lines.append(f"if {test}: raise _FE({code!r}, f{message!r})")

    if spec.type is FieldType.ENUM:
        ns[f"_allowed_{key}"] = frozenset(spec.values)
        ns[f"_shown_{key}"] = ", ".join(spec.values)
        fail(f"v not in _allowed_{key}", "enum", f"{{_show(v)}} is not one of {{_shown_{key}}}")
    if spec.pattern is not None:
        ns[f"_pattern_{key}"] = re.compile(spec.pattern).search
        ns[f"_pattern_text_{key}"] = spec.pattern
        fail(f"not _pattern_{key}(v)", "pattern", f"{{_show(v)}} does not match {{_pattern_text_{key}}}")
    if spec.min_length is not None:
        n = int(spec.min_length)
        fail(f"len(v) < {n}", "min_length", f"{{_show(v)}} is shorter than {n} characters")
    if spec.max_length is not None:
        n = int(spec.max_length)
        fail(f"len(v) > {n}", "max_length", f"{{_show(v)}} is longer than {n} characters")
    for bound, op, code, words in ((spec.min, "<", "min", "is less than the minimum"),
                                   (spec.max, ">", "max", "is more than the maximum")):
        if bound is None:
            continue
        ns[f"_{code}_{key}"] = _bound(spec.type, bound)
        ns[f"_{code}_text_{key}"] = bound
        fail(f"v {op} _{code}_{key}", code, f"{{_show(v)}} {words} {{_{code}_text_{key}}}")
    if spec.in_lookup is not None:
        found = ns[f"_lookup_{key}"] = lookups.values(spec.in_lookup)
        ns[f"_lookup_name_{key}"] = repr(spec.in_lookup.name)
        message = f"{{_show(v)}} is not in the lookup {{_lookup_name_{key}}}"
        text = "v" if spec.type in (FieldType.STRING, FieldType.EMAIL, FieldType.ENUM) else \
            "(v if v.__class__ is str else str(v))"  # the values are text; text fields' values already are
        if isinstance(found, frozenset):
            fail(f"{text} not in _lookup_{key}", "in_lookup", message)
        else:
            lines += [f"lk = {text}", *lookups.values_code(f"_lookup_{key}", "lk")]
            fail("not ok", "in_lookup", message)
    return lines


def rules_code(schema: Schema, names: Mapping[str, str], ns: dict[str, Any]) -> list[str]:
    """Lines that check the schema's cross-field rules once every field is in its variable (`names`: field
    -> variable). A failed rule appends `(None, 'rule', message)` to `errs`, or to `_warns` for a warning.
    A rule is skipped in a row where a field it reads already failed: its value is not known."""
    if not schema.rules:
        return []
    infos = field_infos(schema.fields)
    types = {f.name: f.type for f in schema.fields}
    ns["_clean"] = _clean
    ns["_dec"] = _decimal_or_none

    def read(field: str) -> str:  # decimals are exact strings in the record: compared as numbers
        return f"_dec({names[field]})" if types[field] is FieldType.DECIMAL else names[field]

    lines: list[str] = []
    for j, rule in enumerate(schema.rules):
        when = expressions.condition(rule.when, infos, read) if rule.when else None
        check = expressions.condition(rule.check, infos, read) if rule.check else None
        reads = {*(when.fields if when else ()), *(check.fields if check else ()), *rule.require}
        ns[f"_rule_fields_{j}"] = frozenset(reads)
        add = "_warns.append" if rule.severity is Severity.WARNING else "errs = errs or []; errs.append"
        body: list[str] = []
        if rule.require:
            ns[f"_rule_require_{j}"] = rule.message or _required_message(rule)
            missing = " or ".join(f"{names[f]} is None" for f in rule.require)
            body.append(f"if {missing}: {add}((None, 'rule', _rule_require_{j}))")
        if check is not None:
            ns[f"_rule_check_{j}"] = rule.message or f"failed the check {rule.check}"
            test = check.fails
            body.append(f"if {test}: {add}((None, 'rule', _rule_check_{j}))")
        if when is not None:
            test = when.holds
            body = [f"if {test}:", *_indent(body)]
        lines += [f"if errs is None or _clean(errs, _rule_fields_{j}):", *_indent(body)]
    return lines


def _required_message(rule: Rule) -> str:
    fields = " and ".join(rule.require)
    verb = "is" if len(rule.require) == 1 else "are"
    return f"{fields} {verb} required" + (f" when {rule.when}" if rule.when else "")


def _clean(errs: list[tuple[str | None, str, str]], fields: frozenset[str]) -> bool:
    """Whether none of `errs` is about one of `fields`."""
    return not any(e[0] in fields for e in errs)


def _decimal_or_none(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _bound(ftype: FieldType, bound: Any) -> Any:
    """min/max: numbers compare as numbers (decimals exactly), dates and datetimes as ISO text."""
    if ftype is FieldType.DECIMAL:
        return Decimal(str(bound))
    if ftype in (FieldType.INTEGER, FieldType.NUMBER):
        number = float(bound)
        return int(number) if number.is_integer() else number  # int < int is the cheaper comparison
    return str(bound)


def _indent(lines: list[str], by: str = "    ") -> list[str]:
    return [by + line for line in lines] or [by + "pass"]


def build(source: str, ns: dict[str, Any], name: str) -> Any:
    """Compile generated `source` and return the function called `name` from it."""
    scope = {**BASE_NAMESPACE, **ns}
    exec(compile(source, f"<feedd {name}>", "exec"), scope)  # noqa: S102 - source built from field_code only
    return scope[name]


def compile_field(spec: FieldSpec) -> Check:
    """The checker for one field: empty -> default or required error; else convert, then each rule."""
    ns: dict[str, Any] = {"_warns": []}
    body = field_code(spec, "f", ns)
    return build("\n".join(["def check(v):", *_indent(body), "    return v"]), ns, "check")  # type: ignore[no-any-return]


def _output(value: Any) -> Any:
    """JSON-ready: decimals stay exact as strings; floats that are whole stay floats."""
    return str(value) if isinstance(value, Decimal) else value


_MASK = (1 << 64) - 1
_MIX = 0x9E3779B97F4A7C15  # odd, so multiplying by it mod 2**64 is a bijection that spreads the bits
_MINUS_ONE = 0x6A09E667F3BCC909  # CPython hashes -1.0 like -2.0: give it a value of its own
_HALF = 1 << 63


class Unique:
    """Seen values of one `unique` field within a run: an open-addressing table of 64-bit hashes in one
    array, 8 bytes a slot, so 4 million keys take 64 MiB rather than the ~300 MiB a `set` would.

    Integer fields start with bitmaps instead, one bit per value in blocks of 65,536 values: sequential
    ids (the usual kind) then take 8 KiB per 65,536 rows, so memory stays flat as files grow. Once the
    bitmaps would take more room than the hash table (the ints are sparse), every int seen moves into it.
    """

    __slots__ = ("bits", "chunks", "count", "dense", "limit", "mask", "shift", "table")

    def __init__(self, bits: int = 16, ints: bool = False) -> None:
        self.count = 0
        self.dense = ints
        self.chunks: dict[int, bytearray] = {}
        self._size(bits)

    def _size(self, bits: int) -> None:
        self.table = array("Q", bytes(8 << bits))
        self.bits, self.shift, self.mask = bits, 64 - bits, (1 << bits) - 1
        self.limit = (7 << bits) // 10  # grow past 70% full

    @classmethod
    def new(cls) -> Unique:
        return cls()

    def key(self, value: Any) -> int:
        """The nonzero 64-bit slot key of `value` (never None)."""
        if value.__class__ is int:
            # exact within 64 bits: CPython folds ints into 61 bits (and -1 onto -2) when hashing them
            h = value if -_HALF <= value < _HALF else hash(str(value))
        else:
            h = hash(value) if value != -1 else _MINUS_ONE
        return (h * _MIX) & _MASK or 1

    def check(self, value: Any) -> None:
        """Record `value`, or raise FieldError if it was recorded before (None is never a duplicate).
        Replaced below by code built from `_unique_lines`, the same lines compiled rows inline."""
        raise NotImplementedError

    def check_int(self, value: int | None) -> None:
        """`check` for a table made with `ints=True` (the lines of an integer field)."""
        raise NotImplementedError

    def chunk(self, n: int) -> bytearray | None:
        """A new bitmap for the ints `n << 16` to `(n + 1) << 16`, or None (and no more bitmaps) once
        bitmaps would outgrow a hash table of the same ints (about 16 bytes each) by more than 2 MiB."""
        if (len(self.chunks) + 1) * CHUNK_BYTES > DENSE_FREE + 16 * self.count:
            self._spread()
            return None
        block = self.chunks[n] = bytearray(CHUNK_BYTES)
        return block

    def _spread(self) -> None:
        self.dense = False
        chunks, self.chunks, self.count = self.chunks, {}, 0
        for n, block in chunks.items():
            base = n << 16
            for j in range(CHUNK_BYTES):
                if byte := block[j]:
                    for b in range(8):
                        if byte >> b & 1:
                            self._add(self.key(base | j << 3 | b))

    def has(self, key: int) -> bool:
        """Whether the slot key `key` (see `key`) is in the hash table."""
        table, i = self.table, key >> self.shift
        while x := table[i]:
            if x == key:
                return True
            i = (i + 1) & self.mask
        return False

    def _add(self, key: int) -> None:
        table, i = self.table, key >> self.shift
        while table[i]:
            i = (i + 1) & self.mask
        table[i] = key
        self.count += 1
        if self.count > self.limit:
            self.grow()

    def grow(self) -> None:
        old = self.table
        self._size(self.bits + 1)
        table, shift, mask = self.table, self.shift, self.mask
        for key in old:
            if key:
                i = key >> shift
                while table[i]:
                    i = (i + 1) & mask
                table[i] = key


def repeats(tables: list[Unique]) -> bool:
    """Whether a value is in two of `tables` (one `unique` field's, each filled from a stretch of one
    file by workers that hash strings alike). True also when that cannot be told cheaply: some tables
    hold ints as bitmaps and others as hashes."""
    if len({t.dense for t in tables}) > 1:
        return True
    if tables[0].dense:
        union: dict[int, int] = {}
        for t in tables:
            for n, block in t.chunks.items():
                bits = int.from_bytes(block, "little")
                if union.get(n, 0) & bits:
                    return True
                union[n] = union.get(n, 0) | bits
        return False
    for j, later in enumerate(tables[1:], 1):
        earlier = tables[:j]
        if sum(t.count for t in earlier) <= SET_KEYS:  # a set of the earlier keys: every lookup at C speed
            seen = set().union(*(t.table for t in earlier))
            seen.discard(0)
            if not seen.isdisjoint(later.table):
                return True
        elif any(key and t.has(key) for key in later.table for t in earlier):  # memory stays flat
            return True
    return False


SET_KEYS = 500_000  # keys put in a set to compare tables (about 32 MiB); past that, probe one at a time


CHUNK_BYTES = 8192  # one bit for each of 65,536 ints
DENSE_FREE = 2 << 20  # bitmaps may use this much more than hashes would before ints move to hashes

# Unique.check and check_int are the very code compiled rows inline.
for _name, _ints in (("check", False), ("check_int", True)):
    _lines = [f"def {_name}(self, v):", *_indent(_unique_lines("self", "self.key", _ints))]
    setattr(Unique, _name, build("\n".join(_lines), {}, _name))
