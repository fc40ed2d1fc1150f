"""The review loop (README, "Review"): what a person sees of a run in `needs_review` and what they decide.

`Reviews` holds every rule of it, for the HTTP API and the console alike: the input's first rows and the
mapping suggestions (`sample`), what a mapping would give (`preview`, changing nothing), and the
decision (`approve` with a mapping, optionally remembered for the connection and header set, or
`reject` with a message to the partner). Reading an input always happens in a worker process, as a
run's processing does; each decision is one conditional change of the run (so two reviewers cannot
both decide) with its audit entry, in one transaction.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from feedd import events, log
from feedd.config import Config
from feedd.config.values import Address, Pipeline, Schema
from feedd.errors import ConflictError, InvalidError, NotFoundError
from feedd.model import AuditAction, AuditEntry, Counts, Run, RunError, RunStatus, iso, utcnow
from feedd.pipeline import decision
from feedd.pipeline.process import SAMPLE_ROWS, Job, preview, sample
from feedd.pipeline.runner import effective, input_keys
from feedd.reports import place_decided_report
from feedd.spaces import Spaces
from feedd.store import Remembered, Store

T = TypeVar("T")
MAX_MESSAGE = 2000  # characters of a reviewer's message to the partner
_ANY = ("0.0.0.0", "::", "")


class Workers(Protocol):
    """What reviews need from the runner: work on an input in a worker process, and a wake-up."""

    async def in_worker(self, fn: Callable[..., T], *args: Any) -> T: ...

    def wake(self) -> None: ...


class WrongState(ConflictError):
    """The run is not in the state this needs (409)."""

    code = "wrong_state"


class InvalidReview(InvalidError):
    """A decision or mapping that does not fit the run (422); `details` locate each problem."""

    code = "invalid_review"


def base_url(config: Config, bound: Sequence[Address] = ()) -> str:
    """Where people reach the HTTP port: `http.public_url`, else the first address it listens on (as bound,
    when known), with this host's name in place of a wildcard address."""
    if config.http.public_url:
        return config.http.public_url
    addresses = list(bound) or list(config.http.listen)
    if not addresses:
        return ""
    first = addresses[0]
    host = socket.gethostname() if first.host in _ANY else first.host
    return f"{'https' if config.http.tls else 'http'}://{Address(host, first.port)}"


def review_path(run_id: str) -> str:
    return f"/ui/runs/{run_id}/review"


class Reviews:
    """The review service. `base` gives the base URL of links (see `base_url`)."""

    def __init__(
        self,
        config: Callable[[], Config],
        store: Store,
        workers: Workers | None,
        spaces: Spaces | None = None,
        base: Callable[[], str] | None = None,
        notify: Callable[[], None] = lambda: None,
    ) -> None:
        self._config = config
        self._store = store
        self._workers = workers
        self._spaces = spaces
        self._base = base or (lambda: base_url(config()))
        self._notify = notify  # events were queued: wake the event sender

    def review_url(self, run_id: str) -> str:
        """Where a person reviews the run (the console's review page)."""
        return self._base() + review_path(run_id)

    async def find(self, run_id: str) -> Run:
        run = await self._store.get_run(run_id)
        if run is None:
            raise NotFoundError(f"no run {run_id!r}")
        return run

    # Looking

    async def sample(self, run: Run, rows: int = SAMPLE_ROWS) -> dict[str, Any]:
        """The input's header row and first `rows` rows as read (`{headers, rows: [{row, cells}], detected,
        error}`), with what the pipeline's mapping would choose for these headers (`suggestions`: field ->
        `{source, reason, score}`; `unmapped`: required field -> `{configured, closest}`)."""
        pipe, schema = self._pipeline(run)
        await self._input_present(run)
        job = await self._job(run, pipe, schema, None)
        result = await self._in_worker(sample, job, rows)
        return {"runId": run.run_id, "status": str(run.status), **result}

    async def preview(
        self, run: Run, mapping: Mapping[str, Any] | None = None, max_error_rate: float | None = None
    ) -> dict[str, Any]:
        """What approving the run with this mapping would give, changing nothing: `{status, counts, mapping
        (field -> {source, reason, score}), errors (the first 100), error}`. The same code as a real run, in
        a worker, with its outputs written to a scratch folder that is deleted."""
        pipe, schema = self._pipeline(run)
        await self._input_present(run)
        decided = self._decision(run, pipe, schema, mapping, max_error_rate)
        result = await self._in_worker(preview, await self._job(run, pipe, schema, decided))
        result.pop("review", None)  # an approved run is never sent to review again
        result.pop("headers", None)
        return {"runId": run.run_id, **result}

    # Deciding

    async def approve(
        self,
        run: Run,
        actor: str,
        mapping: Mapping[str, Any] | None = None,
        remember: bool = False,
        max_error_rate: float | None = None,
    ) -> Run:
        """Queue the run again (`held` while its pipeline is inactive), to be processed with `mapping` over
        the configured one and with `max_error_rate` (by default the pipeline's, or 1.0 for a run held for
        `too_many_errors`: approving it accepts its valid rows). It then goes on like any run, and may still
        fail (the preview says how it would end). With `remember`, the mapping is kept for this connection
        and header set, and the next file with these headers maps by it (reason `remembered`)."""
        self._waiting(run)
        pipe, schema = self._pipeline(run)
        await self._input_present(run)
        decided = self._decision(run, pipe, schema, mapping, max_error_rate)
        chosen, _ = decision.apply(pipe, schema, decided)
        review = dict(run.meta.get("review") or {})
        review["decision"] = {
            **decided,
            "decision": "approve",
            "remember": remember,
            "actor": actor,
            "at": iso(utcnow()),
        }
        # An inactive pipeline keeps the approved run `held`, as it keeps new inputs, until it is switched on.
        active = (await self._store.pipeline_overrides()).get(pipe.name, pipe.active)
        again = replace(
            run,
            status=RunStatus.QUEUED if active else RunStatus.HELD,
            error=None,
            counts=Counts(),
            errors=(),
            started_at=None,
            finished_at=None,
            meta={**run.meta, "review": review},
        )
        remembered = self._remembered(run, chosen) if remember else None
        audit = self._audit(
            actor,
            AuditAction.APPROVE,
            run,
            {
                "status": str(again.status),
                "mapping": decided.get("mapping") or {},
                "remember": remember,
                "rememberedMapping": remembered.mapping if remembered else None,
                "maxErrorRate": decided.get("maxErrorRate"),
            },
        )
        if not await self._store.update_run(again, expect=RunStatus.NEEDS_REVIEW, remember=remembered, audit=audit):
            raise WrongState(f"run {run.run_id} was decided meanwhile; look again")
        log.get(run_id=run.run_id, connection=run.connection, pipeline=run.pipeline).info(
            "run.approved", actor=actor, remember=remember
        )
        if self._workers is not None:
            self._workers.wake()
        return again

    async def reject(self, run: Run, actor: str, message: str) -> Run:
        """Fail the run with `rejected_by_reviewer` and `message`, which the partner reads in its report."""
        self._waiting(run)
        message = message.strip()
        if not message:
            raise InvalidReview(
                "message: say why, for the partner",
                [{"path": "message", "message": "a message for the partner is required"}],
            )
        if len(message) > MAX_MESSAGE:
            raise InvalidReview(
                f"message: at most {MAX_MESSAGE} characters",
                [{"path": "message", "message": f"at most {MAX_MESSAGE} characters"}],
            )
        config = self._config()
        review = dict(run.meta.get("review") or {})
        review["decision"] = {"decision": "reject", "message": message, "actor": actor, "at": iso(utcnow())}
        failed = replace(
            run,
            status=RunStatus.FAILED,
            finished_at=utcnow(),
            deliveries=(),
            error=RunError("rejected_by_reviewer", message),
            meta={**run.meta, "review": review},
        )
        queued = events.make(config, "run.failed", failed.to_json())
        audit = self._audit(actor, AuditAction.REJECT, run, {"status": str(RunStatus.FAILED), "message": message})
        if not await self._store.update_run(failed, expect=RunStatus.NEEDS_REVIEW, events=queued, audit=audit):
            raise WrongState(f"run {run.run_id} was decided meanwhile; look again")
        if queued:
            self._notify()
        logger = log.get(run_id=run.run_id, connection=run.connection, pipeline=run.pipeline)
        logger.info("run.rejected", actor=actor)
        space = self._spaces.get(run.connection) if self._spaces is not None else None
        if space is not None:
            try:  # the decision stands whatever happens to its report (a full disk)
                space.used += await asyncio.to_thread(place_decided_report, config, failed, space.outbox)
            except OSError:
                logger.exception("run.report_failed")
        return failed

    # Helpers

    def _waiting(self, run: Run) -> None:
        if run.status is not RunStatus.NEEDS_REVIEW:
            raise WrongState(f"run {run.run_id} is {run.status}, not needs_review: there is nothing to decide")

    def _pipeline(self, run: Run) -> tuple[Pipeline, Schema]:
        config = self._config()
        pipe = effective(config, run)
        if pipe is None or pipe.schema not in config.schemas:
            raise ConflictError(
                f"run {run.run_id} has no pipeline in the config (it was {run.pipeline!r})", code="pipeline_removed"
            )
        return pipe, config.schemas[pipe.schema]

    async def _input_present(self, run: Run) -> None:
        if not await asyncio.to_thread(Path(run.spool_path).is_file):
            raise ConflictError(f"run {run.run_id}: its input is no longer in the spool", code="input_missing")

    def _decision(
        self, run: Run, pipe: Pipeline, schema: Schema, mapping: Mapping[str, Any] | None, max_error_rate: float | None
    ) -> dict[str, Any]:
        """The decision as stored on the run, checked against the schema and the input's header."""
        if max_error_rate is not None and not 0.0 <= max_error_rate <= 1.0:
            raise InvalidReview(
                "maxErrorRate: expected a number from 0 to 1",
                [{"path": "maxErrorRate", "message": "expected a number from 0 to 1"}],
            )
        review = run.meta.get("review")
        if max_error_rate is None and isinstance(review, dict) and review.get("reason") == "too_many_errors":
            max_error_rate = 1.0
        decided: dict[str, Any] = {"mapping": dict(mapping or {}), "maxErrorRate": max_error_rate}
        headers = run.meta.get("headers")
        try:
            decision.apply(pipe, schema, decided, headers if isinstance(headers, list) else None)
        except decision.InvalidDecision as exc:
            raise InvalidReview(f"the mapping does not fit: {exc}", exc.details) from None
        return decided

    def _remembered(self, run: Run, chosen: Pipeline) -> Remembered | None:
        """The run's mapping with the reviewer's columns in it, for this connection and header set."""
        key, headers = run.meta.get("header_key"), run.meta.get("headers")
        if not isinstance(key, str) or not isinstance(headers, list):
            return None
        present = set(headers)
        mapping = {t: s for t, s in run.mapping.items() if s in present}
        mapping.update({m.target: m.source for m in chosen.mappings if m.source is not None and m.source in present})
        return Remembered(run.connection, key, mapping)

    async def _job(self, run: Run, pipe: Pipeline, schema: Schema, decided: dict[str, Any] | None) -> Job:
        pipe, reviewed = decision.apply(pipe, schema, decided)
        key = run.meta.get("header_key")
        memory = await self._store.recall_mapping(run.connection, key) if isinstance(key, str) else None
        return Job(
            run.run_id,
            run.spool_path,
            run.source.name,
            pipe,
            schema,
            "",
            memory,
            reviewed=reviewed,
            approved=decided is not None,
            decrypt=input_keys(self._config(), run),
        )

    async def _in_worker(self, fn: Callable[..., T], *args: Any) -> T:
        if self._workers is None:
            raise ConflictError("this daemon runs no workers, so no input can be read", code="unavailable")
        return await self._workers.in_worker(fn, *args)

    def _audit(self, actor: str, action: AuditAction, run: Run, after: dict[str, Any]) -> AuditEntry:
        """A decision's audit entry, written with the run's change (and only if the run changed)."""
        found = run.meta.get("review")
        review: dict[str, Any] = found if isinstance(found, dict) else {}
        before = {"status": str(run.status), "reason": review.get("reason"), "details": review.get("details")}
        return AuditEntry(actor, action, "run", run.run_id, before=before, after=after)
