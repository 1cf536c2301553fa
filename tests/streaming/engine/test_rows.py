"""Row structs match the warehouse contract column for column."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from byoc_platform.warehouse_schema import migrations
from streaming.engine import (
    EVENT_COLUMNS,
    LATE_HOUR_COLUMNS,
    MINUTE_COLUMNS,
    LateHourRow,
    clickhouse_row,
)


def table_columns(table: str) -> tuple[str, ...]:
    ddl = next(s for s in migrations("db") if f"db.{table} (" in s)
    body = ddl.split("(", 1)[1].split("ENGINE")[0]
    return tuple(re.findall(r"^\s*`?(\w+)`?\s+\w", body, flags=re.M))


def test_columns_are_the_tables_columns_in_order() -> None:
    assert table_columns("usage_events") == EVENT_COLUMNS
    assert table_columns("usage_minute") == MINUTE_COLUMNS
    assert table_columns("late_hours") == LATE_HOUR_COLUMNS


def test_clickhouse_row_converts_milliseconds_to_utc_datetimes() -> None:
    row = clickhouse_row(LateHourRow("prod", 1_793_610_000_000, 1_793_613_480_123))
    assert row == [
        "prod",
        datetime(2026, 11, 2, 9, tzinfo=UTC),
        datetime(2026, 11, 2, 9, 58, 0, 123000, tzinfo=UTC),
    ]
