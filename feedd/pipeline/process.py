"""One run, start to finish, in a worker process: read -> map -> transform -> validate -> write.

`process()` takes everything it needs as plain values (the pipeline and schema dataclasses, the
mapping memory) and returns an `Outcome`; it touches only the input file and the run's own folder, so
it can run in a process pool and be retried after a crash. Stores, sockets and the event loop stay in
the parent.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from feedd import pgp
from feedd.config.values import REVIEW_REASONS, FieldType, FormatConfig, Pipeline, Schema
from feedd.durable import NAME_MAX, fit_name
from feedd.pipeline.mapping import Plan, compile_row, header_key, plan, unique_tables, warnings_of
from feedd.pipeline.read import ReadError, Rows, bad_row, open_rows, open_span
from feedd.pipeline.validate import Unique, repeats
from feedd.pipeline.write import RecordWriter, RejectWriter, write_json
from feedd.reports import advice, columns

MAX_ERRORS = 100  # row errors kept on the run (all of them are in the rejects)
EXTENSIONS = {"jsonl": "jsonl", "csv": "csv", "json": "json"}


@dataclass(frozen=True, slots=True)
class Job:
    run_id: str
    input_path: str
    source_name: str
    pipeline: Pipeline
    schema: Schema
    out_dir: str
    memory: dict[str, str] | None = None
    previous_headers: list[str] | None = None
    span: Span | None = None  # one stretch of the input (see `process_stretch`), or the whole of it
    receipt: dict[str, Any] | None = None  # the input's sha256, size and receivedAt, for the report
    reviewed: tuple[str, ...] = ()  # fields whose mapping a reviewer chose (their reason is `review`)
    approved: bool = False  # a reviewer approved the run: the pipeline's `review` is not applied again
    failed: tuple[str, str] | None = None  # (code, message): the input could not be made readable (decryption)
    decrypt: pgp.Keys | None = None  # the input is encrypted: `sample` and `preview` decrypt it to a scratch copy


@dataclass(frozen=True, slots=True)
class Span:
    """Bytes `start` to `end` of a JSON array input hold whole elements; `before` elements come earlier."""

    start: int
    end: int
    before: int
    rows: int = 0  # the elements in it, when known


@dataclass(slots=True)
class Outcome:
    status: str  # completed | failed
    rows: int = 0
    valid: int = 0
    invalid: int = 0
    mapping: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[tuple[int, str | None, str, str]] = field(default_factory=list)
    warned: int = 0  # valid rows with at least one warning
    warnings: list[tuple[int, str | None, str, str]] = field(default_factory=list)  # the first MAX_ERRORS
    error: tuple[str, str] | None = None
    detected: dict[str, Any] = field(default_factory=dict)
    headers: list[str] = field(default_factory=list)
    header_key: str | None = None
    drift: dict[str, list[str]] | None = None
    records_path: str | None = None
    records_jsonl_path: str | None = None  # the same records as NDJSON for the API, when the output is not jsonl
    rejects_path: str | None = None
    rejects_csv_path: str | None = None
    report_path: str | None = None
    seconds: float = 0.0
    stretches: int = 1  # workers that processed a stretch of the input each
    # status `needs_review`: why, as runs show it ({reason, message, details}; see `_hold`)
    review: dict[str, Any] | None = None
    unmapped: list[dict[str, Any]] = field(default_factory=list)  # required fields left without a column


# A destination may write a temporary name beside the output (`.<name>.<run id>.tmp` on an SFTP server):
# outputs leave room for it within the 255 bytes a file name may have.
OUTPUT_NAME_MAX = NAME_MAX - 40


def output_name(pipeline: Pipeline, job: Job) -> str:
    name = job.source_name.rsplit("/", 1)[-1]
    stem = name.split(".", 1)[0] or "output"
    now = time.gmtime()
    return fit_name(pipeline.output.filename.format_map({
        "stem": stem, "name": name, "ext": EXTENSIONS[pipeline.output.format], "run_id": job.run_id,
        "connection": pipeline.connection, "pipeline": pipeline.name,
        "date": time.strftime("%Y-%m-%d", now), "time": time.strftime("%H%M%S", now),
    }), OUTPUT_NAME_MAX)


def headers_key(input_path: str, fmt: FormatConfig) -> str | None:
    """In a worker: the key of the input's header set, to look up a remembered mapping before `process`;
    None when the input has no headers or cannot be read (`process` then says why)."""
    try:
        _, headers, rows = open_rows(Path(input_path), fmt)
    except (ReadError, OSError):
        return None
    rows.close()
    return header_key(headers) if headers else None


SAMPLE_ROWS = 20


@contextlib.contextmanager
def _plain(job: Job) -> Iterator[Job]:
    """The job with its encrypted input (`decrypt`) as a scratch plain copy, deleted after; or with why it
    could not be decrypted (`failed`)."""
    assert job.decrypt is not None
    with tempfile.TemporaryDirectory(prefix="feedd-plain-") as scratch:
        plain = os.path.join(scratch, pgp.plain_name(job.source_name))
        try:
            pgp.decrypt(job.decrypt, job.input_path, plain)
        except pgp.PgpError as exc:
            job = replace(job, failed=(exc.code, f"{job.source_name}: {exc.message}"))
        yield replace(job, input_path=plain, decrypt=None)


def sample(job: Job, rows: int = SAMPLE_ROWS) -> dict[str, Any]:
    """In a worker: the input's header row and first `rows` rows as read (cells as the reader gives them),
    what was detected, and how the pipeline's mapping would choose for these headers (`suggestions`, with
    each reason and score; `unmapped`: required fields with no column and their closest headers)."""
    if job.decrypt is not None:
        with _plain(job) as plain:
            return sample(plain, rows)
    headers: list[str] = []
    first: list[dict[str, Any]] = []
    detected: dict[str, Any] = {"format": "empty"}
    error = None
    try:
        if job.failed is not None:
            raise ReadError(job.failed[0], job.failed[1].removeprefix(f"{job.source_name}: "))
        if os.path.getsize(job.input_path) > 0:
            found, headers, read = open_rows(Path(job.input_path), job.pipeline.format)
            detected = found.as_dict()
            with read:
                for number, cells in read:
                    first.append({"row": number, "cells": [_cell(c) for c in cells]})
                    if len(first) >= rows:
                        break
    except ReadError as exc:  # what was read so far is shown, with why reading stopped
        error = {"code": exc.code, "message": f"{job.source_name}: {exc.message}"}
    chosen = plan(job.pipeline, job.schema, headers, job.memory, job.reviewed)
    return {"headers": headers, "rows": first, "detected": detected, "error": error,
            "suggestions": chosen.reasons(),
            "unmapped": {f: {"configured": chosen.missing.get(f), "closest": c}
                         for f, c in chosen.unmapped_required.items()}}


def _cell(value: Any) -> Any:
    """A cell as JSON can carry it: text and plain JSON values as they are, anything else as its text."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return str(value)


def preview(job: Job) -> dict[str, Any]:
    """In a worker: what processing the run with `job` would give (the same code as a real run), with its
    outputs written to a scratch folder that is then deleted: nothing of the run changes."""
    if job.decrypt is not None:
        with _plain(job) as plain:
            return preview(plain)
    with tempfile.TemporaryDirectory(prefix="feedd-preview-") as scratch:
        outcome = process(replace(job, out_dir=scratch))
    return {
        "status": outcome.status,
        "counts": {"rows": outcome.rows, "valid": outcome.valid, "invalid": outcome.invalid},
        "mapping": outcome.reasons,
        "errors": [{"row": r, "field": f, "code": c, "message": m} for r, f, c, m in outcome.errors[:MAX_ERRORS]],
        "error": None if outcome.error is None else {"code": outcome.error[0], "message": outcome.error[1]},
        "review": outcome.review,
        "headers": outcome.headers,
    }


def process(job: Job) -> Outcome:
    started = time.monotonic()
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for scratch in out.glob("stretch-*"):  # left by an earlier try in stretches that a crash cut short
        shutil.rmtree(scratch, ignore_errors=True)
    outcome = Outcome("completed")
    if job.failed is not None:
        outcome.status, outcome.error = "failed", job.failed
    else:
        _attempt(job, outcome, lambda: _run(job, out, outcome))
    outcome.seconds = round(time.monotonic() - started, 3)
    _hold(job, outcome)
    _report(job, out, outcome)
    return outcome


def _attempt(job: Job, outcome: Outcome, work: Callable[[], object]) -> None:
    try:
        work()
    except ReadError as exc:
        outcome.status, outcome.error = "failed", (exc.code, f"{job.source_name}: {exc.message}")
    except FileNotFoundError:
        if os.path.exists(job.input_path):
            raise  # something else is missing: a crash to look into, not the input
        outcome.status, outcome.error = "failed", (
            "input_missing", f"{job.source_name}: the input is no longer in the spool ({job.input_path})")


@dataclass(slots=True)
class Stretch:
    """What `process_stretch` made of one stretch: its outcome (paths are record and reject bodies, without
    headers) and the `unique` tables the merge compares."""

    outcome: Outcome
    unique: dict[str, Unique] = field(default_factory=dict)
    probe: int = 0  # hash(PROBE) in that worker: string keys compare only between workers that agree on it


PROBE = "feedd unique probe"


def process_stretch(job: Job) -> Stretch:
    """One stretch (`job.span`) of a large input, mapped and validated like a whole run but without the
    checks that need every row (the error rate, `unique` across stretches): `merge` does those."""
    assert job.span is not None
    started = time.monotonic()
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stretch = Stretch(Outcome("completed"), probe=hash(PROBE))

    def run() -> None:
        span, path = job.span, Path(job.input_path)
        assert span is not None
        detected, headers, rows = open_rows(path, job.pipeline.format)
        rows.close()  # only the whole file's detection and headers
        with open_span(path, span.start, span.end, span.before, headers) as stretch_rows:
            stretch.unique = _map_rows(job, out, stretch.outcome, detected.as_dict(), headers, stretch_rows,
                                       body=True)

    _attempt(job, stretch.outcome, run)
    stretch.outcome.seconds = time.monotonic() - started
    return stretch


def merge(job: Job, stretches: list[Stretch]) -> Outcome | None:
    """The run's outputs joined from its stretches', in order; or None when one pass over the whole input
    must decide instead: a stretch failed, or a `unique` value appears in two stretches (which of its rows
    is the repeat depends on every row before it)."""
    started = time.monotonic()
    outcomes = [s.outcome for s in stretches]
    try:
        if any(o.status != "completed" for o in outcomes) or len({s.probe for s in stretches}) > 1:
            return None
        return _join(job, stretches, started)
    finally:
        for o in outcomes:
            if o.records_path:
                shutil.rmtree(Path(o.records_path).parent, ignore_errors=True)


def _join(job: Job, stretches: list[Stretch], started: float) -> Outcome | None:
    out, pipe, outcomes = Path(job.out_dir), job.pipeline, [s.outcome for s in stretches]
    fields = [f.name for f in job.schema.fields]

    def join(name: str, fmt: str, bodies: list[str | None]) -> str:
        writer = RecordWriter(out / name, fmt, fields)
        writer.join([Path(b or "") for b in bodies])
        return str(writer.close())

    if any(repeats([s.unique[name] for s in stretches]) for name in stretches[0].unique):
        return None
    # Syncing waits on the disk: the two record files are joined and synced side by side.
    with ThreadPoolExecutor(2) as threads:
        records = threads.submit(join, f"records.{EXTENSIONS[pipe.output.format]}", pipe.output.format,
                                 [o.records_path for o in outcomes])
        api_copy = (threads.submit(join, "records.api.jsonl", "jsonl", [o.records_jsonl_path for o in outcomes])
                    if pipe.output.format != "jsonl" else None)
        first = outcomes[0]
        outcome = Outcome("completed", mapping=first.mapping, reasons=first.reasons, detected=first.detected,
                          headers=first.headers, header_key=first.header_key, drift=first.drift,
                          stretches=len(stretches))
        for o in outcomes:
            outcome.rows += o.rows
            outcome.valid += o.valid
            outcome.invalid += o.invalid
            outcome.warned += o.warned
            outcome.errors.extend(o.errors[:MAX_ERRORS - len(outcome.errors)])
            outcome.warnings.extend(o.warnings[:MAX_ERRORS - len(outcome.warnings)])
        if any(c == "unique" for _, _, c, _ in outcome.errors):
            _name_repeats(job, outcome.errors)
        rejects = RejectWriter(out / "rejects.jsonl", out / "rejects.csv", outcome.headers)
        rejects.join([(Path(o.rejects_path or ""), Path(o.rejects_csv_path or "")) for o in outcomes])
        outcome.rejects_path, outcome.rejects_csv_path = (str(p) for p in rejects.close())
        outcome.records_path = records.result()
        outcome.records_jsonl_path = api_copy.result() if api_copy is not None else None
    _error_rate(job, outcome)
    outcome.seconds = round(max(o.seconds for o in outcomes) + time.monotonic() - started, 3)
    _hold(job, outcome)
    _report(job, out, outcome)
    return outcome


def _hold(job: Job, outcome: Outcome) -> None:
    """Send the run to a person (`needs_review`) instead of failing it, when its pipeline's `review`
    names what went wrong; or, for `schema_drift`, when its header set changed. Not for a run a reviewer
    has approved: that one ends as any run does."""
    policy = job.pipeline.review
    if not policy or job.approved:
        return
    code, message = outcome.error if outcome.error is not None else (None, None)
    details: dict[str, Any]
    if code == "unmapped_required_field" and code in policy:
        details = {"fields": outcome.unmapped}
    elif code == "too_many_errors" and code in policy:
        details = {"rows": outcome.rows, "valid": outcome.valid, "invalid": outcome.invalid,
                   "rate": round(outcome.invalid / outcome.rows, 4) if outcome.rows else 0.0,
                   "maxErrorRate": job.pipeline.max_error_rate}
    elif "schema_drift" in policy and outcome.drift is not None and (code is None or code == "no_valid_rows"
                                                                      or code in REVIEW_REASONS):
        code, details = "schema_drift", dict(outcome.drift)
        message = message or (f"{job.source_name}: the header differs from the last completed run's "
                              f"(added: {', '.join(outcome.drift['added']) or 'none'}; "
                              f"removed: {', '.join(outcome.drift['removed']) or 'none'})")
    else:
        return
    outcome.status, outcome.error = "needs_review", None
    outcome.review = {"reason": code, "message": message, "details": details}


def _report(job: Job, out: Path, outcome: Outcome) -> None:
    code, error = outcome.error if outcome.error is not None else (None, None)
    if outcome.review is not None:
        error = outcome.review["message"]
    rejects = f"{job.source_name.rsplit('/', 1)[-1]}.rejects.csv" if job.pipeline.reports else None
    message, hint = advice(outcome.status, code, error, outcome.rows, outcome.valid, outcome.invalid, rejects,
                           outcome.warned)
    report = {
        "runId": job.run_id, "file": job.source_name, "pipeline": job.pipeline.name, "status": outcome.status,
        "message": message, "hint": hint, **(job.receipt or {}),
        "counts": {"rows": outcome.rows, "valid": outcome.valid, "invalid": outcome.invalid, "warned": outcome.warned},
        "mapping": outcome.reasons, "detected": outcome.detected,
        "error": None if outcome.error is None else {"code": code, "message": error},
        "errors": columns(outcome.errors, outcome.mapping, outcome.headers),
        "warnings": columns(outcome.warnings, outcome.mapping, outcome.headers),
    }
    outcome.report_path = str(write_json(out / "report.json", report))


def _run(job: Job, out: Path, outcome: Outcome) -> None:
    pipe = job.pipeline
    if os.path.getsize(job.input_path) == 0:
        if not pipe.allow_empty:
            raise ReadError("empty_input", "the file is empty (0 bytes), and this pipeline does not take empty "
                                           "files (allow_empty: false)")
        # "Nothing today": a run of 0 rows, with empty outputs for its destinations
        _map_rows(job, out, outcome, {"format": "empty"}, [], Rows(iter(()), io.StringIO()), empty=True)
        return
    detected, headers, rows = open_rows(Path(job.input_path), pipe.format)
    with rows:
        _map_rows(job, out, outcome, detected.as_dict(), headers, rows)


def _map_rows(job: Job, out: Path, outcome: Outcome, detected: dict[str, Any], headers: list[str],
              rows: Rows, *, body: bool = False, empty: bool = False) -> dict[str, Unique]:
    """Map, validate and write `rows`; the `unique` tables filled on the way are returned. `body`: write
    record and reject bodies for `merge`, and leave the error rate to it. `empty`: the input has no bytes
    at all, so no field can be missing a column."""
    pipe, schema = job.pipeline, job.schema
    outcome.detected, outcome.headers, outcome.header_key = detected, headers, header_key(headers)
    if job.previous_headers is not None and set(job.previous_headers) != set(headers):
        outcome.drift = {"added": [h for h in headers if h not in job.previous_headers],
                         "removed": [h for h in job.previous_headers if h not in headers]}
    chosen: Plan = plan(pipe, schema, headers, job.memory, job.reviewed)
    outcome.mapping = chosen.as_mapping()
    outcome.reasons = chosen.reasons()
    if chosen.unmapped_required and not empty:
        outcome.unmapped = [{"field": f, "configured": chosen.missing.get(f), "closest": c}
                            for f, c in chosen.unmapped_required.items()]
        parts = [f"{f} ({_configured(chosen, f)}closest headers: {', '.join(c) or 'none'})"
                 for f, c in chosen.unmapped_required.items()]
        outcome.status = "failed"
        outcome.error = ("unmapped_required_field",
                         f"{job.source_name}: required field(s) with no column: {'; '.join(parts)}")
        return {}
    row_fn = compile_row(pipe, schema, headers, chosen, job.span.rows if job.span else 0)
    warns = warnings_of(row_fn)  # stays empty unless a rule of the schema is a warning
    fields = [f.name for f in schema.fields]
    records = RecordWriter(out / f"records.{EXTENSIONS[pipe.output.format]}", pipe.output.format, fields,
                           body=body, ordered=all(f.type != FieldType.BOOLEAN for f in schema.fields))
    rejects = RejectWriter(out / "rejects.jsonl", out / "rejects.csv", headers, body=body)
    keep_invalid = pipe.egress == "all"
    json_input = detected.get("format") in ("json", "jsonl")  # only JSON has rows that cannot be read at all
    api_copy = (RecordWriter(out / "records.api.jsonl", "jsonl", fields, body=body)
                if pipe.output.format != "jsonl" else None)
    write: Callable[[dict[str, Any]], None] = records.write
    errors, warnings = outcome.errors, outcome.warnings
    if api_copy is not None:
        write = _both(records.write, api_copy.write)
    count = invalid = warned = 0
    try:
        for count, (number, cells) in enumerate(rows, 1):  # noqa: B007 - count is read after the loop
            unreadable = bad_row(cells) if json_input else None
            row_errors: Sequence[tuple[str | None, str, str]] | None
            if unreadable is None:
                record, row_errors = row_fn(cells)
                if row_errors is None:
                    write(record)
                    if warns:
                        warned += 1
                        warnings.extend((number, f, c, m) for f, c, m in warns[:MAX_ERRORS - len(warnings)])
                        warns.clear()
                    continue
                warns.clear()  # a rejected row's warnings: its errors say enough
            else:
                record, row_errors = {}, [(None, "unreadable_row", unreadable)]
            invalid += 1
            rejects.write(number, [{"field": f, "code": c, "message": m} for f, c, m in row_errors],
                          [] if unreadable else cells)
            errors.extend((number, f, c, m) for f, c, m in row_errors[:MAX_ERRORS - len(errors)])
            if keep_invalid and unreadable is None:
                write(record)
    except BaseException:
        records.discard()
        rejects.discard()
        if api_copy is not None:
            api_copy.discard()
        raise
    finally:
        outcome.rows, outcome.valid, outcome.invalid, outcome.warned = count, count - invalid, invalid, warned
    outcome.records_path = str(records.close())
    if api_copy is not None:
        outcome.records_jsonl_path = str(api_copy.close())
    outcome.rejects_path, csv_path = (str(p) for p in rejects.close())
    outcome.rejects_csv_path = csv_path
    if not body:
        if any(c == "unique" for _, _, c, _ in errors):
            _name_repeats(job, errors)
        _error_rate(job, outcome)
    return unique_tables(row_fn, schema)


def _name_repeats(job: Job, errors: list[tuple[int, str | None, str, str]]) -> None:
    """The kept `unique` errors say which row their value repeats: the first pass keeps only hashes (fast,
    small), so a second pass, made only for a file with repeats and only up to the last kept one, finds it."""
    wanted = {(r, f) for r, f, c, _ in errors if c == "unique"}
    last = max(r for r, _ in wanted)
    at = [0]
    found: dict[tuple[int, str | None], str] = {}
    detected, headers, rows = open_rows(Path(job.input_path), job.pipeline.format)
    json_input = detected.as_dict().get("format") in ("json", "jsonl")
    # the same headers and memory make the same plan as the first pass
    row_fn = compile_row(job.pipeline, job.schema, headers, plan(job.pipeline, job.schema, headers, job.memory),
                         at=at)
    with rows:
        for number, cells in rows:
            if number > last:
                break
            if json_input and bad_row(cells) is not None:
                continue
            at[0] = number
            for f, c, m in row_fn(cells)[1] or ():
                if c == "unique" and (number, f) in wanted:
                    found[number, f] = m
    errors[:] = [(r, f, c, found.get((r, f), m)) for r, f, c, m in errors]


def _configured(chosen: Plan, target: str) -> str:
    column = chosen.missing.get(target)
    return f"mapped to column {column!r}, which is not in the file's header; " if column is not None else ""


def _error_rate(job: Job, outcome: Outcome) -> None:
    pipe = job.pipeline
    if outcome.rows and outcome.invalid / outcome.rows > pipe.max_error_rate:
        outcome.status = "failed"
        outcome.error = ("too_many_errors", f"{job.source_name}: {outcome.invalid} of {outcome.rows} rows are invalid "
                                            f"({outcome.invalid / outcome.rows:.1%}, more than max_error_rate "
                                            f"{pipe.max_error_rate:.1%}); nothing is delivered")
    elif outcome.rows and not outcome.valid:
        # Even with max_error_rate 1.0 (the default): a file none of whose rows is usable is a broken file
        # (wrong columns, wrong format), not a good delivery of nothing.
        outcome.status = "failed"
        outcome.error = ("no_valid_rows", f"{job.source_name}: none of its {outcome.rows} rows is valid; "
                                          "nothing is delivered")


def _both(first: Callable[[dict[str, Any]], None], second: Callable[[dict[str, Any]], None]) -> Callable[[Any], None]:
    def write(record: dict[str, Any]) -> None:
        first(record)
        second(record)

    return write
