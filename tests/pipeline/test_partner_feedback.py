"""What a partner meets on a first try, end to end over SFTP: a configured column the file names
differently, a file with no usable row, a repeat, a file no pipeline takes, an empty file, and the
reports that tell the partner about each in plain words."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from feedd.model import RunStatus
from tests.pipeline.test_runner import finished, upload
from tests.sftp.conftest import Feedd, fetch_outbox


async def outbox_has(feedd: Feedd, *names: str, within: float = 20.0) -> dict[str, Any]:
    """The reports `names` once they are all in the partner's outbox, read over SFTP."""
    deadline = time.monotonic() + within
    while True:
        files = await asyncio.to_thread(fetch_outbox, feedd.port)
        if all(n in files for n in names):
            return {n: json.loads(files[n]) for n in names}
        if time.monotonic() > deadline:
            raise AssertionError(f"not in the outbox: {sorted(set(names) - set(files))}; there: {sorted(files)}")
        await asyncio.sleep(0.1)


async def test_a_configured_column_missing_from_the_file_falls_back_to_the_auto_map(
    start_feedd: Callable[..., Any],
) -> None:
    # auto_map off: the fallback is for the configured field only, and still happens
    feedd: Feedd = await start_feedd(
        workers=1,
        pipeline_extra="""auto_map: false
    mappings: {email: {from: "E-mail Address", transforms: [lower]}}""",
    )
    await upload(feedd, "/inbox/renamed.csv", b"Name,EMAIL\nAnn,ANN@example.org\n")
    [run] = await finished(feedd, 1)
    assert run.status is RunStatus.COMPLETED, run.error
    assert (run.counts.valid, run.mapping) == (1, {"email": "EMAIL"})
    reason = run.to_json()["mappingReasons"]["email"]
    assert reason["reason"] == "normalized"
    assert "'E-mail Address' is not in the file's header" in reason["fallback"]
    report = (await outbox_has(feedd, "renamed.csv.report.json"))["renamed.csv.report.json"]
    assert "'E-mail Address' is not in the file's header" in report["mapping"]["email"]["fallback"]

    await upload(feedd, "/inbox/other.csv", b"Name,Mail Adress\nAnn,ann@example.org\n")
    runs = await finished(feedd, 2)
    assert runs[1].status is RunStatus.FAILED and runs[1].error is not None
    assert runs[1].error.code == "unmapped_required_field"
    assert (
        "email (mapped to column 'E-mail Address', which is not in the file's header; "
        "closest headers: Mail Adress" in runs[1].error.message
    )


async def test_a_file_with_rows_but_no_valid_row_fails_and_delivers_nothing(
    start_feedd: Callable[..., Any], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    feedd: Feedd = await start_feedd(
        workers=1,
        pipeline_extra=f"""mappings: {{email: "E-mail"}}
    destinations: [{{type: directory, path: "{out}"}}]""",
    )
    sent = b"E-mail\nnot-an-email\nstill not\n"
    await upload(feedd, "/inbox/bad.csv", sent)
    [run] = await finished(feedd, 1)
    assert run.status is RunStatus.FAILED and run.error is not None and run.deliveries == ()
    assert run.error.code == "no_valid_rows" and (run.counts.rows, run.counts.valid) == (2, 0)
    assert not out.exists() or list(out.iterdir()) == []
    report = (await outbox_has(feedd, "bad.csv.report.json"))["bad.csv.report.json"]
    assert report["error"]["code"] == "no_valid_rows" and "send the whole file again" in report["hint"]
    assert report["errors"][0] == {
        "row": 2,
        "field": "email",
        "column": "E-mail",
        "code": "type",
        "message": "email: 'not-an-email' is not an email address",
    }
    # the receipt: what feedd received is what was sent
    assert report["sha256"] == run.source.sha256 == hashlib.sha256(sent).hexdigest()
    assert report["size"] == run.source.size == len(sent)
    assert report["receivedAt"] == run.to_json()["createdAt"]


async def test_a_repeated_unique_value_names_the_row_it_repeats(start_feedd: Callable[..., Any]) -> None:
    feedd: Feedd = await start_feedd(workers=1)
    text = feedd.config_path.read_text()
    await feedd.reload(
        text.replace("email: {type: email, required: true}", "email: {type: email, required: true, unique: true}")
    )
    await upload(feedd, "/inbox/twice.csv", b"email\nann@example.org\nbob@example.org\nann@example.org\n")
    [run] = await finished(feedd, 1)
    assert run.status is RunStatus.COMPLETED and (run.counts.valid, run.counts.invalid) == (2, 1)
    report = (await outbox_has(feedd, "twice.csv.report.json"))["twice.csv.report.json"]
    [error] = report["errors"]
    assert (error["row"], error["field"], error["column"], error["code"]) == (4, "email", "email", "unique")
    assert error["message"].endswith("appears more than once in this file (repeats row 2)")
    assert "1 were rejected" in report["message"] and "twice.csv.rejects.csv" in report["message"]


async def test_the_partner_hears_of_a_duplicate_and_of_a_file_no_pipeline_takes(
    start_feedd: Callable[..., Any],
) -> None:
    feedd: Feedd = await start_feedd(workers=1)
    await upload(feedd, "/inbox/a.csv", b"email\nann@example.org\n")
    await finished(feedd, 1)
    await upload(feedd, "/inbox/a-again.csv", b"email\nann@example.org\n")
    await upload(feedd, "/inbox/staff.xlsx", b"not what we take")
    reports = await outbox_has(feedd, "a-again.csv.report.json", "staff.xlsx.report.json")
    again, stray = reports["a-again.csv.report.json"], reports["staff.xlsx.report.json"]
    runs = await finished(feedd, 3)
    assert again["error"]["code"] == "duplicate_input" and again["duplicateOf"] == runs[0].run_id
    assert "same content" in again["message"] and "retry" in again["hint"]
    assert stray["error"]["code"] == "no_matching_pipeline" and stray["status"] == "failed"
    assert stray["expected"] == ["inbox/*.csv", "inbox/**/*.csv"] and "file's name" in stray["hint"]
    assert stray["size"] == len(b"not what we take") and stray["sha256"] == runs[2].source.sha256


async def test_an_empty_file_fails_with_empty_input_and_is_reported(start_feedd: Callable[..., Any]) -> None:
    feedd: Feedd = await start_feedd(workers=1)
    await upload(feedd, "/inbox/today.csv", b"")
    [run] = await finished(feedd, 1)
    assert run.status is RunStatus.FAILED and run.error is not None and run.error.code == "empty_input"
    assert not (feedd.space() / "inbox" / "today.csv").exists()
    report = (await outbox_has(feedd, "today.csv.report.json"))["today.csv.report.json"]
    assert report["error"]["code"] == "empty_input" and report["size"] == 0
    assert "nothing today" in report["hint"]
    # the next empty file is not a duplicate of this one: every empty file has the same sha256
    await upload(feedd, "/inbox/tomorrow.csv", b"")
    runs = await finished(feedd, 2)
    assert runs[1].error is not None and runs[1].error.code == "empty_input" and runs[1].duplicate_of is None


async def test_an_empty_file_completes_with_no_rows_when_the_pipeline_allows_it(
    start_feedd: Callable[..., Any], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    feedd: Feedd = await start_feedd(
        workers=1,
        pipeline_extra=f"""allow_empty: true
    destinations: [{{type: directory, path: "{out}"}}]""",
    )
    await upload(feedd, "/inbox/today.csv", b"")
    [run] = await finished(feedd, 1, until=(RunStatus.DELIVERED, RunStatus.FAILED))
    assert run.status is RunStatus.DELIVERED and run.error is None
    assert (run.counts.rows, run.counts.valid) == (0, 0)
    [delivered] = list(out.iterdir())
    assert delivered.read_bytes() == b""
    report = (await outbox_has(feedd, "today.csv.report.json"))["today.csv.report.json"]
    assert report["status"] == "completed" and "nothing today" in report["message"]
