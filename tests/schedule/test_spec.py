"""The data spec a partner finds in its outbox: it matches the schema, names the columns the pipeline takes
(configured ones first, then names and aliases), shows an example in the partner's own formats, and is
rewritten when the pipeline changes."""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable
from pathlib import Path

from feedd.config import load_config
from feedd.spec import COLUMNS, render
from tests.helpers import DEMO_HASH, eventually, write
from tests.http.conftest import Api
from tests.schedule.conftest import Clock, outbox

Start = Callable[..., Awaitable[Api]]

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
      status:      {{type: enum, values: [active, leave, terminated]}}
      source:      {{type: string}}
connections:
  acme:
    password_hash: "{DEMO_HASH}"
pipelines:
  acme-employees:
    connection: acme
    schema: employee
    match: ["inbox/*.csv"]
    mappings:
      employee_id: "Employee ID"
      full_name: {{template: "{{First Name}} {{Last Name}}"}}
      hired_on: {{from: "Start Date", transforms: [{{date: "%m/%d/%Y"}}]}}
      salary: {{from: Salary, transforms: [{{number: {{decimal: ",", thousands: "."}}}}]}}
      status: {{from: Status, transforms: [lower, {{map: {{a: active, l: leave, t: terminated}}}}]}}
      source: {{value: partner}}
"""


def test_the_spec_matches_the_schema_and_the_pipeline(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "feedd.yaml", CONFIG), env={})
    pipe = config.pipelines["acme-employees"]
    schema = config.schemas["employee"]
    text, markdown = render(pipe, schema)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == COLUMNS
    assert [(r["field"], r["type"], r["required"], r["unique"]) for r in rows] == [
        (f.name, str(f.type), "yes" if f.required else "no", "yes" if f.unique else "no") for f in schema.fields
    ]
    by = {r["field"]: r for r in rows}
    assert by["employee_id"]["accepted_headers"] == "Employee ID | employee_id"
    assert by["employee_id"]["rules"] == "matches ^E[0-9]{4,}$"
    assert by["email"]["accepted_headers"] == "email | e-mail | mail"
    assert by["full_name"]["accepted_headers"] == "First Name | Last Name"
    assert by["hired_on"]["example"] == "01/31/2026"  # the partner's own date format
    assert by["salary"]["example"] == "10,50" and by["salary"]["rules"] == "at least 0"
    assert by["status"]["example"] == "a" and "one of active, leave, terminated" in by["status"]["rules"]
    assert by["source"]["accepted_headers"] == "(set by us, not sent)"
    assert "| employee_id | string | yes | yes |" in markdown
    assert "`inbox/*.csv`" in markdown
    sample = markdown.split("```csv\n", 1)[1].split("\n```", 1)[0].splitlines()
    assert next(csv.reader([sample[0]])) == ["Employee ID", "email", "First Name", "Start Date", "Salary", "Status"]


async def test_feedd_keeps_the_spec_in_the_outbox_and_rewrites_it_on_change(start_feedd: Start) -> None:
    api = await start_feedd(Clock())
    spec = outbox(api) / "demo-contacts.spec.csv"
    first = spec.read_text()
    assert [r["field"] for r in csv.DictReader(io.StringIO(first))] == ["email"]
    assert not (outbox(api) / "demo-orders-out.spec.csv").exists()  # outbound: the partner sends nothing

    changed = api.config_path.read_text().replace(
        "      email: {type: email, required: true}",
        "      email: {type: email, required: true, aliases: [mail]}\n      name: {type: string}",
    )
    api.config_path.write_text(changed)
    assert await api.daemon.reload()

    async def rewritten() -> list[dict[str, str]] | None:
        rows = list(csv.DictReader(io.StringIO(spec.read_text())))
        return rows if len(rows) == 2 else None

    rows = await eventually(rewritten)
    assert rows[0]["accepted_headers"] == "email | mail" and rows[1]["field"] == "name"
    space = api.daemon.spaces.get("demo")  # type: ignore[union-attr]
    assert space is not None and space.used == space.measure()
