"""Benchmark: the enforcement usage counters counting events, and getting through events they
already counted.

A runtime pod that starts with an empty store joins its own consumer group (deploy/README.md)
and re-reads the retained deduplicated events after the warehouse replay has counted them:
every one of those is already claimed, so how fast the counters skip them bounds how long the
pod's live counts lag behind. ``first`` counts new events (one claim per event); ``again``
feeds the same events once more (all claimed). Real ``UsageCounters`` on a SQLite store with
the enforcement tests' seed catalog; batches of ``--batch`` events, as the consumer gives them.

    .venv/bin/python bench/counters_reread.py [--events 200000] [--batch 2000]

Prints figures; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from byoc_platform.events import UsageEvent
from enforcement.counters import UsageCounters
from enforcement.state import LocalState
from enforcement.store import Store

SEED = Path(__file__).resolve().parents[1] / "tests" / "enforcement" / "seed.yaml"
ENVIRONMENT = "development"
CUSTOMERS = ("c-basic", "c-pro")


def seeded_state() -> LocalState:
    state = LocalState()
    doc = yaml.safe_load(SEED.read_text())
    kinds = {"features": "feature", "plans": "plan", "addons": "addon"}
    kinds |= {"customers": "customer", "subscriptions": "subscription", "budgets": "budget"}
    for env, sections in doc["environments"].items():
        for section, kind in kinds.items():
            for entity in sections.get(section, []):
                state.apply(env, kind, "upsert", entity["id"], entity, 1.0)
    return state


def rate(counters: UsageCounters, events: list[UsageEvent], batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(events), batch):
        counters.apply_events(ENVIRONMENT, events[i : i + batch])
    return len(events) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=2000)
    args = parser.parse_args()
    now_ms = int(time.time() * 1000)
    events = [
        UsageEvent(
            customerId=CUSTOMERS[i % len(CUSTOMERS)],
            eventName="llm.tokens",
            idempotencyKey=f"k{i}",
            timestamp=now_ms,
            dimensions={"tokens": 3},
        )
        for i in range(args.events)
    ]
    with tempfile.TemporaryDirectory(prefix="counters-reread-") as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'enforcement.db'}")
        counters = UsageCounters(store, seeded_state())
        first = rate(counters, events, args.batch)
        again = rate(counters, events, args.batch)
        counted = counters.events_counted
        store.close()
    if counted != args.events:
        raise SystemExit(f"counted {counted} events, expected {args.events}")
    print(f"first (new events):       {first:12,.0f} events/s")
    print(f"again (already counted):  {again:12,.0f} events/s")
    print(
        json.dumps(
            {
                "bench": "counters_reread",
                "events": args.events,
                "batch": args.batch,
                "first_events_per_s": round(first),
                "again_events_per_s": round(again),
            }
        )
    )


if __name__ == "__main__":
    main()
