"""A reproducible workload: unique events, ~10% duplicates (some days apart), late events."""

from __future__ import annotations

import random
from collections.abc import Iterator

from byoc_platform.events import SCHEMA_VERSION, EventBatch, UsageEvent

DAY_MS = 86_400_000


def workload(
    environment: str,
    records: int,
    events_per_record: int,
    seed: int,
    customers: int = 24,
    start_ms: int = 1_793_600_000_000,
    duplicate_share: float = 0.10,
    late_share: float = 0.03,
) -> Iterator[EventBatch]:
    """Records in send order. The receive clock advances 2 s per record and jumps 3 days in the
    middle (within the 7-day window), so some duplicates arrive days after their original.

    Duplicates reuse an earlier event's idempotency key; half carry a different payload, so
    "first occurrence wins" is checked too. Late events are 3-20 minutes behind the clock."""
    rng = random.Random(seed)
    history: dict[str, list[UsageEvent]] = {}
    clock = start_ms
    serial = 0
    for r in range(records):
        clock += 2000
        if r == records // 2:
            clock += 3 * DAY_MS
        customer = f"cust-{rng.randrange(customers)}"
        past = history.setdefault(customer, [])
        events: list[UsageEvent] = []
        for _ in range(events_per_record):
            if past and rng.random() < duplicate_share:
                original = rng.choice(past)
                if rng.random() < 0.5:
                    events.append(original)
                else:  # same key, other payload: must be dropped, the first one counts
                    events.append(
                        UsageEvent(
                            customerId=original.customerId,
                            eventName=original.eventName,
                            idempotencyKey=original.idempotencyKey,
                            timestamp=original.timestamp + 1,
                            resourceId=original.resourceId,
                            dimensions={**original.dimensions, "tokens": 999_999},
                        )
                    )
                continue
            serial += 1
            if rng.random() < late_share:
                ts = clock - rng.randrange(3 * 60_000, 20 * 60_000)
            else:
                ts = clock - rng.randrange(0, 3000)
            dimensions: dict[str, str | int | float | bool] = {
                "model": rng.choice(["gpt-4", "claude", "llama"]),
                "tokens": rng.randrange(1, 2000),
            }
            if rng.random() < 0.5:
                dimensions["latency_ms"] = rng.randrange(1, 400) * 0.25  # exact in binary
            if rng.random() < 0.3:
                dimensions["cached"] = rng.random() < 0.5
            event = UsageEvent(
                customerId=customer,
                eventName=rng.choice(["tokens.used", "api.call"]),
                idempotencyKey=f"{customer}-{serial}",
                timestamp=ts,
                resourceId=rng.choice([None, "ws-1", "ws-2"]),
                dimensions=dimensions,
            )
            events.append(event)
            past.append(event)
        yield EventBatch(SCHEMA_VERSION, environment, clock, events)
