"""Rules, lookups and severities in the config: what loads, and every mistake located at file:line + key path.
The expression parser is fuzzed: whatever the text, it is refused or compiled to allow-listed nodes only."""

from __future__ import annotations

import ast
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedd.config import load_config
from feedd.config.expressions import ExpressionError, FieldInfo, Kind, condition, parse
from feedd.config.values import Config, Severity
from feedd.errors import ConfigError
from feedd.pipeline.validate import BASE_NAMESPACE
from tests.helpers import DEMO_HASH, write

CONFIG = f"""\
state_dir: ./var
lookups:
  departments: {{file: ./departments.csv, column: code, refresh: 1h}}
schemas:
  employee:
    fields:
      status:   {{type: enum, values: [active, leave, terminated]}}
      hired_on: {{type: date, required: true}}
      end_date: {{type: date}}
      salary:   {{type: decimal}}
      dept:     {{type: string, in_lookup: departments, severity: warning}}
    rules:
@RULES@
connections:
  acme: {{password_hash: "{DEMO_HASH}"}}
"""
GOOD_RULES = """\
      - {when: "status == 'terminated'", require: [end_date]}
      - {check: "end_date >= hired_on", message: "end_date is before hired_on", severity: warning}"""


def load(tmp_path: Path, rules: str = GOOD_RULES, text: str = CONFIG) -> Config:
    write(tmp_path, "departments.csv", "code,name\nHR,Human resources\n")
    return load_config(write(tmp_path, "feedd.yaml", text.replace("@RULES@", rules)), env={})


def issues(tmp_path: Path, rules: str = GOOD_RULES, text: str = CONFIG) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, rules, text)
    return [str(i) for i in info.value.issues]


def test_rules_lookups_and_severities_load(tmp_path: Path) -> None:
    schema = load(tmp_path).schemas["employee"]
    first, second = schema.rules
    assert (first.when, first.require, first.check, first.severity) == (
        "status == 'terminated'", ("end_date",), None, Severity.ERROR)
    assert (second.check, second.message, second.severity) == (
        "end_date >= hired_on", "end_date is before hired_on", Severity.WARNING)
    dept = schema.field("dept")
    assert dept is not None and dept.severity is Severity.WARNING
    assert dept.in_lookup is not None and dept.in_lookup.column == "code" and dept.in_lookup.refresh == 3600
    assert dept.in_lookup.file == tmp_path / "departments.csv"


def test_invalid_expressions_are_located(tmp_path: Path) -> None:
    found = issues(tmp_path, """\
      - {when: "status = 'terminated'", require: [end_dat]}
      - {check: "end_date.year > 2000"}
      - {check: "__import__('os').system('x')"}
      - {check: "salary > 'abc'"}
      - {check: "statuz == 'x'"}
      - {check: "salary"}
      - {require: [end_date], severity: fatal}
      - {message: "nothing to check"}""")
    assert found[0].startswith("feedd.yaml:13: schemas.employee.rules[0].when: \"status = 'terminated'\": "
                               "not a valid expression")
    assert found[1] == "feedd.yaml:13: schemas.employee.rules[0].require: unknown field 'end_dat' " \
                       "(did you mean 'end_date'?)"
    assert found[2].startswith("feedd.yaml:14: schemas.employee.rules[1].check: 'end_date.year > 2000': "
                               "attribute access (a.b) not allowed")
    assert found[3].startswith("feedd.yaml:15: schemas.employee.rules[2].check:")
    assert "not allowed" in found[3]
    assert found[4].startswith("feedd.yaml:16: schemas.employee.rules[3].check:")
    assert "cannot order a number value against a text one (at column 10)" in found[4]
    assert found[5].endswith("unknown field 'statuz' (did you mean 'status'?) (at column 1)")
    assert found[6].startswith("feedd.yaml:18: schemas.employee.rules[5].check: 'salary': expected a condition")
    assert found[7].startswith("feedd.yaml:19: schemas.employee.rules[6].severity: expected one of error, warning")
    assert found[8].startswith("feedd.yaml:20: schemas.employee.rules[7]: a rule needs 'require'")
    assert len(found) == 9


def test_lookup_mistakes_are_config_errors(tmp_path: Path) -> None:
    text = CONFIG.replace("departments: {file: ./departments.csv, column: code, refresh: 1h}",
                          "departments: {file: ./gone.csv, column: code}\n"
                          "  codes: {file: ./departments.csv, column: kode}")
    text = text.replace("in_lookup: departments", "in_lookup: departmnts")
    found = issues(tmp_path, text=text)
    assert found[0].startswith("feedd.yaml:3: lookups.departments.file: cannot read the lookup file ")
    assert found[0].endswith("gone.csv': No such file or directory")
    assert found[1] == ("feedd.yaml:4: lookups.codes.column: the lookup file "
                        f"'{tmp_path / 'departments.csv'}' has no column 'kode' (its columns: code, name) "
                        "(did you mean 'code'?)")
    assert found[2].startswith("feedd.yaml:12: schemas.employee.fields.dept.in_lookup: unknown lookup 'departmnts'")


FIELDS = {"a": FieldInfo(Kind.TEXT, True), "b": FieldInfo(Kind.TEXT, False), "n": FieldInfo(Kind.NUMBER, True),
          "m": FieldInfo(Kind.NUMBER, False), "ok": FieldInfo(Kind.BOOLEAN, True)}
# What compiled source may contain: the nodes the writer emits and nothing else. Names are the fields,
# its temporaries and `_today`; the only calls are len() and _today(), the only attributes lower/upper.
ALLOWED_NODES = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.Compare,
                 ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is, ast.IsNot,
                 ast.Constant, ast.Name, ast.Load, ast.Store, ast.NamedExpr, ast.IfExp, ast.Tuple, ast.Call,
                 ast.Attribute)


def assert_safe(source: str) -> None:
    for node in ast.walk(ast.parse(source, mode="eval")):
        assert isinstance(node, ALLOWED_NODES), (type(node).__name__, source)
        if isinstance(node, ast.Name):
            assert node.id in FIELDS or node.id in ("_today", "len") or node.id.startswith("_x"), source
        if isinstance(node, ast.Call):
            assert isinstance(node.func, (ast.Name, ast.Attribute)) and not node.args[1:] and not node.keywords
            if isinstance(node.func, ast.Name):
                assert node.func.id in ("len", "_today"), source
        if isinstance(node, ast.Attribute):
            assert node.attr in ("lower", "upper"), source
        if isinstance(node, ast.Constant):
            assert node.value is None or isinstance(node.value, (str, int, float, bool)), source


def check_text(text: str) -> None:
    try:
        compiled = parse(text, FIELDS)
    except ExpressionError:
        return
    for source in (compiled.source, compiled.holds, compiled.fails):
        if not source:
            continue
        assert_safe(source)
        env = {"a": "x", "b": "y", "n": None, "m": 3, "ok": None, "_today": lambda: "2026-01-01"}
        value = eval(compile(source, "<fuzz>", "eval"), {"__builtins__": {"len": len}}, env)  # noqa: S307 - checked
        if source == compiled.source:
            result = value
        elif compiled.kind is Kind.BOOLEAN:  # the short forms agree with the three-valued value
            assert bool(value) is (result is (source == compiled.holds)), (text, source)


TOKENS = ["a", "b", "n", "m", "ok", "null", "true", "false", "len", "lower", "upper", "today", "'t'", "1", "-2",
          "3.5", "==", "!=", "<", "<=", ">", ">=", "in", "not", "and", "or", "(", ")", "[", "]", ",", ".", "+",
          "__class__", "__import__", "os", "lambda", ":", "if", "else", "for", "*", "**", "x", "'", '"', "{",
          "}", ";", "=", ":=", "\\", "\x00", "1e999", "9" * 5000, "#"]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), max_size=14).map(" ".join))
def test_fuzz_token_soup_is_refused_or_safe(text: str) -> None:
    check_text(text)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=string.printable + "é€\u2028", max_size=60))
def test_fuzz_any_text_is_refused_or_safe(text: str) -> None:
    check_text(text)


LEAVES = st.sampled_from(["a", "b", "n", "m", "ok", "null", "true", "'t'", "1", "-2", "len(a)", "lower(b)",
                          "today()", "[1, 'x']", "upper(n)"])
OPERATORS = st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "in", "not in", "and", "or"])
GRAMMAR = st.recursive(LEAVES, lambda inner: st.one_of(
    st.tuples(inner, OPERATORS, inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
    inner.map(lambda e: f"not {e}")), max_leaves=8)


@settings(max_examples=1500, deadline=None)
@given(GRAMMAR)
def test_fuzz_near_grammatical_expressions_are_refused_or_safe(text: str) -> None:
    """Sentences built from the grammar's own parts, most of them well formed: their compiled forms must
    stay inside the allow-list and agree with each other."""
    check_text(text)


def test_the_fuzzed_grammar_is_reached() -> None:
    """The fuzz above would pass vacuously if every input were refused: some sentences it can build do compile."""
    for text in ("a == 't'", "not ok and m > 1", "len(lower(a)) >= -2 or n in [1, 3.5]", "today() > b",
                 "(n > 1) and ((ok == true) or not (a in [1, 'x']))"):
        try:
            compiled = condition(text, FIELDS)
        except ExpressionError:
            assert text.startswith("(n > 1)"), text  # a number list for text `a`: refused
            continue
        for source in (compiled.source, compiled.holds, compiled.fails):
            assert_safe(source)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=10).map(" ".join))
def test_fuzz_the_loader_reports_instead_of_crashing(tmp_path: Path, text: str) -> None:
    quoted = text.replace("\\", "\\\\").replace('"', '\\"').replace("\x00", "\\0")
    found = []
    try:
        load(tmp_path, f'      - {{check: "{quoted}"}}')
    except ConfigError as exc:
        found = exc.issues
    assert all(i.line >= 1 and i.path for i in found)


@pytest.mark.parametrize(("text", "values", "expected"), [
    ("a == null", {"a": None}, True),
    ("a != null", {"a": None}, False),
    ("n > 1", {"n": None}, None),  # unknown: a check passes, a `when` does not apply
    ("not (n > 1)", {"n": None}, None),
    ("n > 1 and m > 5", {"n": None}, False),  # false and unknown: false
    ("n > 1 or m > 1", {"n": None}, True),  # unknown or true: true
    ("n > 1 or m > 5", {"n": None}, None),
    ("a in ['x', 'y']", {"a": None}, None),
    ("len(a) > 0", {"a": None}, None),
    ("upper(b) == 'Y'", {}, True),
    ("b < today()", {"b": "2020-01-01"}, True),
    ("b < today()", {"b": "2999-01-01"}, False),
    ("0 <= m <= 3", {}, True),
    ("-1 < m and m not in [1, 2]", {}, True),
])
def test_expressions_follow_three_valued_logic(text: str, values: dict[str, object], expected: object) -> None:
    env = {"a": "x", "b": "y", "n": 2, "m": 3, "ok": True, "_today": BASE_NAMESPACE["_today"], **values}
    compiled = condition(text, FIELDS)

    def run(source: str) -> object:
        return eval(compile(source, "<rule>", "eval"), {"__builtins__": {"len": len}}, dict(env))  # noqa: S307

    assert run(compiled.source) is expected
    # the short forms rules compile to: true exactly when it holds, or exactly when it fails
    assert bool(run(compiled.holds)) is (expected is True)
    assert bool(run(compiled.fails)) is (expected is False)
