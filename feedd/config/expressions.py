"""Cross-field rule expressions: parsed with an allow-list, type-checked, and turned into Python source.

An expression (`end_date >= hired_on`, `status == 'terminated' and len(reason) > 0`) is read with Python's
`ast` and every node is checked against a short allow-list: field names, literals (text, numbers,
`true`/`false`, `null`, lists of them after `in`), the comparisons `== != < <= > >= in not in`, `and or not`,
and the calls `len`, `lower`, `upper`, `today()`. Anything else (attribute access, subscripts, other calls,
lambdas, comprehensions...) is refused with the column it starts at. The text itself is never run: the
source the pipeline compiles is written here, node by node, from the checked tree, with field names
replaced by whatever the caller maps them to and literals written with `repr()`.

Types are checked at load: numbers compare with numbers, text (also dates and datetimes, as ISO text) with
text, `and`/`or`/`not` take conditions. Empty values follow SQL: `==` and `!=` compare `null` like any
value, but an ordering comparison, `in`, or a function given `null` gives `null`, and `and`/`or`/`not` use
three-valued logic. A check fails only when it is false (unknown passes); a `when` applies only when true.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from feedd.config.units import suggest

MAX_LENGTH = 2000  # characters in one expression
MAX_DEPTH = 40  # nested operations: well beyond any rule a person writes, well within Python's stack


class Kind(StrEnum):
    TEXT = "text"
    NUMBER = "number"
    BOOLEAN = "boolean"
    NULL = "null"


# Field type -> the kind its typed value has in an expression.
FIELD_KINDS = {"string": Kind.TEXT, "email": Kind.TEXT, "enum": Kind.TEXT, "date": Kind.TEXT,
               "datetime": Kind.TEXT, "integer": Kind.NUMBER, "decimal": Kind.NUMBER, "number": Kind.NUMBER,
               "boolean": Kind.BOOLEAN}
WORDS = {"null": None, "true": True, "false": False}
FUNCTIONS = ("len", "lower", "upper", "today")


class ExpressionError(ValueError):
    """An expression that is not allowed or does not make sense; `column` is 1-based."""

    def __init__(self, message: str, column: int | None = None) -> None:
        super().__init__(message if column is None else f"{message} (at column {column})")
        self.column = column


@dataclass(frozen=True, slots=True)
class FieldInfo:
    kind: Kind
    nullable: bool  # False: the field always has a value in a valid record (required, or a default)


@dataclass(frozen=True, slots=True)
class Compiled:
    source: str  # a Python expression
    kind: Kind
    nullable: bool
    fields: tuple[str, ...]  # the fields it reads, in order of first use
    # For a condition, two more forms, plain Python with short-circuits (no three-valued temporaries):
    # `holds` is true exactly when the condition is true, `fails` exactly when it is false.
    holds: str = ""
    fails: str = ""


def parse(text: str, fields: Mapping[str, FieldInfo], name: Callable[[str], str] = lambda f: f) -> Compiled:
    """Check `text` and write it as Python source; `name(field)` is the source that reads a field's value.
    Raises ExpressionError for anything outside the allow-list."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("an expression must be non-empty text")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"the expression is longer than {MAX_LENGTH} characters")
    if "\n" in text or "\r" in text:
        raise ExpressionError("an expression is one line")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"not a valid expression: {exc.msg}", exc.offset) from None
    except (ValueError, RecursionError, MemoryError) as exc:  # e.g. a literal past the int digit limit, a null byte
        raise ExpressionError(f"not a valid expression: {exc}") from None
    offset = len(text) - len(text.lstrip())
    return _Writer(fields, name, offset).node(tree.body, 0)


def condition(text: str, fields: Mapping[str, FieldInfo], name: Callable[[str], str] = lambda f: f) -> Compiled:
    """`parse`, and the result must be a condition (true, false or unknown)."""
    out = parse(text, fields, name)
    if out.kind is not Kind.BOOLEAN:
        raise ExpressionError(f"expected a condition (true or false), got a {out.kind} value: compare it with "
                              "something, e.g. `x == 'a'`")
    return out


_ORDER = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_EQUAL = {ast.Eq: "==", ast.NotEq: "!="}
_NOT_ALLOWED = {
    ast.Attribute: "attribute access (a.b)", ast.Subscript: "subscripts (a[b])", ast.Lambda: "lambdas",
    ast.ListComp: "comprehensions", ast.SetComp: "comprehensions", ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions", ast.IfExp: "conditional expressions (a if b else c)",
    ast.BinOp: "arithmetic", ast.NamedExpr: "assignments", ast.Dict: "mappings", ast.JoinedStr: "f-strings",
    ast.Starred: "starred expressions", ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield",
    ast.Slice: "slices", ast.UnaryOp: "a sign on anything but a number",
}


class _Writer:
    def __init__(self, fields: Mapping[str, FieldInfo], name: Callable[[str], str], offset: int) -> None:
        self.fields, self.name, self.offset = fields, name, offset
        self.used: dict[str, None] = {}
        self.temps = 0

    def fail(self, node: ast.AST, message: str) -> ExpressionError:
        col = getattr(node, "col_offset", None)
        return ExpressionError(message, None if col is None else col + 1 + self.offset)

    def temp(self) -> str:
        self.temps += 1
        return f"_x{self.temps}"

    def done(self, source: str, kind: Kind, nullable: bool, holds: str = "", fails: str = "") -> Compiled:
        if kind is Kind.BOOLEAN and not holds:  # a leaf: a boolean field or literal, an equality
            holds, fails = (f"({source} is True)", f"({source} is False)") if nullable else \
                (source, f"(not {source})")
        return Compiled(source, kind, nullable, tuple(self.used), holds, fails)

    def node(self, node: ast.expr, depth: int) -> Compiled:
        if depth > MAX_DEPTH:
            raise self.fail(node, f"the expression nests more than {MAX_DEPTH} levels deep")
        if isinstance(node, ast.Constant):
            return self.constant(node, node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
                and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float)) \
                and not isinstance(node.operand.value, bool):
            value = node.operand.value
            return self.constant(node, -value if isinstance(node.op, ast.USub) else value)
        if isinstance(node, ast.Name):
            return self.named(node)
        if isinstance(node, ast.BoolOp):
            return self.boolean(node, depth)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = self.node(node.operand, depth + 1)
            self.need(node.operand, inner, Kind.BOOLEAN, "'not'")
            if not inner.nullable:
                return self.done(f"(not {inner.source})", Kind.BOOLEAN, False, inner.fails, inner.holds)
            t = self.temp()
            return self.done(f"(None if ({t} := {inner.source}) is None else not {t})", Kind.BOOLEAN, True,
                             inner.fails, inner.holds)
        if isinstance(node, ast.Compare):
            return self.compare(node, depth)
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            raise self.fail(node, "a list may only follow 'in' or 'not in'")
        what = _NOT_ALLOWED.get(type(node), type(node).__name__)
        raise self.fail(node, f"{what} not allowed: use fields, literals, comparisons, and/or/not and "
                              f"{', '.join(FUNCTIONS)}")

    def constant(self, node: ast.AST, value: object) -> Compiled:
        if value is None:
            return self.done("None", Kind.NULL, True)
        if isinstance(value, bool):
            return self.done(repr(value), Kind.BOOLEAN, False)
        if _is_number(value):
            if isinstance(value, float) and not math.isfinite(value):
                raise self.fail(node, "numbers must be finite")
            return self.done(repr(value), Kind.NUMBER, False)
        if isinstance(value, str):
            return self.done(repr(value), Kind.TEXT, False)
        raise self.fail(node, f"{type(value).__name__} literals not allowed: use 'text', numbers, true, false, null")

    def named(self, node: ast.Name) -> Compiled:
        if node.id in WORDS:
            return self.constant(node, WORDS[node.id])
        info = self.fields.get(node.id)
        if info is None:
            if node.id in FUNCTIONS:
                raise self.fail(node, f"{node.id} is a function: call it, e.g. {node.id}(x)")
            raise self.fail(node, f"unknown field {node.id!r}{suggest(node.id, list(self.fields))}")
        self.used[node.id] = None
        return self.done(self.name(node.id), info.kind, info.nullable)

    def need(self, node: ast.AST, got: Compiled, kind: Kind, where: str) -> None:
        if got.kind is not kind:
            raise self.fail(node, f"{where} takes a {kind} value, got a {got.kind} one")

    def boolean(self, node: ast.BoolOp, depth: int) -> Compiled:
        parts = [self.node(v, depth + 1) for v in node.values]
        word = "and" if isinstance(node.op, ast.And) else "or"
        for sub, part in zip(node.values, parts, strict=True):
            self.need(sub, part, Kind.BOOLEAN, f"'{word}'")
        return self.join(word, parts)

    def compare(self, node: ast.Compare, depth: int) -> Compiled:
        left = self.node(node.left, depth + 1)
        pairs: list[Compiled] = []
        for i, (op, right_node) in enumerate(zip(node.ops, node.comparators, strict=True)):
            if isinstance(op, (ast.In, ast.NotIn)):
                if i != len(node.ops) - 1:
                    raise self.fail(node, "nothing may follow the list after 'in': join comparisons with 'and'")
                pairs.append(self.member(node, left, op, right_node, depth))
                continue
            right = self.node(right_node, depth + 1)
            if isinstance(op, tuple(_EQUAL)):
                if Kind.NULL not in (left.kind, right.kind) and left.kind is not right.kind:
                    raise self.fail(right_node, f"cannot compare a {left.kind} value with a {right.kind} one")
                pairs.append(self.done(f"({left.source} {_EQUAL[type(op)]} {right.source})", Kind.BOOLEAN, False))
            elif isinstance(op, tuple(_ORDER)):
                if Kind.NULL in (left.kind, right.kind):
                    raise self.fail(right_node, "compare with null using == or != only")
                if left.kind is not right.kind or left.kind is Kind.BOOLEAN:
                    raise self.fail(right_node, f"cannot order a {left.kind} value against a {right.kind} one")
                pairs.append(self.guarded([left, right], lambda s: f"{s[0]} {_ORDER[type(op)]} {s[1]}",  # noqa: B023
                                          Kind.BOOLEAN))
            else:
                raise self.fail(node, f"{type(op).__name__} not allowed: use == != < <= > >= in, not in")
            left = right
        if len(pairs) == 1:
            return pairs[0]
        return self.join("and", pairs)  # a < b < c: each pair, joined with `and`

    def join(self, word: str, parts: list[Compiled]) -> Compiled:
        other = "or" if word == "and" else "and"
        holds = "(" + f" {word} ".join(p.holds for p in parts) + ")"
        fails = "(" + f" {other} ".join(p.fails for p in parts) + ")"  # De Morgan: holds in three-valued logic too
        if not any(p.nullable for p in parts):
            return self.done("(" + f" {word} ".join(p.source for p in parts) + ")", Kind.BOOLEAN, False, holds, fails)
        # Three-valued: `and` is false if any part is false, else unknown if any is unknown, else true.
        stop, last = ("False", "True") if word == "and" else ("True", "False")
        source = parts[0].source
        for part in parts[1:]:
            a, b = self.temp(), self.temp()
            source = (f"({stop} if ({a} := {source}) is {stop} or ({b} := {part.source}) is {stop} "
                      f"else None if {a} is None or {b} is None else {last})")
        return self.done(source, Kind.BOOLEAN, True, holds, fails)

    def member(self, node: ast.Compare, left: Compiled, op: ast.cmpop, right: ast.expr, depth: int) -> Compiled:
        if not isinstance(right, (ast.List, ast.Tuple, ast.Set)):
            raise self.fail(right, "'in' takes a list of literals, e.g. x in ['a', 'b']")
        items = [self.node(e, depth + 1) for e in right.elts]
        for element, item in zip(right.elts, items, strict=True):
            if not isinstance(element, (ast.Constant, ast.UnaryOp)) and \
                    not (isinstance(element, ast.Name) and element.id in WORDS):
                raise self.fail(element, "a list after 'in' holds literals only")
            if item.kind is not Kind.NULL and item.kind is not left.kind:
                raise self.fail(element, f"the list holds a {item.kind} value, {left.kind} values are looked for")
        if left.kind is Kind.NULL:
            raise self.fail(node, "null is not looked up in a list: compare it with == null")
        word = "in" if isinstance(op, ast.In) else "not in"
        members = "(" + "".join(f"{i.source}, " for i in items) + ")"
        return self.guarded([left], lambda s: f"{s[0]} {word} {members}", Kind.BOOLEAN)

    def call(self, node: ast.Call, depth: int) -> Compiled:
        if isinstance(node.func, ast.Attribute):
            raise self.fail(node, f"methods not allowed: write {node.func.attr}(x), not x.{node.func.attr}()")
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            shown = node.func.id if isinstance(node.func, ast.Name) else "this"
            raise self.fail(node, f"unknown function {shown!r}: only {', '.join(FUNCTIONS)} may be called")
        fn = node.func.id
        if node.keywords:
            raise self.fail(node, f"{fn}() takes no keyword arguments")
        want = 0 if fn == "today" else 1
        if len(node.args) != want:
            raise self.fail(node, f"{fn}() takes {want} argument{'s' if want != 1 else ''}")
        if fn == "today":
            return self.done("_today()", Kind.TEXT, False)
        arg = self.node(node.args[0], depth + 1)
        self.need(node.args[0], arg, Kind.TEXT, f"{fn}()")
        if fn == "len":
            return self.guarded([arg], lambda s: f"len({s[0]})", Kind.NUMBER)
        return self.guarded([arg], lambda s: f"{s[0]}.{fn}()", Kind.TEXT)

    def guarded(self, args: list[Compiled], body: Callable[[list[str]], str], kind: Kind) -> Compiled:
        """`body` over `args`, giving null when any nullable argument is null."""
        names, tests, known = [], [], []
        for arg in args:
            if not arg.nullable:
                names.append(arg.source)
                continue
            t = self.temp()
            names.append(t)
            tests.append(f"({t} := {arg.source}) is None")
            known.append(f"({t} := {arg.source}) is not None")
        if not tests:
            return self.done(f"({body(names)})", kind, False)
        holds, fails = (f"({' and '.join(known)} and ({body(names)}))",
                        f"({' and '.join(known)} and not ({body(names)}))") \
            if kind is Kind.BOOLEAN else ("", "")
        return self.done(f"(None if {' or '.join(tests)} else {body(names)})", kind, True, holds, fails)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
