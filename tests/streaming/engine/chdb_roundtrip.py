"""Run in a subprocess by test_clickhouse_rows.py (chdb allows one data path per process).

Inserts the engine's drained rows (every early-fired snapshot included) into the real
warehouse schema on an embedded ClickHouse, and prints what ``FINAL`` reads back, as JSON.
"""

from __future__ import annotations

import json
import sys

import clickhouse_connect
import msgspec

from byoc_platform.warehouse_schema import apply_migrations
from streaming.engine import EVENT_COLUMNS, LATE_HOUR_COLUMNS, MINUTE_COLUMNS, clickhouse_row
from streaming.engine.rows import EventRow, LateHourRow, MinuteRow


def main(data_dir: str, rows_file: str) -> None:
    rows = json.loads(open(rows_file).read())  # noqa: SIM115 - a one-shot script
    client = clickhouse_connect.get_client(dsn=f"chdb://{data_dir}")
    apply_migrations(client, "byoc")
    for table, struct, columns in (
        ("usage_events", EventRow, EVENT_COLUMNS),
        ("usage_minute", MinuteRow, MINUTE_COLUMNS),
        ("late_hours", LateHourRow, LATE_HOUR_COLUMNS),
    ):
        # several inserts, as a processor flushing every drain would do
        batch = [clickhouse_row(msgspec.convert(r, struct)) for r in rows[table]]
        for start in range(0, len(batch), 500):
            client.insert(f"byoc.{table}", batch[start : start + 500], column_names=columns)
    minute = client.query(
        "SELECT environment, customer_id, resource_id, event_name, dimensions_key, "
        "toUnixTimestamp(minute) * 1000, metric, late_key, count, sum, min, max, "
        "toUnixTimestamp64Milli(first_event_time), toUnixTimestamp64Milli(last_event_time), "
        "version, labels FROM byoc.usage_minute FINAL"
    ).result_rows
    events = client.query(
        "SELECT environment, customer_id, idempotency_key, toUnixTimestamp64Milli(event_time),"
        " toUnixTimestamp64Milli(ingest_time), labels, `values`, dimensions"
        " FROM byoc.usage_events FINAL"
    ).result_rows
    hours = client.query(
        "SELECT environment, toUnixTimestamp(hour) * 1000, toUnixTimestamp64Milli(recorded_at)"
        " FROM byoc.late_hours FINAL"
    ).result_rows
    print(json.dumps({"usage_minute": minute, "usage_events": events, "late_hours": hours}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
