"""Benchmark: decoding and validating one /api/v1/events body of 1000 events in process
(msgspec decode + stamp_events: timestamps and the dimension bounds), best of 30.

    .venv/bin/python bench/ingest_decode.py [repo-root]   # another checkout to compare
"""

import sys
import time
from pathlib import Path

import msgspec

sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[1]))
from streaming.ingest import wire

body = msgspec.json.encode(
    {
        "events": [
            {
                "customerId": f"c{i % 50}",
                "eventName": "llm.tokens",
                "idempotencyKey": f"k{i}",
                "dimensions": {"tokens": 123, "model": "gpt-4", "cost": 0.25},
            }
            for i in range(1000)
        ]
    }
)
best = 1e9
for _ in range(30):
    started = time.perf_counter()
    wire.decode_events(body, max_events=1000, now_ms=int(time.time() * 1000), max_future_ms=300_000)
    best = min(best, time.perf_counter() - started)
print(f"decode+stamp 1000 events: {best * 1e3:.3f} ms best of 30 ({best * 1e3:.2f} us/event)")
