"""Usage periods: which reset window a moment falls in, for a reset period and an anchor.

A metered entitlement with a ``resetPeriod`` counts usage per window; the window is anchored
at the subscription's start (Stigg's usagePeriodAnchor) unless the entitlement names its own
anchor (``resetAnchorDay`` / ``resetAnchorHour`` / ``resetAnchorMonth``). Months shorter than
the anchor day clamp to their last day (an anchor on the 31st resets on Feb 28/29).
All times are UTC epoch seconds; windows are half-open ``[start, end)``.
"""

from __future__ import annotations

import calendar
import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

LIFETIME = (0, 0)  # the window of an entitlement that never resets


@dataclass(frozen=True, slots=True)
class Anchor:
    """The moment periods are measured from: month (YEAR), day (MONTH), weekday (WEEK), hour."""

    month: int = 1  # 1-12
    day: int = 1  # 1-31, clamped to the month's length
    weekday: int = 1  # ISO weekday 1 (Monday) - 7
    hour: int = 0  # 0-23

    @classmethod
    def from_datetime(cls, moment: datetime) -> Anchor:
        return cls(moment.month, moment.day, moment.isoweekday(), moment.hour)


def _clamped(year: int, month: int, day: int, hour: int) -> datetime:
    last = calendar.monthrange(year, month)[1]
    return datetime(year, month, min(day, last), hour, tzinfo=UTC)


def _add_months(year: int, month: int, delta: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + delta
    return index // 12, index % 12 + 1


def window(reset_period: str | None, anchor: Anchor, at: float) -> tuple[int, int]:
    """The ``(start, end)`` epoch seconds of the window containing ``at``."""
    if reset_period is None:
        return LIFETIME
    now = datetime.fromtimestamp(at, UTC)
    if reset_period == "HOUR":
        start = now.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    elif reset_period == "DAY":
        start = now.replace(hour=anchor.hour, minute=0, second=0, microsecond=0)
        if start > now:
            start -= timedelta(days=1)
        end = start + timedelta(days=1)
    elif reset_period == "WEEK":
        start = now.replace(hour=anchor.hour, minute=0, second=0, microsecond=0)
        start -= timedelta(days=(now.isoweekday() - anchor.weekday) % 7)
        if start > now:
            start -= timedelta(days=7)
        end = start + timedelta(days=7)
    elif reset_period == "MONTH":
        start = _clamped(now.year, now.month, anchor.day, anchor.hour)
        year, month = now.year, now.month
        if start > now:
            year, month = _add_months(year, month, -1)
            start = _clamped(year, month, anchor.day, anchor.hour)
        end = _clamped(*_add_months(year, month, 1), anchor.day, anchor.hour)
    elif reset_period == "YEAR":
        year = now.year
        start = _clamped(year, anchor.month, anchor.day, anchor.hour)
        if start > now:
            year -= 1
            start = _clamped(year, anchor.month, anchor.day, anchor.hour)
        end = _clamped(year + 1, anchor.month, anchor.day, anchor.hour)
    else:
        raise ValueError(f"unknown reset period {reset_period!r}")
    return int(start.timestamp()), int(end.timestamp())


CALENDAR = Anchor()  # budgets use calendar periods: 1 Jan, the 1st, Monday, midnight UTC


def parse_time(value: str) -> float:
    """ISO-8601 (``Z`` or offset; naive means UTC) to epoch seconds."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@functools.lru_cache(maxsize=4096)
def iso(epoch_s: float) -> str:
    """Epoch seconds to ISO-8601 UTC with a ``Z``, as Stigg's APIs write times.

    Cached: a check's answer carries several times that rarely change (period anchor, start
    and end, the entitlement's update time), and formatting them was ~10 % of a REST check's
    CPU (py-spy, docs/benchmarks-enforcement.md)."""
    text = datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")
