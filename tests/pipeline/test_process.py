"""A whole run in the worker function: outputs on disk, rejects, the report, and run-level failures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from feedd.config import Config, load_config
from feedd.pipeline.process import Job, process
from tests.pipeline.test_mapping import CONFIG

GOOD = "E1001,ann@example.org,Ann,Lee,01/15/2024,\"1.234,50\",A,yes\n"
BAD = "X9,not-an-email,=HYPERLINK(\"x\"),Ray,13/45/2024,,q,no\n"
HEADER = "Employee ID,E-Mail,First Name,Last Name,Start Date,Pay,Status,isActive\n"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config((tmp_path / "feedd.yaml").write_text(CONFIG) and tmp_path / "feedd.yaml", env={})


def job(config: Config, tmp_path: Path, text: str, **kw: object) -> Job:
    src = tmp_path / "staff.csv"
    src.write_text(text)
    fields = {"run_id": "R1", "input_path": str(src), "source_name": "inbox/staff.csv",
              "pipeline": config.pipelines["acme-employees"], "schema": config.schemas["employee"],
              "out_dir": str(tmp_path / "out")}
    fields.update(kw)
    return Job(**fields)  # type: ignore[arg-type]


def test_valid_rows_to_records_invalid_rows_to_rejects(config: Config, tmp_path: Path) -> None:
    outcome = process(job(config, tmp_path, HEADER + GOOD + BAD + GOOD.replace("E1001", "E1002")))
    assert outcome.status == "completed"
    assert (outcome.rows, outcome.valid, outcome.invalid) == (3, 2, 1)
    records = [json.loads(line) for line in Path(outcome.records_path or "").read_text().splitlines()]
    assert records[0] == {"employee_id": "E1001", "email": "ann@example.org", "full_name": "Ann Lee",
                          "hired_on": "2024-01-15", "salary": "1234.50", "active": True, "status": "active"}
    assert [r["employee_id"] for r in records] == ["E1001", "E1002"]
    with open(outcome.rejects_csv_path or "", newline="") as f:
        rejected = list(csv.DictReader(f))
    assert rejected[0]["_row"] == "3" and rejected[0]["Employee ID"] == "X9"
    assert rejected[0]["First Name"] == "'=HYPERLINK(\"x\")", "formulas are neutralised for spreadsheets"
    assert "email: 'not-an-email' is not an email address" in rejected[0]["_errors"]
    assert "hired_on: '13/45/2024' does not match %m/%d/%Y" in rejected[0]["_errors"]
    assert [e[:3] for e in outcome.errors][:2] == [(3, "employee_id", "pattern"), (3, "email", "type")]
    report = json.loads(Path(outcome.report_path or "").read_text())
    assert report["counts"] == {"rows": 3, "valid": 2, "invalid": 1, "warned": 0}
    assert report["mapping"]["email"] == {"source": "E-Mail", "reason": "alias", "score": 1.0}
    assert report["detected"]["delimiter"] == "," and report["detected"]["encoding"] == "utf-8"


def test_too_many_errors_fails_the_run(config: Config, tmp_path: Path) -> None:
    pipe = config.pipelines["acme-employees"]
    strict = type(pipe)(**{**{f: getattr(pipe, f) for f in pipe.__dataclass_fields__}, "max_error_rate": 0.2})
    outcome = process(job(config, tmp_path, HEADER + GOOD + BAD, pipeline=strict))
    assert outcome.status == "failed" and outcome.error is not None
    assert outcome.error[0] == "too_many_errors" and "1 of 2 rows are invalid (50.0%" in outcome.error[1]


def test_required_field_without_a_column_fails_naming_candidates(config: Config, tmp_path: Path) -> None:
    outcome = process(job(config, tmp_path, "Employee ID,Contact Mail\nE1001,a@b.c\n"))
    assert outcome.status == "failed" and outcome.error is not None
    code, message = outcome.error
    assert code == "unmapped_required_field" and "email (closest headers: Contact Mail)" in message


def test_header_drift_is_recorded(config: Config, tmp_path: Path) -> None:
    outcome = process(job(config, tmp_path, HEADER + GOOD, previous_headers=["Employee ID", "E-Mail", "Fax"]))
    assert outcome.drift == {"added": ["First Name", "Last Name", "Start Date", "Pay", "Status", "isActive"],
                             "removed": ["Fax"]}


def test_unreadable_input_is_a_run_error_not_a_traceback(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "garbage.csv"
    src.write_bytes(bytes(range(256)) * 50)
    outcome = process(job(config, tmp_path, "", input_path=str(src)))
    assert outcome.status == "failed" and outcome.error is not None and outcome.error[0] == "unreadable_input"
    assert Path(outcome.report_path or "").exists()


def test_csv_records_spell_booleans_and_empty_cells_like_other_tools(tmp_path: Path) -> None:
    from feedd.pipeline.write import RecordWriter

    out = RecordWriter(tmp_path / "r.csv", "csv", ["id", "active", "note"])
    out.write({"id": 1, "active": True, "note": None})
    out.write({"id": 2, "active": False, "note": "=cmd"})
    assert (tmp_path / "r.csv").exists() is False  # appears only when closed
    path = out.close()
    assert path.read_text().splitlines() == ["id,active,note", "1,true,", "2,false,=cmd"]
    human = RecordWriter(tmp_path / "h.csv", "csv", ["note"], for_humans=True)
    human.write({"note": "=cmd|' /C calc'!A0"})
    assert human.close().read_text().splitlines()[1] == "'=cmd|' /C calc'!A0"


def test_an_input_gone_from_the_spool_fails_the_run_plainly(config: Config, tmp_path: Path) -> None:
    j = job(config, tmp_path, HEADER + GOOD)
    Path(j.input_path).unlink()
    outcome = process(j)
    assert outcome.status == "failed" and outcome.error is not None
    assert outcome.error[0] == "input_missing"
    assert outcome.error[1].startswith("inbox/staff.csv: the input is no longer in the spool")


def test_duplicate_integer_ids_are_rejected_across_a_long_file(tmp_path: Path) -> None:
    text = CONFIG.replace('employee_id: {type: string, required: true, unique: true, pattern: "^E[0-9]{4,}$"}',
                          "employee_id: {type: integer, required: true, unique: true}")
    assert text != CONFIG
    config = load_config((tmp_path / "feedd.yaml").write_text(text) and tmp_path / "feedd.yaml", env={})
    ids = [*range(1, 150_001), 70_000, 149_999, -5, -5]  # past two 65,536 blocks, then repeats
    rows = "".join(f"{i},a{i}@example.org,A,B,01/15/2024,1,A,yes\n" for i in ids)
    outcome = process(job(config, tmp_path, HEADER + rows, pipeline=config.pipelines["acme-employees"],
                          schema=config.schemas["employee"]))
    assert outcome.status == "completed" and (outcome.valid, outcome.invalid) == (150_001, 3)
    assert [(e[0], e[1], e[2]) for e in outcome.errors] == [
        (150_002, "employee_id", "unique"), (150_003, "employee_id", "unique"), (150_005, "employee_id", "unique")]
    assert [e[3] for e in outcome.errors] == [
        "employee_id: '70000' appears more than once in this file (repeats row 70001)",
        "employee_id: '149999' appears more than once in this file (repeats row 150000)",
        "employee_id: '-5' appears more than once in this file (repeats row 150004)"]


@pytest.mark.parametrize("name", ["staff.jsonl", "staff.json"])
def test_a_number_past_the_digit_limit_is_a_row_error(tmp_path: Path, name: str) -> None:
    text = CONFIG.replace('employee_id: {type: string, required: true, unique: true, pattern: "^E[0-9]{4,}$"}',
                          "employee_id: {type: integer, required: true}")
    config = load_config((tmp_path / "feedd.yaml").write_text(text) and tmp_path / "feedd.yaml", env={})
    huge = "9" * 5000  # past the 4,300 digits Python turns into an int
    records = [{"Employee ID": 1, "E-Mail": "a@example.org"}, {"Employee ID": "HUGE", "E-Mail": "b@example.org"},
               {"Employee ID": 3, "E-Mail": "c@example.org", "extra": {"nested": "HUGE"}}]
    lines = [json.dumps(r).replace('"HUGE"', huge) for r in records]
    body = "\n".join(lines) + "\n" if name.endswith(".jsonl") else "[" + ",\n".join(lines) + "]"
    src = tmp_path / name
    src.write_text(body)
    outcome = process(job(config, tmp_path, "", input_path=str(src), source_name=f"inbox/{name}",
                          pipeline=config.pipelines["acme-employees"], schema=config.schemas["employee"]))
    assert outcome.error is None and outcome.status == "completed"
    assert (outcome.rows, outcome.valid, outcome.invalid) == (3, 2, 1)
    [(row, field, code, message)] = outcome.errors
    assert (row, field, code) == (2, "employee_id", "type")
    assert message.startswith("employee_id: '999") and "5000 digits" in message and "integer" in message
    report = json.loads(Path(outcome.report_path or "").read_text())
    assert report["errors"][0]["row"] == 2
