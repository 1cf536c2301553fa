"""Usage windows: every reset period, anchors, month-end clamping, half-open bounds."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from enforcement.periods import Anchor, iso, parse_time, window


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def bounds(period: str | None, anchor: Anchor, *at: int) -> tuple[str, str]:
    start, end = window(period, anchor, ts(*at))
    return iso(start), iso(end)


def test_no_reset_period_is_one_lifetime_window() -> None:
    assert window(None, Anchor(), ts(2026, 5, 5)) == (0, 0)


def test_hour_window() -> None:
    assert bounds("HOUR", Anchor(), 2026, 3, 1, 10, 59, 59) == (
        "2026-03-01T10:00:00.000Z",
        "2026-03-01T11:00:00.000Z",
    )


def test_day_window_with_anchor_hour() -> None:
    anchor = Anchor(hour=6)
    assert bounds("DAY", anchor, 2026, 3, 1, 5, 0) == (
        "2026-02-28T06:00:00.000Z",
        "2026-03-01T06:00:00.000Z",
    )
    assert bounds("DAY", anchor, 2026, 3, 1, 6, 0) == (
        "2026-03-01T06:00:00.000Z",
        "2026-03-02T06:00:00.000Z",
    )


def test_week_window_on_anchor_weekday() -> None:
    # 2026-03-04 is a Wednesday; anchor Friday (5) -> the window started Friday 2026-02-27.
    assert bounds("WEEK", Anchor(weekday=5), 2026, 3, 4, 12) == (
        "2026-02-27T00:00:00.000Z",
        "2026-03-06T00:00:00.000Z",
    )
    assert bounds("WEEK", Anchor(weekday=3), 2026, 3, 4, 0) == (
        "2026-03-04T00:00:00.000Z",
        "2026-03-11T00:00:00.000Z",
    )


def test_month_window_clamps_the_anchor_day() -> None:
    anchor = Anchor(day=31)
    assert bounds("MONTH", anchor, 2026, 2, 15) == (
        "2026-01-31T00:00:00.000Z",
        "2026-02-28T00:00:00.000Z",
    )
    assert bounds("MONTH", anchor, 2026, 2, 28, 0, 0, 1) == (
        "2026-02-28T00:00:00.000Z",
        "2026-03-31T00:00:00.000Z",
    )
    assert bounds("MONTH", Anchor(day=1), 2026, 12, 31, 23) == (
        "2026-12-01T00:00:00.000Z",
        "2027-01-01T00:00:00.000Z",
    )


def test_year_window_anchored_on_a_date() -> None:
    anchor = Anchor(month=7, day=15)
    assert bounds("YEAR", anchor, 2026, 3, 1) == (
        "2025-07-15T00:00:00.000Z",
        "2026-07-15T00:00:00.000Z",
    )
    assert bounds("YEAR", Anchor(month=2, day=29), 2027, 6, 1) == (
        "2027-02-28T00:00:00.000Z",
        "2028-02-29T00:00:00.000Z",
    )


@pytest.mark.parametrize("period", ["HOUR", "DAY", "WEEK", "MONTH", "YEAR"])
def test_windows_are_half_open_and_contiguous(period: str) -> None:
    anchor = Anchor(month=3, day=30, weekday=2, hour=7)
    at = ts(2026, 1, 31, 23, 30)
    start, end = window(period, anchor, at)
    assert start <= at < end
    assert window(period, anchor, end)[0] == end  # the next window starts where this ends
    assert window(period, anchor, end - 1) == (start, end)


def test_parse_time_accepts_z_offsets_and_naive_utc() -> None:
    assert parse_time("2026-01-01T00:00:00Z") == ts(2026, 1, 1)
    assert parse_time("2026-01-01T01:00:00+01:00") == ts(2026, 1, 1)
    assert parse_time("2026-01-01T00:00:00") == ts(2026, 1, 1)
