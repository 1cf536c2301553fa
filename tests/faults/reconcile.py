"""Exact reconciliation of what the clients saw against what the platform stored and counts.

Expected values are computed here in plain Python from the SENT events (each idempotency key
always carries the same content), never by the platform's code; ClickHouse is read as a user
would read it (``FINAL``), and also without ``FINAL`` to catch physical duplicates.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from byoc_platform.events import labels_key, split_dimensions
from tests.faults.workload import Ledger, SentEvent

Key = tuple[str, str]  # customer, idempotency key


@dataclass
class Stored:
    """usage_events of one environment: the FINAL view and the physical row counts."""

    rows: dict[Key, tuple[int, str, str, dict[str, float], dict[str, str]]]
    physical: dict[Key, int]

    @property
    def physical_duplicates(self) -> int:
        return sum(n - 1 for n in self.physical.values() if n > 1)


def read_stored(ch: Any, db: str, environment: str) -> Stored:
    final = ch.query(
        "SELECT customer_id, idempotency_key, toUnixTimestamp64Milli(event_time), event_name, "
        f"resource_id, `values`, labels FROM {db}.usage_events FINAL "
        "WHERE environment = {env:String}",
        parameters={"env": environment},
    ).result_rows
    physical = ch.query(
        f"SELECT customer_id, idempotency_key, count() FROM {db}.usage_events "
        "WHERE environment = {env:String} GROUP BY customer_id, idempotency_key",
        parameters={"env": environment},
    ).result_rows
    return Stored(
        rows={(r[0], r[1]): (int(r[2]), r[3], r[4], dict(r[5]), dict(r[6])) for r in final},
        physical={(r[0], r[1]): int(r[2]) for r in physical},
    )


def stored_count(ch: Any, db: str, environment: str) -> tuple[int, int]:
    """(unique events, minute rows) right now: what the catch-up wait watches."""
    events = ch.query(
        f"SELECT count() FROM {db}.usage_events FINAL WHERE environment = {{env:String}}",
        parameters={"env": environment},
    ).result_rows[0][0]
    minutes = ch.query(
        f"SELECT sum(count) FROM {db}.usage_minute FINAL "
        "WHERE environment = {env:String} AND metric = ''",
        parameters={"env": environment},
    ).result_rows[0][0]
    return int(events), int(minutes or 0)


def wait_caught_up(
    ch: Any,
    db: str,
    environment: str,
    acked: set[Key],
    timeout_s: float = 150.0,
    stable_s: float = 45.0,
) -> float:
    """Poll until every acknowledged event is stored and the counts stop moving.

    Returns the seconds it took. Gives up after ``timeout_s``, or once the counts have not
    moved for ``stable_s`` (the reconciliation then reports what is missing). ``stable_s`` must
    exceed the longest pause of a healthy processor: after a kill near the end of the load it
    waits for the consumer group to rebalance (session timeout plus join, 12 s measured on a
    loaded machine). With 8 s here, runs read the tables while the processor was still
    rejoining and reported stored events as lost (the first reading of finding F9).
    """
    started = time.monotonic()
    last: tuple[int, int] | None = None
    since = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            now = stored_count(ch, db, environment)
        except Exception:  # the warehouse may still be coming back
            time.sleep(1.0)
            continue
        if now != last:
            last, since = now, time.monotonic()
        enough = now[0] >= len(acked) and now[1] == now[0]
        if enough and time.monotonic() - since >= 3.0:
            return time.monotonic() - started
        if time.monotonic() - since >= stable_s and now[0] > 0:
            return time.monotonic() - started
        time.sleep(1.0)
    return time.monotonic() - started


# --------------------------------------------------------------------------- expectations


def minute_of(ms: int) -> int:
    return ms // 60_000 * 60


def expected_minutes(events: Iterable[SentEvent]) -> dict[tuple, tuple[int, float]]:
    """(customer, resource, event, dimension set, minute, metric) -> (count, sum)."""
    out: dict[tuple, list[float]] = defaultdict(lambda: [0, 0.0])
    for e in events:
        labels, values = split_dimensions(e.dimensions)
        base = (e.customer_id, e.resource_id or "", e.event_name, labels_key(labels))
        minute = minute_of(e.timestamp_ms)
        for metric, value in [("", 1.0), *values.items()]:
            agg = out[(*base, minute, metric)]
            agg[0] += 1
            agg[1] += value
    return {k: (int(v[0]), v[1]) for k, v in out.items()}


def read_minutes(ch: Any, db: str, environment: str) -> dict[tuple, tuple[int, float]]:
    rows = ch.query(
        "SELECT customer_id, resource_id, event_name, dimensions_key, toUnixTimestamp(minute), "
        f"metric, sum(count), sum(sum) FROM {db}.usage_minute FINAL "
        "WHERE environment = {env:String} "
        "GROUP BY customer_id, resource_id, event_name, dimensions_key, minute, metric",
        parameters={"env": environment},
    ).result_rows
    return {tuple(r[:6]): (int(r[6]), float(r[7])) for r in rows}


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def diff_aggregates(
    got: dict[tuple, tuple[int, float]], want: dict[tuple, tuple[int, float]]
) -> list[str]:
    problems = []
    for key in sorted(set(got) | set(want), key=repr):
        g, w = got.get(key), want.get(key)
        if g is None or w is None or g[0] != w[0] or not close(g[1], w[1]):
            problems.append(f"{key}: stored {g}, expected {w}")
    return problems


# Features of the default catalog that count the workload's events (seed.yaml).
METERS = {
    "feature-api-calls": ("api_call", "COUNT", ""),
    "feature-gpt-tokens": ("llm.tokens", "SUM", "tokens"),
}


def meter_amount(feature: str, event: SentEvent) -> float | None:
    name, aggregation, field_ = METERS[feature]
    if event.event_name != name:
        return None
    if aggregation == "COUNT":
        return 1.0
    value = event.dimensions.get(field_)
    return float(value) if isinstance(value, int | float) else None


def expected_hourly(events: Iterable[SentEvent]) -> dict[tuple, dict[tuple, float]]:
    """hour (epoch s) -> (customer, resource, feature) -> value, over the unique events."""
    out: dict[int, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
    for e in events:
        hour = e.timestamp_ms // 3_600_000 * 3600
        for feature in METERS:
            amount = meter_amount(feature, e)
            if amount is not None:
                out[hour][(e.customer_id, e.resource_id or "", feature)] += amount
    return {h: dict(v) for h, v in out.items()}


def expected_counter(
    events: Iterable[SentEvent], customer: str, feature: str, start: datetime, end: datetime
) -> float:
    lo, hi = start.timestamp() * 1000, end.timestamp() * 1000
    total = 0.0
    for e in events:
        if e.customer_id == customer and e.resource_id is None and lo <= e.timestamp_ms < hi:
            amount = meter_amount(feature, e)
            if amount is not None:
                total += amount
    return total


# --------------------------------------------------------------------------- figures


@dataclass
class Figures:
    seed: int
    kills: int
    kills_by_component: dict[str, int]
    requests: int
    acked_requests: int
    failed_requests: int
    sent: int
    acked: int
    stored: int
    duplicates: int  # events counted more than once (aggregates, counters, physical rows)
    physical_duplicate_rows: int
    lost: int  # acknowledged but not stored
    phantom: int  # stored but never sent
    unacked_stored: int  # sent, the request finally failed, stored anyway (allowed)
    content_mismatches: int
    resent_batches: int
    mixed_duplicates: int
    catch_up_s: float
    duration_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return "FAULT-FIGURES " + json.dumps(self.__dict__, sort_keys=False)


def content_mismatches(stored: Stored, sent: dict[Key, SentEvent]) -> list[str]:
    problems = []
    for key, (ts, name, resource, values, labels) in stored.rows.items():
        event = sent.get(key)
        if event is None:
            continue
        want_labels, want_values = split_dimensions(event.dimensions)
        if (
            ts != event.timestamp_ms
            or name != event.event_name
            or resource != (event.resource_id or "")
            or labels != want_labels
            or set(values) != set(want_values)
            or any(not close(values[k], v) for k, v in want_values.items())
        ):
            problems.append(f"{key}: stored {(ts, name, resource, values, labels)}, sent {event}")
    return problems


def summary(ledger: Ledger, stored: Stored) -> tuple[set[Key], set[Key], set[Key]]:
    """(lost, phantom, unacked-but-stored) keys."""
    stored_keys = set(stored.rows)
    lost = ledger.acked - stored_keys
    phantom = stored_keys - set(ledger.sent)
    unacked_stored = (stored_keys & set(ledger.sent)) - ledger.acked
    return lost, phantom, unacked_stored


def hour_label(hour_s: int) -> str:
    return datetime.fromtimestamp(hour_s, UTC).strftime("%Y-%m-%dT%H:00Z")


# --------------------------------------------------------------------------- diagnosis


def locate_in_log(settings: Any, topic: str, keys: set[Key], idle_s: float = 6.0) -> list[str]:
    """Where the given events sit in a topic (partition, offset, receivedAt), read from the
    start with a fresh consumer group (Tansu: never end offsets)."""
    import uuid

    from confluent_kafka import Consumer

    from byoc_platform import clients
    from byoc_platform.events import decode_batch

    consumer = Consumer(clients.consumer_config(settings, f"fault-diag-{uuid.uuid4().hex}"))
    consumer.subscribe([topic])
    found: list[str] = []
    last_data = time.monotonic()
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() - last_data < idle_s and time.monotonic() < deadline:
            for message in consumer.consume(500, 1.0):
                if message.error() is not None:
                    continue
                last_data = time.monotonic()
                batch = decode_batch(message.value())
                for event in batch.events:
                    if (event.customerId, event.idempotencyKey) in keys:
                        found.append(
                            f"{topic} p{message.partition()} o{message.offset()} "
                            f"receivedAt {batch.receivedAt} {event.customerId} "
                            f"{event.idempotencyKey}"
                        )
    finally:
        consumer.close()
    return found


def diagnose_lost(settings: Any, lost: set[Key]) -> str:
    """A report of where lost events are (or are not) in the event log."""
    sample = set(sorted(lost)[:20])
    lines = [f"lost (sample of {len(sample)} of {len(lost)}): {sorted(sample)}"]
    try:
        lines += locate_in_log(settings, settings.kafka.events_topic, sample) or [
            f"none of them is in {settings.kafka.events_topic}"
        ]
        lines += locate_in_log(settings, settings.kafka.deduped_topic, sample) or [
            f"none of them is in {settings.kafka.deduped_topic}"
        ]
    except Exception as exc:  # diagnosis must not hide the failure
        lines.append(f"diagnosis failed: {exc!r}")
    return "\n".join(lines)
