"""Test data for the Dagster side: an isolated environment with a catalog, and raw events.

Each test gets its own environment id (the control plane and every table are shared by the
session) and its own hours (rollups and archives are per hour / day across environments).
Hours are drawn from 2025, apart from the present, so other parts' tests never share them.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from byoc_platform.catalog import Customer, Feature, Meter
from byoc_platform.control_plane.client import ControlPlaneClient
from byoc_platform.settings import Settings

FEATURES = [
    Feature(
        id="feature-api-calls",
        featureType="NUMBER",
        meterType="Incremental",
        meter=Meter(eventName="api_call", aggregation="COUNT"),
    ),
    Feature(
        id="feature-tokens",
        featureType="NUMBER",
        meterType="Incremental",
        meter=Meter(eventName="llm.tokens", aggregation="SUM", field="tokens"),
    ),
    Feature(
        id="feature-peak-latency",
        featureType="NUMBER",
        meterType="Incremental",
        meter=Meter(eventName="llm.tokens", aggregation="MAX", field="latency_ms"),
    ),
    Feature(
        id="feature-models",
        featureType="NUMBER",
        meterType="Incremental",
        meter=Meter(eventName="llm.tokens", aggregation="UNIQUE", field="model"),
    ),
    Feature(id="feature-sso", featureType="BOOLEAN"),  # no meter: never rolled up
    # Usage reported as aggregates (reportUsage): DELTA amounts and SET levels.
    Feature(id="feature-agent-steps", featureType="NUMBER", meterType="Incremental"),
    Feature(id="feature-seats", featureType="NUMBER", meterType="Fluctuating"),
]
CUSTOMERS = [f"cust-{i}" for i in range(4)]
EVENT_COLUMNS = [
    "environment",
    "customer_id",
    "resource_id",
    "event_name",
    "idempotency_key",
    "event_time",
    "ingest_time",
    "labels",
    "values",
    "dimensions",
]

_used_days: set[int] = set()
_rng = random.Random()


def fresh_day(first: int = 20, last: int = 360) -> datetime:
    """A day of 2025 no other test of this session uses (first..last days after Jan 1)."""
    while True:
        offset = _rng.randint(first, last)
        if offset not in _used_days:
            _used_days.add(offset)
            return datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=offset)


def fresh_hour() -> datetime:
    return fresh_day() + timedelta(hours=_rng.randint(0, 23))


def new_environment(settings: Settings, customers: list[str] = CUSTOMERS) -> str:
    """A fresh environment with the test catalog in the control plane."""
    env = f"test-{uuid.uuid4().hex[:10]}"
    with ControlPlaneClient.from_settings(settings) as cp:
        for feature in FEATURES:
            cp.put_entity(env, feature)
        for customer in customers:
            cp.put_entity(env, Customer(id=customer, name=customer))
    return env


@dataclass
class Event:
    customer_id: str
    event_name: str
    idempotency_key: str
    event_time: datetime
    resource_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)


def make_events(
    hour: datetime, count: int, seed: int = 0, customers: list[str] = CUSTOMERS
) -> list[Event]:
    rng = random.Random(seed)
    events = []
    for i in range(count):
        name = rng.choice(["api_call", "llm.tokens", "llm.tokens", "unmetered.event"])
        values: dict[str, float] = {}
        labels: dict[str, str] = {}
        if name == "llm.tokens":
            values = {
                "tokens": float(rng.randint(1, 5000)),
                "latency_ms": float(rng.randint(5, 900)),
            }
            labels = {"model": rng.choice(["gpt-4o", "gpt-4o-mini", "o1"])}
        events.append(
            Event(
                customer_id=rng.choice(customers),
                event_name=name,
                idempotency_key=f"k-{hour:%Y%m%d%H}-{seed}-{i}",
                event_time=hour + timedelta(milliseconds=rng.randint(0, 3_599_999)),
                resource_id=rng.choice(["", "", "team-a"]),
                labels=labels,
                values=values,
            )
        )
    return events


def insert_events(client: Any, db: str, env: str, events: list[Event]) -> None:
    now = datetime.now(UTC)
    client.insert(
        f"{db}.usage_events",
        [
            [
                env,
                e.customer_id,
                e.resource_id,
                e.event_name,
                e.idempotency_key,
                e.event_time,
                now,
                e.labels,
                e.values,
                json.dumps({**e.labels, **e.values}, sort_keys=True),
            ]
            for e in events
        ],
        column_names=EVENT_COLUMNS,
    )


@dataclass
class Report:
    """One receipt of an aggregated usage report, as the stream processor stores it."""

    customer_id: str
    feature_id: str
    value: float
    report_time: datetime
    report_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    behavior: str = "DELTA"
    resource_id: str = ""
    received_at: datetime | None = None  # default: report_time


def insert_reports(client: Any, db: str, env: str, reports: list[Report]) -> None:
    from byoc_platform.warehouse_schema import USAGE_REPORTS_COLUMNS

    client.insert(
        f"{db}.usage_reports",
        [
            [
                env,
                r.customer_id,
                r.resource_id,
                r.feature_id,
                r.report_id,
                r.value,
                r.behavior,
                "",
                r.report_time,
                r.received_at or r.report_time,
                "{}",
            ]
            for r in reports
        ],
        column_names=list(USAGE_REPORTS_COLUMNS),
    )


def expected_rollup(env: str, events: list[Event]) -> dict[tuple[str, str, str, str], float]:
    """The rollup computed in plain Python from the distinct events (first occurrence wins)."""
    seen: dict[tuple[str, str], Event] = {}
    for e in events:
        seen.setdefault((e.customer_id, e.idempotency_key), e)
    out: dict[tuple[str, str, str, str], float] = defaultdict(float)
    uniques: dict[tuple[str, str, str, str], set[str]] = defaultdict(set)
    for e in seen.values():
        for f in FEATURES:
            m = f.meter
            if m is None or m.eventName != e.event_name:
                continue
            key = (env, e.customer_id, e.resource_id, f.id)
            if m.aggregation == "COUNT":
                out[key] += 1
            elif m.aggregation == "SUM":
                out[key] += e.values.get(m.field or "", 0.0)
            elif m.aggregation == "MAX" and (m.field or "") in e.values:
                out[key] = max(out.get(key, float("-inf")), e.values[m.field or ""])
            elif m.aggregation == "UNIQUE" and (m.field or "") in e.labels:
                uniques[key].add(e.labels[m.field or ""])
    for key, values in uniques.items():
        out[key] = float(len(values))
    return dict(out)


def settings_file(directory: Path, settings: Settings, **sections: dict[str, Any]) -> str:
    """Write ``settings`` (with section overrides, e.g. retention={"hot_days": 1}) as YAML."""
    data = settings.model_dump(mode="json", exclude={"api_key"})
    for name, values in sections.items():
        data[name] = {**data[name], **values}
    path = directory / f"settings-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def minute_rows_from_events(client: Any, db: str, env: str, start: datetime, end: datetime) -> None:
    """Fill usage_minute for the events like the stream would (counts only), for retention."""
    client.command(
        f"INSERT INTO {db}.usage_minute (environment, customer_id, resource_id, event_name, "
        "dimensions_key, labels, minute, metric, late_key, count, sum, min, max, "
        "first_event_time, last_event_time, version) "
        "SELECT environment, customer_id, resource_id, event_name, '{}', map(), "
        "toStartOfMinute(event_time), '', '', count(), count(), 1, 1, min(event_time), "
        f"max(event_time), count() FROM {db}.usage_events FINAL WHERE environment = {{env:String}} "
        "AND event_time >= {start:DateTime('UTC')} AND event_time < {end:DateTime('UTC')} "
        "GROUP BY environment, customer_id, resource_id, event_name, toStartOfMinute(event_time)",
        parameters={
            "env": env,
            "start": start.strftime("%Y-%m-%d %H:%M:%S"),
            "end": end.strftime("%Y-%m-%d %H:%M:%S"),
        },
    )
