"""Cross-field rules, lookups and warnings in whole runs: records, rejects, counts and the report."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from feedd.config import Config, load_config
from feedd.config.values import FieldSpec, FieldType, Lookup
from feedd.daemon import Daemon
from feedd.model import RunStatus
from feedd.pipeline import lookups
from feedd.pipeline.process import Job, Outcome, process
from feedd.pipeline.validate import FieldError, compile_field
from tests.helpers import DEMO_HASH, write
from tests.pipeline.test_runner import finished, upload
from tests.sftp.conftest import Feedd, fetch_outbox, render

CONFIG = f"""\
state_dir: ./var
lookups:
  departments: {{file: ./departments.csv, column: code}}
schemas:
  employee:
    fields:
      employee_id: {{type: string, required: true}}
      status:      {{type: enum, values: [active, leave, terminated]}}
      hired_on:    {{type: date, required: true}}
      end_date:    {{type: date}}
      salary:      {{type: decimal}}
      department:  {{type: string, in_lookup: departments}}
      nickname:    {{type: string, max_length: 5, severity: warning}}
    rules:
      - {{when: "status == 'terminated'", require: [end_date]}}
      - {{check: "end_date >= hired_on", message: "end_date is before hired_on"}}
      - {{check: "salary < 100000 or status == 'leave'", message: "salary looks too high", severity: warning}}
connections:
  acme: {{password_hash: "{DEMO_HASH}"}}
pipelines:
  acme-employees:
    connection: acme
    schema: employee
    match: ["inbox/*.csv"]
"""
HEADER = "employee_id,status,hired_on,end_date,salary,department,nickname\n"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    write(tmp_path, "departments.csv", "code,name\nHR,Human resources\nENG,Engineering\n")
    return load_config(write(tmp_path, "feedd.yaml", CONFIG), env={})


def run(config: Config, tmp_path: Path, text: str, name: str = "staff.csv") -> Outcome:
    src = write(tmp_path, name, text)
    return process(Job("R1", str(src), f"inbox/{name}", config.pipelines["acme-employees"],
                       config.schemas["employee"], str(tmp_path / "out" / name)))


def records(outcome: Outcome) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(outcome.records_path or "").read_text().splitlines()]


def test_cross_field_rules_reject_rows_with_the_rules_message(config: Config, tmp_path: Path) -> None:
    outcome = run(config, tmp_path, HEADER
                  + "E1,terminated,2020-01-01,2024-05-31,50000,HR,\n"  # valid: ended after hiring
                  + "E2,terminated,2020-01-01,,50000,HR,\n"  # terminated without an end date
                  + "E3,active,2020-01-01,2019-12-31,50000,ENG,\n"  # ends before it starts
                  + "E4,active,2020-01-01,,900.5,ENG,\n")  # no end date: the check is not false, only unknown
    assert outcome.status == "completed"
    assert (outcome.rows, outcome.valid, outcome.invalid) == (4, 2, 2)
    assert [r["employee_id"] for r in records(outcome)] == ["E1", "E4"]
    assert outcome.errors == [
        (3, None, "rule", "end_date is required when status == 'terminated'"),
        (4, None, "rule", "end_date is before hired_on"),
    ]


def test_a_rule_reading_a_field_that_failed_is_not_reported_twice(config: Config, tmp_path: Path) -> None:
    outcome = run(config, tmp_path, HEADER + "E1,terminated,2020-01-01,31/05/2024,1,HR,\n")
    assert outcome.invalid == 1
    assert [(f, c) for _, f, c, _ in outcome.errors] == [("end_date", "type")]


def test_decimals_compare_as_numbers_in_rules(config: Config, tmp_path: Path) -> None:
    # as text "99999.5" > "100000"; as numbers it is less: no warning
    outcome = run(config, tmp_path, HEADER + "E1,active,2020-01-01,,99999.5,HR,\nE2,active,2020-01-01,,100000,HR,\n")
    assert outcome.warnings == [(3, None, "rule", "salary looks too high")]


def test_warnings_keep_rows_valid_and_are_counted_and_reported(config: Config, tmp_path: Path) -> None:
    outcome = run(config, tmp_path, HEADER
                  + "E1,active,2020-01-01,,250000,HR,Bobby-Joe\n"  # two warnings: one row warned
                  + "E2,active,2020-01-01,,100,HR,Al\n"
                  + "E3,active,2020-01-01,,250000,XX,\n")  # invalid (lookup): its warning is not counted
    assert (outcome.rows, outcome.valid, outcome.invalid, outcome.warned) == (3, 2, 1, 1)
    assert [r["employee_id"] for r in records(outcome)] == ["E1", "E2"]
    assert records(outcome)[0]["nickname"] == "Bobby-Joe", "a warned value is kept"
    assert outcome.warnings == [
        (2, "nickname", "max_length", "nickname: 'Bobby-Joe' is longer than 5 characters"),
        (2, None, "rule", "salary looks too high"),
    ]
    assert outcome.errors == [(4, "department", "in_lookup", "department: 'XX' is not in the lookup 'departments'")]
    report = json.loads(Path(outcome.report_path or "").read_text())
    assert report["counts"] == {"rows": 3, "valid": 2, "invalid": 1, "warned": 1}
    assert [(w["row"], w["field"], w["code"]) for w in report["warnings"]] == [
        (2, "nickname", "max_length"), (2, None, "rule")]


def test_a_changed_lookup_file_is_read_again(config: Config, tmp_path: Path) -> None:
    text = HEADER + "E1,active,2020-01-01,,1,OPS,\n"
    assert run(config, tmp_path, text, "a.csv").invalid == 1
    ref = tmp_path / "departments.csv"
    before = ref.stat().st_mtime_ns
    ref.write_text("code,name\nHR,Human resources\nOPS,Operations\n")
    os.utime(ref, ns=(before + 2_000_000_000, before + 2_000_000_000))  # a coarse clock still sees a change
    outcome = run(config, tmp_path, text, "b.csv")
    assert (outcome.valid, outcome.invalid) == (1, 0)


def test_a_lookup_file_gone_fails_the_run_clearly(config: Config, tmp_path: Path) -> None:
    (tmp_path / "departments.csv").unlink()
    outcome = run(config, tmp_path, HEADER + "E1,active,2020-01-01,,1,HR,\n")
    assert outcome.status == "failed" and outcome.error is not None
    code, message = outcome.error
    assert code == "lookup_missing"
    assert "departments" in message and "departments.csv" in message


def test_refresh_rereads_a_lookup_whose_file_looks_unchanged(tmp_path: Path) -> None:
    ref = write(tmp_path, "ref.csv", "code\nA\n")
    config = load_config(write(tmp_path, "feedd.yaml", CONFIG.replace(
        "departments: {file: ./departments.csv, column: code}",
        "departments: {file: ./ref.csv, column: code, refresh: 50ms}")), env={})
    lookup = config.lookups["departments"]
    assert "A" in lookups.values(lookup)
    st = ref.stat()
    ref.write_text("code\nB\n")  # same size; the modification time put back as it was
    os.utime(ref, ns=(st.st_atime_ns, st.st_mtime_ns))
    deadline = time.monotonic() + 10
    while "B" not in lookups.values(lookup):
        assert time.monotonic() < deadline, "refresh never read the file again"
        time.sleep(0.02)


def test_a_large_lookup_is_compact_and_exact(tmp_path: Path) -> None:
    count = lookups.SET_MAX + 50_000
    codes = [f"P{i:07d}" for i in range(count)]
    write(tmp_path, "big.csv", "id,code\n" + "".join(f"{i},{c}\n" for i, c in enumerate(codes)))
    config = load_config(write(tmp_path, "feedd.yaml", CONFIG.replace(
        "departments: {file: ./departments.csv, column: code}", "departments: {file: ./big.csv, column: code}")),
        env={})
    found = lookups.values(config.lookups["departments"])
    assert isinstance(found, lookups.Values) and len(found) == count
    assert all(c in found for c in codes[::997])
    for absent in ("P", "P00000001", f"P{count:07d}", "p0000001", "P0000001 ", ""):
        assert absent not in found
    rows = "".join(f"E{i},active,2020-01-01,,1,{c},\n" for i, c in enumerate(["P0000007", "Q0000007", codes[-1]]))
    outcome = run(config, tmp_path, HEADER + rows)
    assert [e[:3] for e in outcome.errors] == [(3, "department", "in_lookup")]


async def test_a_drop_shows_warnings_beside_errors_in_the_run_and_the_partners_report(
        tmp_path: Path, demo_key: tuple[Path, str], host_key: Path) -> None:
    write(tmp_path, "domains.csv", "domain\nexample.org\n")
    text = render(demo_key[1], str(host_key)).replace("      email: {type: email, required: true}\n", """\
      email: {type: email, required: true}
      domain: {type: string, in_lookup: domains, severity: warning}
      left: {type: date}
      joined: {type: date}
    rules:
      - {check: "left >= joined", message: "left before joining"}
      - {check: "lower(domain) != 'example.net'", message: "example.net is retired", severity: warning}
lookups:
  domains: {file: ./domains.csv, column: domain}
""", 1)
    daemon = Daemon(load_config(write(tmp_path, "feedd.yaml", text), env={}), drain_seconds=2, workers=1)
    await daemon.start()
    try:
        feedd = Feedd(daemon, tmp_path, demo_key[0], tmp_path / "feedd.yaml")
        await upload(feedd, "/inbox/people.csv", b"email,domain,left,joined\n"
                                                 b"ann@example.org,example.org,,2020-01-01\n"
                                                 b"bob@example.net,example.net,,2020-01-01\n"
                                                 b"cy@example.org,example.org,2019-01-01,2020-01-01\n")
        [run] = await finished(feedd, 1)
        files = await asyncio.to_thread(fetch_outbox, feedd.port)
    finally:
        await daemon.stop()
    assert run.status is RunStatus.COMPLETED, run.error
    body = run.to_json()
    assert body["counts"] == {"rows": 3, "valid": 2, "invalid": 1, "warned": 1}
    assert body["errors"] == [{"row": 4, "field": None, "code": "rule", "message": "left before joining"}]
    assert body["warnings"] == [
        {"row": 3, "field": "domain", "code": "in_lookup",
         "message": "domain: 'example.net' is not in the lookup 'domains'"},
        {"row": 3, "field": None, "code": "rule", "message": "example.net is retired"},
    ]
    report = json.loads(files["people.csv.report.json"])
    assert report["counts"] == body["counts"]
    assert [(w["row"], w["code"]) for w in report["warnings"]] == [(3, "in_lookup"), (3, "rule")]


def test_numbers_are_looked_up_by_their_text(tmp_path: Path) -> None:
    ref = write(tmp_path, "grades.csv", "grade\n1\n2\n10\n")
    check = compile_field(FieldSpec("grade", FieldType.INTEGER, in_lookup=Lookup("grades", ref, "grade")))
    assert check("10") == 10 and check(2) == 2
    with pytest.raises(FieldError) as info:
        check("3")
    assert info.value.code == "in_lookup"
