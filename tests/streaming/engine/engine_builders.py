"""Small builders for engine unit tests (records of one partition)."""

from __future__ import annotations

from byoc_platform.events import SCHEMA_VERSION, EventBatch, UsageEvent

T0 = 1_793_613_480_000  # 2026-11-02T09:58:00Z, a minute boundary


def ev(
    key: str,
    ts: int,
    customer: str = "c1",
    name: str = "tokens",
    resource: str | None = None,
    **dims: str | int | float | bool,
) -> UsageEvent:
    return UsageEvent(
        customerId=customer,
        eventName=name,
        idempotencyKey=key,
        timestamp=ts,
        resourceId=resource,
        dimensions=dims,
    )


def rec(received_at: int, *events: UsageEvent, environment: str = "prod") -> EventBatch:
    return EventBatch(
        v=SCHEMA_VERSION, environment=environment, receivedAt=received_at, events=list(events)
    )
