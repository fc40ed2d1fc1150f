"""Runs per day by status as a small stacked bar chart: the numbers an inline SVG template draws.

Colours are by status and each bar carries a text title (a tooltip, and what a screen reader reads); the
table beside the chart on the page says the same in words.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# Drawn bottom up in this order; anything else (queued, processing, held, ...) is "other".
STATUSES = ("delivered", "completed", "needs_review", "failed", "other")
COLOURS = {"delivered": "#2e7d32", "completed": "#66a3d2", "needs_review": "#b8860b", "failed": "#c62828",
           "other": "#9e9e9e"}
HEIGHT = 80  # px of the tallest bar
BAR = 18  # px per day, gap included


@dataclass(frozen=True, slots=True)
class Segment:
    status: str
    colour: str
    y: int
    height: int


@dataclass(frozen=True, slots=True)
class Bar:
    day: str
    x: int
    total: int
    title: str
    segments: tuple[Segment, ...]


@dataclass(frozen=True, slots=True)
class Chart:
    bars: tuple[Bar, ...]
    width: int
    height: int
    peak: int
    legend: tuple[tuple[str, str], ...]


def first_day(now: datetime, days: int) -> datetime:
    """Midnight UTC of the chart's first day."""
    start = now.astimezone(UTC) - timedelta(days=days - 1)
    return start.replace(hour=0, minute=0, second=0, microsecond=0)


def runs_per_day(stats: list[tuple[str, str, int]], now: datetime, days: int) -> Chart:
    """`stats` as the store's `runs_per_day` gives them: (day, status, runs)."""
    start = first_day(now, days)
    names = [(start + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(days)]
    counts: dict[str, dict[str, int]] = {d: {} for d in names}
    for day, status, n in stats:
        if day in counts:
            key = status if status in STATUSES else "other"
            counts[day][key] = counts[day].get(key, 0) + n
    peak = max((sum(c.values()) for c in counts.values()), default=0)
    bars = []
    for i, day in enumerate(names):
        by = counts[day]
        total = sum(by.values())
        y = HEIGHT
        segments = []
        for status in STATUSES:
            n = by.get(status, 0)
            if not n:
                continue
            h = max(1, round(n / peak * HEIGHT)) if peak else 0
            y -= h
            segments.append(Segment(status, COLOURS[status], y, h))
        title = f"{day}: {total} runs" + "".join(f", {by[s]} {s}" for s in STATUSES if by.get(s))
        bars.append(Bar(day, i * BAR, total, title, tuple(segments)))
    return Chart(tuple(bars), days * BAR, HEIGHT, peak, tuple((s, COLOURS[s]) for s in STATUSES))
