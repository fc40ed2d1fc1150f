"""Mapping: explicit mappings, auto-map with reasons, memory, templates, and the compiled row function."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedd.config import Config, load_config
from feedd.pipeline.mapping import compile_row, header_key, normalize, plan
from tests.helpers import DEMO_HASH, write

CONFIG = f"""\
state_dir: ./var
schemas:
  employee:
    fields:
      employee_id: {{type: string, required: true, unique: true, pattern: "^E[0-9]{{4,}}$"}}
      email:       {{type: email, required: true, aliases: ["e-mail", "mail"]}}
      full_name:   {{type: string, max_length: 200}}
      hired_on:    {{type: date}}
      salary:      {{type: decimal, min: 0}}
      active:      {{type: boolean, default: true}}
      status:      {{type: enum, values: [active, leave, terminated]}}
connections:
  acme: {{password_hash: "{DEMO_HASH}"}}
pipelines:
  acme-employees:
    connection: acme
    schema: employee
    match: ["inbox/*.csv"]
    mappings:
      employee_id: "Employee ID"
      full_name: {{template: "{{First Name}} {{Last Name}}"}}
      hired_on: {{from: "Start Date", transforms: [{{date: "%m/%d/%Y"}}]}}
      status:   {{from: "Status", transforms: [lower, {{map: {{a: active, l: leave, t: terminated}}}}]}}
      salary:   {{from: "Pay", transforms: [{{number: {{decimal: ",", thousands: "."}}}}], default: "0"}}
"""
HEADERS = ["Employee ID", "E-Mail", "First Name", "Last Name", "Start Date", "Pay", "Status", "isActive"]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(write(tmp_path, "feedd.yaml", CONFIG), env={})


def test_normalize() -> None:
    assert normalize("E-Mail Address") == normalize("e_mail_address") == normalize("eMailAddress") == "e_mail_address"
    assert normalize("  Hired On ") == "hired_on"
    assert header_key(["b", "a"]) == header_key(["a", "b"]) != header_key(["a", "c"])


def test_plan_records_a_reason_for_every_field(config: Config) -> None:
    pipe, schema = config.pipelines["acme-employees"], config.schemas["employee"]
    chosen = plan(pipe, schema, HEADERS)
    reasons = {t: (c.source, c.reason) for t, c in chosen.choices.items()}
    assert reasons == {
        "employee_id": ("Employee ID", "mapping"),
        "full_name": (None, "template"),
        "hired_on": ("Start Date", "mapping"),
        "status": ("Status", "mapping"),
        "salary": ("Pay", "mapping"),
        "email": ("E-Mail", "alias"),  # `E-Mail` normalises to e_mail, which is the alias `e-mail`
        "active": ("isActive", "similar"),
    }
    assert chosen.choices["active"].score >= 0.8
    assert chosen.unmapped_required == {}


def test_alias_and_nothing_guessed_below_the_threshold(config: Config) -> None:
    pipe, schema = config.pipelines["acme-employees"], config.schemas["employee"]
    chosen = plan(pipe, schema, ["Employee ID", "mail", "Colour"])
    assert (chosen.choices["email"].source, chosen.choices["email"].reason) == ("mail", "alias")
    assert "active" not in chosen.choices
    # configured, but its column is missing and nothing is close: no column, and the reason says why
    assert "status" not in chosen.choices and chosen.missing["status"] == "Status"
    fallback = chosen.reasons()["status"]["fallback"]
    assert "'Status' is not in the file's header; the auto-map chose no column" in fallback
    missing = plan(pipe, schema, ["Employee ID", "Contact"])
    assert list(missing.unmapped_required) == ["email"]


def test_memory_maps_odd_headers_the_second_time(config: Config) -> None:
    pipe, schema = config.pipelines["acme-employees"], config.schemas["employee"]
    odd = ["Employee ID", "Kontakt (privat)"]
    first = plan(pipe, schema, odd)
    assert "email" in first.unmapped_required
    second = plan(pipe, schema, odd, memory={"email": "Kontakt (privat)"})
    assert (second.choices["email"].source, second.choices["email"].reason) == ("Kontakt (privat)", "remembered")


def test_compiled_row_maps_transforms_and_validates(config: Config) -> None:
    pipe, schema = config.pipelines["acme-employees"], config.schemas["employee"]
    row_fn = compile_row(pipe, schema, HEADERS, plan(pipe, schema, HEADERS))
    record, errors = row_fn(["E1234", "ann@example.org", "Ann", "Lee", "02/29/2024", "1.234,50", "L", "yes"])
    assert errors is None
    assert record == {"employee_id": "E1234", "email": "ann@example.org", "full_name": "Ann Lee",
                      "hired_on": "2024-02-29", "salary": "1234.50", "active": True, "status": "leave"}
    record, errors = row_fn(["X1", "nope", "", "", "31/02/2024", "", "q", ""])
    assert record["salary"] == "0" and record["active"] is True and record["full_name"] is None
    assert errors == [
        ("employee_id", "pattern", "employee_id: 'X1' does not match ^E[0-9]{4,}$"),
        ("email", "type", "email: 'nope' is not an email address"),
        ("hired_on", "transform", "hired_on: '31/02/2024' does not match %m/%d/%Y"),
        ("status", "enum", "status: 'q' is not one of active, leave, terminated"),
    ]
    _, errors = row_fn(["E1234", "bob@example.org", "Bob", "Ray", "", "", "a", "no"])
    assert errors == [("employee_id", "unique", "employee_id: 'E1234' appears more than once in this file")]


def test_short_rows_read_as_empty_cells(config: Config) -> None:
    pipe, schema = config.pipelines["acme-employees"], config.schemas["employee"]
    row_fn = compile_row(pipe, schema, HEADERS, plan(pipe, schema, HEADERS))
    record, errors = row_fn(["E2000"])
    assert [e[:2] for e in errors] == [("email", "required")]
    assert record["employee_id"] == "E2000"


def test_templates_skip_missing_and_null_cells_and_show_numbers(config: Config) -> None:
    from feedd.pipeline.mapping import _template

    render = _template("{a} {b}-{c}", {"a": 0, "b": 1, "c": 2})
    assert render(["x"]) == "x -"
    assert render(["x", None, 7]) == "x -7"
