"""Partitions of the assets (UTC), their backfill batching, and key <-> time conversions."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from dagster import (
    BackfillPolicy,
    BetaWarning,
    DailyPartitionsDefinition,
    HourlyPartitionsDefinition,
    PreviewWarning,
)

from byoc_platform.events import FIRST_EVENT_TIME

# The first hour the platform can hold data for (ingestion refuses earlier events); backfills
# reach back to here.
PARTITIONS_START = FIRST_EVENT_TIME.date().isoformat()

HOURLY = HourlyPartitionsDefinition(start_date=f"{PARTITIONS_START}-00:00", timezone="UTC")
DAILY = DailyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC")

# Backfills batch up to a day of hours per run: one process (and one import of the checks'
# libraries) per 24 hours instead of per hour. Schedules and the sensor run single hours.
HOURS_PER_RUN = BackfillPolicy.multi_run(max_partitions_per_run=24)

HOUR_KEY_FORMAT = "%Y-%m-%d-%H:%M"  # HourlyPartitionsDefinition's keys: 2026-01-01-13:00
DAY_KEY_FORMAT = "%Y-%m-%d"


def hour_start(partition_key: str) -> datetime:
    return datetime.strptime(partition_key, HOUR_KEY_FORMAT).replace(tzinfo=UTC)


def hour_key(hour: datetime) -> str:
    return floor_hour(hour).strftime(HOUR_KEY_FORMAT)


def floor_hour(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.replace(minute=0, second=0, microsecond=0)


def day_start(partition_key: str) -> datetime:
    return datetime.strptime(partition_key, DAY_KEY_FORMAT).replace(tzinfo=UTC)


def day_key(moment: datetime | date) -> str:
    return moment.strftime(DAY_KEY_FORMAT)


def parse_hour(text: str) -> datetime:
    """An hour given by a user: ``2026-01-01T13``, ``2026-01-01T13:00``, or a partition key."""
    text = text.strip().replace(" ", "T")
    for fmt in ("%Y-%m-%dT%H", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", HOUR_KEY_FORMAT):
        try:
            parsed = datetime.strptime(text.removesuffix("Z"), fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
        if parsed != floor_hour(parsed):
            raise ValueError(f"{text!r} is not the start of an hour")
        return parsed
    raise ValueError(f"{text!r} is not an hour; expected e.g. 2026-01-01T13 (UTC)")


def ch_time(moment: datetime) -> str:
    """A UTC time as ClickHouse parses DateTime parameters."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def quietly(factory: Callable[..., Any], **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
    """``factory(**kwargs)`` as a decorator (e.g. ``asset``), without its beta/preview warnings.

    Partitioned asset checks (preview) and backfill policies (beta) are used on purpose here,
    with Dagster pinned exactly; the warnings would otherwise repeat in every run's log.
    """

    def apply(fn: Callable[..., Any]) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BetaWarning)
            warnings.simplefilter("ignore", PreviewWarning)
            return factory(**kwargs)(fn)

    return apply
