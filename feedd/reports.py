"""What a partner reads about a run: the plain-words `message` and `hint` of its report, and the report of
a run that intake decided without processing it (a duplicate, a file that matches no pipeline).

A processed run's report is written by its worker (`pipeline.process`); the words come from here, so that
every report, whichever part wrote it, says what happened and what to do next in the same voice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from feedd import pgp
from feedd.config import Config
from feedd.config.values import Pipeline
from feedd.delivery.local import place_outbox
from feedd.durable import fit_name
from feedd.model import Direction, Run, RunStatus, iso
from feedd.pipeline.write import write_json

# Run-level error code -> what the partner can do about it.
_HINTS = {
    "duplicate_input": "Nothing to do if you sent it again on purpose (a retry). If you meant to send new data, "
    "check that you uploaded the right file.",
    "no_matching_pipeline": "Check the file's name and folder against the names we expect (see `expected`), "
    "or ask us to set up a feed for this kind of file. The file is kept on our side.",
    "empty_input": "Send the file again with its rows. If an empty file is how you say 'nothing today', ask us "
    "to accept empty files for this feed.",
    "unmapped_required_field": "Add the missing column(s) to the file's header row (see the closest headers "
    "in the message), or tell us the new column names.",
    "no_valid_rows": "No row could be used: check the errors below. Usually the columns or the file format are "
    "not the ones expected. Fix them and send the whole file again.",
    "rejected_by_reviewer": "The file was looked at on our side and not accepted: the message says why. Fix "
    "what it asks and send the whole file again.",
    "lookup_missing": "Nothing to do on your side: a reference list we check your values against is missing on "
    "ours. We will send the file through again once it is back.",
    "sheet_not_found": "Put the rows in the sheet we read (the message lists the workbook's sheets), or tell us "
    "the sheet's new name.",
    "too_many_errors": "Too many rows were invalid, so nothing was accepted. Fix the rows listed in the errors "
    "(every rejected row is in the .rejects.csv file) and send the whole file again.",
}
_GENERIC = "Check that the file is in the expected format (CSV with a header row, or JSON) and send it again."


def advice(
    status: str, code: str | None, error: str | None, rows: int, valid: int, invalid: int, rejects: str | None = None,
    warned: int = 0,
) -> tuple[str, str]:
    """(message, hint): what happened to the file and what the partner can do next, in plain words."""
    if status == "needs_review":
        return (f"The file is waiting for a person on our side to look at it: {error}",
                "Nothing to do yet: you get a new report once it has been decided.")
    if code is not None:
        return error or code, _HINTS.get(code, _GENERIC)
    if rows == 0:
        return "The file was empty and was recorded as 'nothing today'.", "Nothing to do."
    noted = f" {warned} accepted row{'s' if warned != 1 else ''} carry warnings (see `warnings`)." if warned else ""
    if invalid == 0:
        return f"All {rows} rows were accepted.{noted}", "Nothing to do." if not warned else \
            "Nothing needs sending again; the warnings point at values worth checking."
    where = f" (every rejected row is in {rejects})" if rejects else ""
    return (
        f"{valid} of {rows} rows were accepted; {invalid} were rejected{where}.{noted}",
        "Fix the rejected rows and send them again in a new file; the accepted rows are not needed again.",
    )


def expected_names(config: Config, connection: str) -> list[str]:
    """The inbound names (globs) the connection's pipelines take."""
    return [
        g
        for p in config.pipelines.values()
        if p.connection == connection and p.direction is Direction.INBOUND
        for g in p.match
    ]


def reports_for(config: Config, run: Run) -> bool:
    """Whether the partner gets a report for a run intake decided: its pipeline says so (`reports`); a file
    that matches no pipeline has none, so it gets one when any inbound pipeline of its connection has
    `reports: true` (that partner reads reports)."""
    if run.direction is not Direction.INBOUND:
        return False
    pipe: Pipeline | None = config.pipelines.get(run.pipeline or "")
    if pipe is not None:
        return pipe.reports
    return any(
        p.reports
        for p in config.pipelines.values()
        if p.connection == run.connection and p.direction is Direction.INBOUND
    )


def receipt(run: Run) -> dict[str, Any]:
    """What was received, so that a partner can check it."""
    return {"sha256": run.source.sha256, "size": run.source.size, "receivedAt": iso(run.created_at)}


def intake_report(config: Config, run: Run) -> dict[str, Any]:
    """The report of a run that intake failed without processing it."""
    code = run.error.code if run.error else None
    message, hint = advice(str(run.status), code, run.error.message if run.error else None, 0, 0, 0)
    report: dict[str, Any] = {
        "runId": run.run_id,
        "file": run.source.name,
        "pipeline": run.pipeline,
        "status": str(run.status),
        "message": message,
        "hint": hint,
        **receipt(run),
        "counts": {"rows": 0, "valid": 0, "invalid": 0, "warned": 0},
        "mapping": {},
        "detected": {},
        "error": None if run.error is None else {"code": run.error.code, "message": run.error.message},
        "errors": [],
        "warnings": [],
    }
    if run.duplicate_of is not None:
        report["duplicateOf"] = run.duplicate_of
    if code == "no_matching_pipeline":
        report["expected"] = expected_names(config, run.connection)
    return report


INTAKE_REPORTED = ("duplicate_input", "no_matching_pipeline")


def place_intake_report(config: Config, run: Run, outbox: Path) -> int:
    """In a thread: write the report of a run intake failed into the partner's `outbox`, when it gets one
    (`reports_for`); the bytes added."""
    if run.status is not RunStatus.FAILED or run.error is None or run.error.code not in INTAKE_REPORTED:
        return 0
    if not reports_for(config, run):
        return 0
    folder = config.state_dir / "runs" / run.run_id
    folder.mkdir(parents=True, exist_ok=True)
    written = write_json(folder / "report.json", intake_report(config, run))
    seal = pgp.sealing(config, run.connection)  # the partner's encrypt_to keys, if any
    return place_outbox(written, outbox, report_name(run.source.name), seal).stat().st_size


def place_decided_report(config: Config, run: Run, outbox: Path) -> int:
    """In a thread: write the report of a run decided without a new pass over its input (a reviewer
    rejected it: the error's message is theirs) into the partner's `outbox`, when it gets one; the bytes
    added. It carries what the run found before (counts, mapping, first errors)."""
    if not reports_for(config, run):
        return 0
    report = intake_report(config, run)
    found = run.meta.get("headers")
    headers: list[str] = found if isinstance(found, list) else []
    report.update(
        counts={"rows": run.counts.rows, "valid": run.counts.valid, "invalid": run.counts.invalid},
        mapping=run.meta.get("mapping_reasons") or {}, detected=run.meta.get("detected") or {},
        errors=columns([(e.row, e.field, e.code, e.message) for e in run.errors], run.mapping, headers),
    )
    folder = config.state_dir / "runs" / run.run_id
    folder.mkdir(parents=True, exist_ok=True)
    written = write_json(folder / "report.json", report)
    seal = pgp.sealing(config, run.connection)  # the partner's encrypt_to keys, if any
    return place_outbox(written, outbox, report_name(run.source.name), seal).stat().st_size


def report_name(source: str) -> str:
    return fit_name(f"{source.rsplit('/', 1)[-1]}.report.json")


def columns(
    errors: Sequence[tuple[int, str | None, str, str]], mapping: dict[str, str], headers: Sequence[str]
) -> list[dict[str, Any]]:
    """Row errors as reports show them: each with the partner's own column beside the field (looked up
    here, once per kept error, never per row)."""
    present = set(headers)
    return [
        {
            "row": r,
            "field": f,
            "column": mapping.get(f) if f is not None and mapping.get(f) in present else None,
            "code": c,
            "message": m,
        }
        for r, f, c, m in errors
    ]
