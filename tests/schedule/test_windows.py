"""The scheduling functions of expected arrivals: cron times in a time zone (daylight-saving days included),
the windows they cut time into, and what counts as an arrival."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from feedd.arrivals import Received, closed, counts, due_after, judge, notice_name, window
from feedd.config.values import Expect, Pipeline


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def dues(expect: Expect, start: datetime, n: int) -> list[datetime]:
    out, cursor = [], start
    for _ in range(n):
        nxt = due_after(expect, cursor)
        assert nxt is not None
        out.append(nxt)
        cursor = nxt
    return out


def test_a_spring_forward_day_runs_a_skipped_time_once_at_the_jump() -> None:
    # Berlin, 2026-03-29: clocks go from 02:00 CET to 03:00 CEST; 02:30 does not exist that day
    expect = Expect("30 2 * * *", "Europe/Berlin", grace=600)
    got = dues(expect, utc(2026, 3, 27, 12), 3)
    assert got == [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)]
    # the window of the short day runs from the day before's deadline to its own: 23 hours less 30 minutes
    w = window(expect, got[1])
    assert w.opens == utc(2026, 3, 28, 1, 40) and w.deadline == utc(2026, 3, 29, 1, 10)


def test_a_fall_back_day_runs_a_repeated_time_once() -> None:
    # Berlin, 2026-10-25: clocks go from 03:00 CEST back to 02:00 CET; 02:30 happens twice, judged once
    expect = Expect("30 2 * * *", "Europe/Berlin", grace=600)
    got = dues(expect, utc(2026, 10, 23, 12), 3)
    assert got == [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]
    # the day after the change is 25 hours long, and its window says so
    w = window(expect, got[2])
    assert w.deadline - w.opens == timedelta(hours=25)


def test_an_hourly_schedule_keeps_every_real_hour_across_the_fall_back() -> None:
    expect = Expect("0 * * * *", "America/New_York")
    got = dues(expect, utc(2026, 11, 1, 4, 30), 4)  # 00:30 EDT; at 02:00 EDT clocks go back to 01:00 EST
    assert got == [utc(2026, 11, 1, 5), utc(2026, 11, 1, 6), utc(2026, 11, 1, 7), utc(2026, 11, 1, 8)]


def test_windows_tile_time_so_one_file_answers_one_window() -> None:
    expect = Expect("0 6 * * 1-5", "UTC", grace=1800)
    windows, skipped = closed(expect, utc(2026, 11, 30), utc(2026, 12, 3, 6, 30))  # Monday .. Thursday 06:30
    assert not skipped
    assert [w.expected_by for w in windows] == [
        utc(2026, 11, 30, 6),
        utc(2026, 12, 1, 6),
        utc(2026, 12, 2, 6),
        utc(2026, 12, 3, 6),
    ]
    for before, after in itertools.pairwise(windows):
        assert before.deadline == after.opens
    # Monday's window opens at Friday's deadline: the weekend belongs to Monday
    assert windows[0].opens == utc(2026, 11, 27, 6, 30)


def test_a_long_stop_judges_at_most_the_newest_windows() -> None:
    expect = Expect("* * * * *", "UTC", grace=5)
    windows, skipped = closed(expect, utc(2026, 1, 1), utc(2026, 1, 1, 3), most=100)
    assert len(windows) == 100 and skipped
    assert windows[-1].expected_by == utc(2026, 1, 1, 2, 59)


def test_a_window_not_yet_past_its_grace_is_not_judged() -> None:
    expect = Expect("* * * * *", "UTC", grace=5)
    assert closed(expect, utc(2026, 1, 1), utc(2026, 1, 1, 0, 1, 4))[0] == []
    assert len(closed(expect, utc(2026, 1, 1), utc(2026, 1, 1, 0, 1, 5))[0]) == 1


@pytest.mark.parametrize(
    ("status", "enough", "verdict"),
    [
        ("completed", True, True),
        ("delivered", True, True),
        ("completed", False, False),
        ("failed", True, False),
        ("queued", True, None),
        ("processing", False, None),
        ("held", False, True),
        ("needs_review", False, True),
    ],
)
def test_what_counts_as_an_arrival(status: str, enough: bool, verdict: bool | None) -> None:
    assert counts(status, enough) is verdict


def test_judge_waits_for_undecided_runs_and_names_the_last_arrival() -> None:
    t = utc(2026, 1, 1)
    assert judge([Received("failed", True, 3, t)]) == (False, False, None)
    assert judge([Received("processing", True, 1, t)]) == (False, True, None)
    got = judge(
        [
            Received("completed", True, 1, t),
            Received("delivered", True, 2, t + timedelta(hours=1)),
            Received("failed", True, 1, t + timedelta(hours=2)),
        ]
    )
    assert got == (True, False, t + timedelta(hours=1))


def test_notice_names_carry_the_time_only_when_the_day_has_several() -> None:
    pipe = Pipeline("acme-hr", "acme", "employee")
    daily = Expect("0 6 * * *", "Europe/Berlin")
    assert notice_name(pipe, daily, window(daily, utc(2026, 12, 3, 5))) == "MISSING-acme-hr-2026-12-03.txt"
    hourly = Expect("0 * * * *", "Europe/Berlin")
    assert notice_name(pipe, hourly, window(hourly, utc(2026, 12, 3, 5))) == "MISSING-acme-hr-2026-12-03T0600.txt"


@pytest.mark.parametrize("start", [utc(2026, 3, 27, 12), utc(2026, 10, 23, 12)])
def test_windows_judged_after_a_stop_are_the_same_across_a_daylight_saving_change(start: datetime) -> None:
    expect = Expect("30 2 * * *", "Europe/Berlin", grace=600)
    forward = dues(expect, start, 4)
    windows, skipped = closed(expect, start, forward[-1] + timedelta(seconds=600))
    assert [w.expected_by for w in windows] == forward and not skipped
