"""Expected arrivals (README, "Expected arrivals"): the windows a pipeline's `expect` cuts time into, what
counts as an arrival in one, and the words of a missed one. Pure functions; the schedule loop runs them.

Windows tile time without overlap: the window of the cron time `D` holds what was received after the
previous cron time's deadline and up to `D + grace`. A file received within the grace of one window belongs
to that window alone, so one file never answers two days. A run counts as an arrival when:

- it `completed` or was `delivered` with at least `min_rows` valid rows, or with no rows at all (an
  accepted empty file says "nothing today");
- or it is in a state where a person or the operator decides (`held`, review): the file came;
- a `failed` run never counts (a duplicate, an empty file not allowed, a file that could not be used);
- a `queued` or `processing` run is not decided yet: its window waits for it (up to PENDING_WAIT).

Cron times are read by cronsim in the pipeline's time zone, with Debian cron's rules on daylight-saving days:
a time skipped by a spring-forward runs when the clock jumps (02:30 -> 03:00), a time repeated by a
fall-back runs once (its first occurrence).
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cronsim import CronSim

from feedd.config.values import Expect, Pipeline
from feedd.model import ArrivalState, Missed, Received, RunStatus, iso

if TYPE_CHECKING:
    from feedd.store import Store

__all__ = ["ArrivalState", "Missed", "Received", "Window"]

MAX_CATCHUP = 100  # windows judged at most after a long stop; older ones are skipped (and logged)
PENDING_WAIT = 3600.0  # seconds past a deadline a window waits for its undecided runs; then they count
_UNDECIDED = (RunStatus.QUEUED, RunStatus.PROCESSING)
_PROCESSED = (RunStatus.COMPLETED, RunStatus.DELIVERED)


@dataclass(frozen=True, slots=True)
class Window:
    """What must arrive by when: received in (`opens`, `deadline`], for the cron time `expected_by`."""

    expected_by: datetime
    opens: datetime
    deadline: datetime


def zone(expect: Expect) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(expect.timezone)


def _utc(dt: datetime) -> datetime:
    return dt.astimezone(UTC)


def due_after(expect: Expect, after: datetime) -> datetime | None:
    """The first cron time strictly after `after` (UTC), or None when the expression never matches again."""
    try:
        return _utc(next(CronSim(expect.cron, after.astimezone(zone(expect)))))
    except StopIteration:
        return None


def due_before(expect: Expect, before: datetime) -> datetime | None:
    """The last cron time strictly before `before` (UTC)."""
    try:
        return _utc(next(CronSim(expect.cron, before.astimezone(zone(expect)), reverse=True)))
    except StopIteration:
        return None


def window(expect: Expect, due: datetime) -> Window:
    grace = timedelta(seconds=expect.grace)
    previous = due_before(expect, due)
    opens = (previous + grace) if previous is not None else datetime.min.replace(tzinfo=UTC)
    return Window(due, opens, due + grace)


def closed(expect: Expect, after: datetime, now: datetime, most: int = MAX_CATCHUP) -> tuple[list[Window], bool]:
    """The windows whose cron time is after `after` and whose deadline has passed by `now`, oldest first: at
    most the `most` newest of them, and whether older ones were left out. Walked back from `now`, so a long
    stop of a frequent schedule costs `most` steps, not one per window missed."""
    grace = timedelta(seconds=expect.grace)
    start = now - grace
    if start.microsecond == 0:  # cronsim steps back from the whole second below: `start` itself may be due
        start += timedelta(microseconds=1)
    dues: list[datetime] = []
    skipped = False
    walk = CronSim(expect.cron, start.astimezone(zone(expect)), reverse=True)
    for local in walk:
        due = _utc(local)
        if due <= after:
            break
        if len(dues) == most:
            skipped = True
            break
        dues.append(due)
    return [window(expect, d) for d in reversed(dues)], skipped


def counts(status: str, enough: bool) -> bool | None:
    """Whether runs in `status` count as an arrival; None while undecided."""
    if status in _UNDECIDED:
        return None
    if status == RunStatus.FAILED:
        return False
    if status in _PROCESSED:
        return enough
    return True  # held, or waiting for a person: the file came


def judge(groups: Iterable[Received]) -> tuple[bool, bool, datetime | None]:
    """(arrived, undecided, last arrival) for a window's runs."""
    arrived = undecided = False
    last: datetime | None = None
    for g in groups:
        verdict = counts(g.status, g.enough)
        if verdict is None:
            undecided = True
        elif verdict:
            arrived = True
            last = g.last_at if last is None or g.last_at > last else last
    return arrived, undecided, last


def notice_name(pipe: Pipeline, expect: Expect, w: Window) -> str:
    """`MISSING-<pipeline>-<date>.txt`, the date in the pipeline's time zone; with the time of day
    (`2026-03-02T0600`) when the schedule has more than one time on that date."""
    tz = zone(expect)
    local = w.expected_by.astimezone(tz)
    day = local.date()
    several = any(
        other is not None and other.astimezone(tz).date() == day
        for other in (due_before(expect, w.expected_by), due_after(expect, w.expected_by))
    )
    stamp = local.strftime("%Y-%m-%dT%H%M") if several else day.isoformat()
    return f"MISSING-{pipe.name}-{stamp}.txt"


def _local(dt: datetime | None, tz: zoneinfo.ZoneInfo) -> str:
    if dt is None or dt.year <= 1:
        return "-"
    return f"{dt.astimezone(tz):%Y-%m-%d %H:%M} {tz.key} ({iso(dt)})"


def notice_text(pipe: Pipeline, expect: Expect, w: Window, last_arrival: datetime | None) -> str:
    """The short plain-text notice a partner finds in its outbox."""
    tz = zone(expect)
    names = ", ".join(pipe.match) or "-"
    return (
        f"No file arrived for the feed '{pipe.name}'.\n"
        f"\n"
        f"Expected by: {_local(w.expected_by, tz)}\n"
        f"Waited until: {_local(w.deadline, tz)}\n"
        f"Looked at files received after: {_local(w.opens, tz)}\n"
        f"Last file received for this feed: {_local(last_arrival, tz) if last_arrival else 'none yet'}\n"
        f"File names taken for this feed: {names}\n"
        f"\n"
        f"What to do: upload the file into inbox/ as usual. If there was nothing to send, an empty file says\n"
        f"'nothing today' when we accept empty files for this feed; ask us if unsure.\n"
    )


def view(expect: Expect, state: ArrivalState | None, last_at: datetime | None, now: datetime) -> dict[str, Any]:
    """`arrivals` as `GET /pipelines/{name}` shows it."""
    nxt = due_after(expect, now)
    return {
        "lastAt": iso(last_at),
        "nextDueAt": iso(nxt),
        "missed": [m.to_json() for m in (state.missed if state else ())],
        "cron": expect.cron,
        "timezone": expect.timezone,
        "grace": expect.grace,
    }


async def last_arrival(store: Store, pipe: Pipeline, expect: Expect, until: datetime | None = None) -> datetime | None:
    """When the newest run that counts as an arrival was received (up to `until`)."""
    return judge(await store.received(pipe.name, None, until, expect.min_rows))[2]


async def shown(store: Store, pipe: Pipeline, now: datetime) -> dict[str, Any] | None:
    """The pipeline's `arrivals` for the API, or None when it expects nothing."""
    if pipe.expect is None:
        return None
    state = await store.arrival_state(pipe.name)
    return view(pipe.expect, state, await last_arrival(store, pipe, pipe.expect), now)
