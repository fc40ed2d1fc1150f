"""Names feedd writes stay within the filesystem's 255 bytes whatever the input is called, and a run
whose finishing goes wrong ends `failed`, never stuck in `processing`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from feedd import failpoints
from feedd.durable import NAME_MAX, fit_name
from feedd.model import RunStatus
from tests.pipeline.test_runner import finished, upload
from tests.sftp.conftest import Feedd, fetch_outbox
from tests.sftp.test_disk_full import tmpfs


def test_fit_name_keeps_short_names_and_the_extension_of_long_ones() -> None:
    assert fit_name("contacts.csv.report.json") == "contacts.csv.report.json"
    long = "a" * 250 + ".csv.report.json"
    fitted = fit_name(long)
    assert len(fitted.encode()) <= NAME_MAX and fitted.endswith(".csv.report.json")
    assert fitted != fit_name("a" * 249 + "b.csv.report.json"), "two long names must not collapse into one"
    assert len(fit_name("é" * 200 + ".json", 100).encode()) <= 100
    assert fit_name(fitted) == fitted


async def test_a_250_byte_name_is_processed_and_reported(start_feedd: Callable[..., Any]) -> None:
    feedd: Feedd = await start_feedd(workers=1, pipeline_extra="""reports: true
    output: {filename: "{name}.{run_id}.{ext}"}
    destinations: [{type: outbox}]""")
    name = "c" * (250 - len(".csv")) + ".csv"
    await upload(feedd, f"/inbox/{name}", b"email\nann@example.org\nnot-an-email\n")
    [run] = await finished(feedd, 1, until=(RunStatus.DELIVERED, RunStatus.FAILED))
    assert run.status is RunStatus.DELIVERED, run.error
    files = await asyncio.to_thread(fetch_outbox, feedd.port)
    assert all(len(n.encode()) <= NAME_MAX for n in files)
    reports = [n for n in files if n.endswith(".csv.report.json")]
    rejects = [n for n in files if n.endswith(".csv.rejects.csv")]
    outputs = [n for n in files if n.endswith(".jsonl")]
    assert len(reports) == 1 and len(rejects) == 1 and len(outputs) == 1, sorted(files)
    assert reports[0].startswith("c" * 100)


async def test_a_failure_while_finishing_fails_the_run(start_feedd: Callable[..., Any],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(failpoints, "ARMED", "runner.before_record")
    monkeypatch.setattr(failpoints, "RAISE", True)
    feedd: Feedd = await start_feedd(workers=1)
    await upload(feedd, "/inbox/a.csv", b"email\nann@example.org\n")
    [run] = await finished(feedd, 1)
    assert run.status is RunStatus.FAILED and run.error is not None
    assert run.error.code == "internal_error"
    assert "runner.before_record" in run.error.message


async def test_a_full_disk_while_placing_reports_fails_the_run(start_feedd: Callable[..., Any],
                                                               tmp_path: Path) -> None:
    with tmpfs(tmp_path / "tiny", "1m") as spaces:
        feedd: Feedd = await start_feedd(workers=1, sftp_extra=f'spaces_dir: "{spaces}"\n  min_free_space: 0',
                                         pipeline_extra="reports: true\n    active: false")
        await upload(feedd, "/inbox/a.csv", b"email\nann@example.org\n")
        assert len(await feedd.wait_runs(1, statuses=(RunStatus.HELD,))) == 1
        filler = spaces / "filler"
        with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as f:
            for _ in range(2048):  # 2 MiB into a 1 MiB disk: full to the last block
                f.write(b"x" * 1024)
        config = feedd.config_path.read_text()
        await feedd.reload(config.replace("    active: false\n", ""))
        [run] = await finished(feedd, 1)
        assert run.status is RunStatus.FAILED and run.error is not None, run.status
        assert run.error.code == "internal_error" and "No space left" in run.error.message, run.error
        filler.unlink()


async def test_the_quota_counts_the_reports_and_outputs_placed_in_the_outbox(start_feedd: Callable[..., Any]) -> None:
    """What the runner and delivery place in the partner's outbox is counted, on the loop, by the space."""
    feedd: Feedd = await start_feedd(workers=1, pipeline_extra="""reports: true
    destinations: [{type: outbox}]""")
    await upload(feedd, "/inbox/people.csv", b"email\nann@example.org\nnot-an-email\n")
    [run] = await finished(feedd, 1, until=(RunStatus.DELIVERED, RunStatus.FAILED))
    assert run.status is RunStatus.DELIVERED, run.error
    space = feedd.daemon.spaces.get("demo") if feedd.daemon.spaces else None
    assert space is not None
    on_disk = sum(p.stat().st_size for p in feedd.space().rglob("*") if p.is_file())
    placed = [p for p in (feedd.space() / "outbox").iterdir() if ".spec." not in p.name]  # and the data spec
    assert len(placed) == 3  # report, rejects, output
    assert space.used == on_disk > 0
