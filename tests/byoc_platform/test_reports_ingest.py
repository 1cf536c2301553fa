"""ClickHouse's ingestion of usage.reports (stream.engine = "flink"), end to end in the real
ClickHouse engine (the test warehouse, chdb).

In a cluster a Kafka-engine queue reads each usage.reports record whole (JSONAsString) and views
split it into usage_reports rows, mark the late hours and log what does not decode
(byoc_platform.warehouse_cluster). chdb cannot run the Kafka engine, so the queue here is a
Null-engine table with the same column plus the engine's virtual columns as ordinary ones, and
the views are the deployed views byte for byte (test_clickhouse_ingest.py holds them equal). It
is fed what the runtime API produces: encode_report_batch output, several records per insert as
the engine inserts a block of messages, through the same JSONAsString format.
"""

from __future__ import annotations

import json
import random
import re
import struct
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from byoc_platform.events import (
    MAX_FRACTIONAL_USAGE,
    UsageReport,
    UsageReportBatch,
    encode_report_batch,
    epoch_ms,
    round_usage_value,
)
from byoc_platform.warehouse_cluster import (
    ERRORS_TABLE,
    REPORT_RECORD,
    REPORTS_FORMAT,
    REPORTS_TABLE,
    errors_view_name,
    late_hours_view_name,
    queue_table,
    view_name,
)
from byoc_platform.warehouse_schema import USAGE_REPORTS_COLUMNS
from tests.stack_fixtures import stand_in_ingest

pytestmark = [pytest.mark.integration]

DB = "reports_ingest_e2e"
QUEUE = f"{DB}.{queue_table(REPORTS_TABLE)}"
HOUR_MS = 3_600_000


def _ms(text: str) -> int:
    return epoch_ms(datetime.fromisoformat(text).replace(tzinfo=UTC))


RECEIVED = _ms("2025-03-10T12:34:56.789")
ON_TIME = UsageReportBatch(
    v=1,
    environment="prod",
    receivedAt=RECEIVED,
    usages=[
        UsageReport(
            id="m-plain",
            customerId="c-1",
            featureId="f-api-calls",
            value=12345.67891,
            updateBehavior="DELTA",
            createdAt=RECEIVED - 1_000,
        ),
        UsageReport(
            id="m-full",
            customerId="c-1",
            featureId="f-seats",
            value=9007199254740991.0,  # 2^53-1, the largest whole value accepted
            updateBehavior="SET",
            createdAt=RECEIVED - 60_000,
            idempotencyKey="k-full",
            resourceId="r-1",
            dimensions={"region": "eu-west", "gpu": True, "n": 3, "ratio": 2.5, "q": 'a"b\\c'},
        ),
    ],
)
# Received 5 minutes later, back-dated into 09:00: that hour must be rolled up again.
BACK_DATED = UsageReportBatch(
    v=1,
    environment="prod",
    receivedAt=RECEIVED + 300_000,
    usages=[
        UsageReport("m-late-1", "c-2", "f-api-calls", 0.1, "DELTA", RECEIVED - 3 * HOUR_MS),
        UsageReport("m-late-2", "c-2", "f-api-calls", -2.5, "DELTA", RECEIVED - 3 * HOUR_MS + 1),
    ],
)
# Received just after 13:00: a report 1 ms before the hour is late, one at the hour is not.
AT_THE_HOUR = UsageReportBatch(
    v=1,
    environment="staging",
    receivedAt=_ms("2025-03-10T13:00:00.500"),
    usages=[
        UsageReport(
            "m-edge-late", "c-3", "f-api-calls", 1.0, "DELTA", _ms("2025-03-10T12:59:59.999")
        ),
        UsageReport(
            "m-edge-on-time",
            "c-3",
            "f-api-calls",
            2.0,
            "SET",
            _ms("2025-03-10T13:00:00.000"),
            dimensions={"ratio": 3.0},  # a float with no fraction
        ),
    ],
)


def _values() -> list[float]:
    """Accepted values (usage_value_problem) with many significant digits, as the API rounds."""
    rng = random.Random(7)
    fractional = [round_usage_value(rng.uniform(-MAX_FRACTIONAL_USAGE, MAX_FRACTIONAL_USAGE))]
    fractional += [round_usage_value(rng.uniform(0, 1e6)) for _ in range(150)]
    fractional += [round_usage_value(rng.uniform(-1, 1)) for _ in range(150)]
    return [*fractional, 0.00001, 34359738367.99999, -0.0, 0.0, 2.0**52 + 1]


MANY_VALUES = UsageReportBatch(
    v=1,
    environment="prod",
    receivedAt=RECEIVED,
    usages=[
        UsageReport(f"m-value-{i}", "c-4", "f-storage", value, "DELTA", RECEIVED)
        for i, value in enumerate(_values())
    ],
)
GOOD = (ON_TIME, BACK_DATED, AT_THE_HOUR, MANY_VALUES)


def _broken_usage() -> str:
    """A real record but for one report's value, sent as a string: nothing of it may load."""
    record = json.loads(encode_report_batch(ON_TIME))
    record["usages"][1]["value"] = "5"
    return json.dumps(record, separators=(",", ":"))


# What the Kafka engine hands the views: an unparsable message with _error set (stream mode),
# or a JSON object the format accepts but which is not a UsageReportBatch.
BAD = [
    {
        REPORT_RECORD: "",
        "_topic": "usage.reports",
        "_partition": 3,
        "_offset": 42,
        "_raw_message": '{"v":1,"environment":"prod","receivedAt":',
        "_error": "Unexpected end of file while parsing JSON object",
    },
    {
        REPORT_RECORD: _broken_usage(),
        "_topic": "usage.reports",
        "_partition": 4,
        "_offset": 7,
        "_raw_message": "",
        "_error": "",
    },
    {
        REPORT_RECORD: '{"v":1,"environment":"prod","receivedAt":"soon","usages":[]}',
        "_topic": "usage.reports",
        "_partition": 5,
        "_offset": 0,
        "_raw_message": "",
        "_error": "",
    },
]


def _insert_records(client: Any, records: list[bytes]) -> None:
    """One block of whole records, read by the queue's own format (JSONAsString)."""
    client.raw_insert(
        QUEUE,
        column_names=[REPORT_RECORD],
        insert_block=b"\n".join(records),
        fmt=REPORTS_FORMAT,
    )


def _report_rows(client: Any, final: bool) -> list[tuple[Any, ...]]:
    times = {"report_time", "received_at"}
    exprs = [f"toUnixTimestamp64Milli({c})" if c in times else c for c in USAGE_REPORTS_COLUMNS]
    sql = (
        f"SELECT {', '.join(exprs)} FROM {DB}.{REPORTS_TABLE}{' FINAL' if final else ''} "
        "ORDER BY report_id, received_at"
    )
    return [tuple(row) for row in client.query(sql).result_rows]


@pytest.fixture(scope="module")
def warehouse(infra) -> Any:
    with stand_in_ingest(infra.settings, DB) as client:
        yield client


@pytest.fixture(scope="module")
def ingested(warehouse: Any) -> dict[str, Any]:
    started_ms = time.time_ns() // 1_000_000
    _insert_records(warehouse, [encode_report_batch(b) for b in GOOD])
    warehouse.raw_insert(
        QUEUE,
        insert_block="\n".join(json.dumps(r) for r in BAD).encode(),
        fmt="JSONEachRow",
    )
    return {
        "started_ms": started_ms,
        "rows": _report_rows(warehouse, final=False),
        "late_hours": warehouse.query(
            f"SELECT environment, toInt64(toUnixTimestamp(hour)) * 1000, "
            f"toUnixTimestamp64Milli(recorded_at) FROM {DB}.late_hours"
        ).result_rows,
        "errors": warehouse.query(
            f"SELECT topic, partition, offset, raw_message, error FROM {DB}.{ERRORS_TABLE} "
            "ORDER BY partition"
        ).result_rows,
    }


def _row(batch: UsageReportBatch, report: UsageReport, dimensions: str) -> tuple[Any, ...]:
    return (
        batch.environment,
        report.customerId,
        report.resourceId or "",
        report.featureId,
        report.id,
        report.value,
        report.updateBehavior,
        report.idempotencyKey or "",
        report.createdAt,
        batch.receivedAt,
        dimensions,
    )


def test_every_report_is_a_row_with_every_field_as_sent(ingested) -> None:
    plain, full = ON_TIME.usages
    late_1, late_2 = BACK_DATED.usages
    edge_late, edge_on_time = AT_THE_HOUR.usages
    expected = [
        _row(AT_THE_HOUR, edge_late, "{}"),
        # ClickHouse writes the parsed object back compactly: 3.0 becomes 3 (the same JSON value)
        _row(AT_THE_HOUR, edge_on_time, '{"ratio":3}'),
        # the object as sent: keys in order, strings with their escapes
        _row(ON_TIME, full, msgspec.json.encode(full.dimensions).decode()),
        _row(BACK_DATED, late_1, "{}"),
        _row(BACK_DATED, late_2, "{}"),
        _row(ON_TIME, plain, "{}"),  # no resource, idempotency key, dimensions: '', '', '{}'
    ]
    rows = [r for r in ingested["rows"] if not r[4].startswith("m-value-")]
    assert rows == expected


def test_values_are_stored_to_the_bit(ingested) -> None:
    stored = {r[4]: r[5] for r in ingested["rows"] if r[4].startswith("m-value-")}
    assert len(stored) == len(MANY_VALUES.usages)
    for report in MANY_VALUES.usages:
        assert struct.pack("<d", stored[report.id]) == struct.pack("<d", report.value), report


def test_reports_received_after_their_hour_ended_mark_that_hour(ingested) -> None:
    """One late_hours row per (environment, hour) of a back-dated report, recorded when
    written (never before the receive time): the rollup sensor rolls those hours up again."""
    hours = {(env, hour) for env, hour, _ in ingested["late_hours"]}
    assert hours == {
        ("prod", _ms("2025-03-10T09:00:00")),
        ("staging", _ms("2025-03-10T12:00:00")),
    }
    assert len(ingested["late_hours"]) == len(hours)  # one row per hour, whatever the reports
    for _, _, recorded_at in ingested["late_hours"]:
        assert recorded_at >= max(ingested["started_ms"], AT_THE_HOUR.receivedAt)


def test_a_record_that_does_not_decode_goes_whole_to_the_error_table(ingested) -> None:
    unparsable, broken, bad_time = BAD
    assert ingested["errors"] == [
        (
            "usage.reports",
            3,
            42,
            unparsable["_raw_message"],
            unparsable["_error"],
        ),
        ("usage.reports", 4, 7, broken[REPORT_RECORD], "usages[1] is not a UsageReport"),
        (
            "usage.reports",
            5,
            0,
            bad_time[REPORT_RECORD],
            "receivedAt is not epoch ms (1970-2106)",
        ),
    ]
    # the broken record's good report is not loaded either: only ON_TIME's own row has its id
    assert [r[4] for r in ingested["rows"]].count("m-full") == 1


def test_a_record_read_twice_collapses_on_the_tables_key(warehouse, ingested) -> None:
    """Kafka to ClickHouse is at least once: the same record again is the same rows."""
    _insert_records(warehouse, [encode_report_batch(ON_TIME)])
    assert len(_report_rows(warehouse, final=False)) == len(ingested["rows"]) + 2
    assert _report_rows(warehouse, final=True) == ingested["rows"]


def test_views_map_every_column_to_the_tables_type(warehouse) -> None:
    def columns(table: str) -> list[tuple[str, str]]:
        rows = warehouse.query(
            "SELECT name, type FROM system.columns WHERE database = {db:String} "
            "AND table = {t:String} ORDER BY position",
            parameters={"db": DB, "t": table},
        ).result_rows
        return [(str(n), re.sub(r"^LowCardinality\((.*)\)$", r"\1", str(t))) for n, t in rows]

    assert columns(view_name(REPORTS_TABLE)) == columns(REPORTS_TABLE)
    assert columns(late_hours_view_name(REPORTS_TABLE)) == columns("late_hours")
    assert columns(errors_view_name(REPORTS_TABLE)) == columns(ERRORS_TABLE)[:-1]  # recorded_at
