"""The dispatcher: every pending delivery of every completed run, to its destination, with retries.

Deliveries are rows in the store (`pending | delivered | failed`, attempts, last error, next attempt),
so a restart resumes them. Each delivery is its own task: a destination that hangs or fails never holds
up another. A failure is retried with exponential backoff and jitter (`Retry-After` honoured) up to the
destination's `max_attempts` (default 10); a permanent refusal (410, 4xx, a wrong host key) fails at
once. A run becomes `delivered` when all of its deliveries are, in the same transaction as the last one,
with its `run.delivered` event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from feedd import events, failpoints, log, metrics, pgp
from feedd.config import Config, DestinationType
from feedd.config.values import Destination
from feedd.delivery.local import place, place_outbox
from feedd.delivery.targets import GoneError, PermanentDeliveryError, Shipment, send_s3, send_sftp, send_webhook
from feedd.due import DueWork
from feedd.errors import RetryableDeliveryError
from feedd.model import Delivery, DeliveryStatus, Run, RunStatus, utcnow
from feedd.spaces import Spaces
from feedd.store import Store

MAX_IN_FLIGHT = 32
ATTEMPT_TIMEOUT = 900.0  # one attempt at one destination, whatever its kind


class Dispatcher(DueWork[Delivery]):
    name = "delivery"
    max_in_flight = MAX_IN_FLIGHT

    def __init__(self, config: Callable[[], Config], store: Store, spaces: Spaces,
                 notify: Callable[[], None] = lambda: None, owner: str | None = None) -> None:
        super().__init__(store, owner=owner)
        self._config = config
        self._spaces = spaces
        self._notify = notify  # events were queued: the event sender should look

    async def due(self) -> list[tuple[Hashable, Delivery]]:
        due = await self._store.due_deliveries(utcnow(), limit=MAX_IN_FLIGHT * 2, owner=self.owner)
        return [((d.run_id, d.destination), d) for d in due]

    async def handle(self, delivery: Delivery) -> None:
        await self._attempt(delivery)

    async def _attempt(self, delivery: Delivery) -> None:
        run = await self._store.get_run(delivery.run_id)
        if run is None:
            return
        logger = log.get(run_id=run.run_id, connection=run.connection, pipeline=run.pipeline,
                         destination=delivery.destination)
        attempts = delivery.attempts + 1
        dest = _destination(self._config(), run, delivery.destination)
        try:
            if dest is None:
                raise PermanentDeliveryError(f"destination {delivery.destination!r} is no longer in the pipeline")
            if dest.url and (why := (await self._store.disabled_targets()).get(dest.url)) is not None:
                raise PermanentDeliveryError(f"{dest.url} is disabled ({why}); retrying the run enables it again")
            metrics.DELIVERY_ATTEMPTS.labels(str(dest.type)).inc()
            async with asyncio.timeout(ATTEMPT_TIMEOUT):
                await self._send(run, dest)
            failpoints.hit("delivery.before_done")
        except Exception as exc:
            if dest is not None:
                metrics.DELIVERY_FAILURES.labels(str(dest.type)).inc()
            permanent = not isinstance(exc, RetryableDeliveryError | OSError | TimeoutError)
            if isinstance(exc, GoneError) and dest is not None and dest.url:
                await self._store.disable_target(dest.url, f"410 Gone at {utcnow():%Y-%m-%d %H:%M} UTC")
                logger.warning("delivery.webhook_disabled", url=dest.url, reason="410 Gone")
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            if permanent or dest is None or attempts >= dest.max_attempts:
                logger.warning("delivery.failed", attempts=attempts, error=message)
                failed = replace(delivery, status=DeliveryStatus.FAILED, attempts=attempts, last_error=message,
                                 next_attempt_at=None)
                await self._store.save_delivery(failed, self.owner)
                await self._settle(run.run_id)
                return
            wait = events.backoff(attempts, getattr(exc, "retry_after", None))
            logger.info("delivery.retry", attempts=attempts, error=message, retry_in=round(wait, 1))
            await self._store.save_delivery(replace(delivery, attempts=attempts, last_error=message,
                                                    next_attempt_at=utcnow() + timedelta(seconds=wait)), self.owner)
            return
        logger.info("delivery.done", attempts=attempts)
        done = replace(delivery, status=DeliveryStatus.DELIVERED, attempts=attempts, last_error=None,
                       delivered_at=utcnow(), next_attempt_at=None)
        if not await self._settle(run.run_id, done):
            await self._store.save_delivery(done, self.owner)
            await self._settle(run.run_id)  # another delivery of the run may have finished meanwhile

    async def _send(self, run: Run, dest: Destination) -> None:
        records = Path(run.meta["records"])
        shipment = Shipment(run.run_id, dest, records, Path(run.meta.get("records_jsonl") or records),
                            run.meta.get("output_name") or records.name)
        if dest.type is DestinationType.DIRECTORY:
            assert dest.path is not None
            await asyncio.to_thread(place, records, dest.path, shipment.filename)
        elif dest.type is DestinationType.OUTBOX:
            space = self._spaces.get(run.connection)
            if space is None:
                raise PermanentDeliveryError(f"connection {run.connection!r} has no space")
            placed = await asyncio.to_thread(place_outbox, records, space.outbox, shipment.filename,
                                             pgp.sealing(self._config(), run.connection))
            space.used += placed.stat().st_size
        elif dest.type is DestinationType.WEBHOOK:
            assert self._session is not None
            await send_webhook(self._session, shipment)
        elif dest.type is DestinationType.S3:
            await send_s3(shipment)
        else:
            await send_sftp(shipment)

    async def _settle(self, run_id: str, done: Delivery | None = None) -> bool:
        """Mark the run `delivered` (with its event) if all its deliveries are, counting `done`, which is
        then saved in the same transaction: nobody ever sees every delivery done and the run not."""
        run = await self._store.get_run(run_id)
        if run is None or run.status is not RunStatus.COMPLETED or not run.deliveries:
            return False
        deliveries = tuple(done if done is not None and d.destination == done.destination else d
                           for d in run.deliveries)
        if not all(d.status is DeliveryStatus.DELIVERED for d in deliveries):
            return False
        delivered = replace(run, status=RunStatus.DELIVERED, deliveries=deliveries)
        queued = events.make(self._config(), "run.delivered", delivered.to_json())
        if not await self._store.update_run(delivered, expect=RunStatus.COMPLETED, events=queued,
                                            deliveries=[done] if done is not None else []):
            return False
        log.get(run_id=run.run_id, connection=run.connection, pipeline=run.pipeline).info("run.delivered")
        if queued:
            self._notify()
        return True


def _destination(config: Config, run: Run, key: str) -> Destination | None:
    pipe = config.pipelines.get(run.pipeline or "")
    return next((d for d in pipe.destinations if d.key == key), None) if pipe else None
