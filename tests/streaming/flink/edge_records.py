"""Write the parity run's edge partition: raw records the runtime API never produces.

``edge/partition-3.ndjson`` is processed by the SAME Flink run as tests/fixtures/stream (one
more ``--input``, so one more per-partition pipeline) and by the Python engine as partition 3,
with the processor's dead-lettering (flink_parity.load_edge_partitions). It lives apart from
the shared fixture because every reader of that one decodes all its records with decode_batch.

Line n is the record at offset n; comments give the expected decision of both engines.
Deterministic: ``.venv/bin/python tests/streaming/flink/edge_records.py`` rewrites the same
bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

EDGE_DIR = Path(__file__).resolve().parent / "edge"
ENV = "edge"
T0 = 1_793_613_480_000  # the shared fixture's start (2026-11-02T09:58:00Z)
# Characters str.splitlines() splits on that Flink's JSON writer leaves unescaped in strings.
LINE_BREAKING_LABEL = "one\u2028two\u2029three\x85four"


def event(key: str | None, ts: object, **dims: object) -> dict[str, object]:
    out: dict[str, object] = {"customerId": "cust-e", "eventName": "edge.used"}
    if key is not None:
        out["idempotencyKey"] = key
    out["timestamp"] = ts
    if dims:
        out["dimensions"] = dims
    return out


def record(received_at: int | None, *events: dict[str, object]) -> bytes:
    batch: dict[str, object] = {"v": 1, "environment": ENV}
    if received_at is not None:
        batch["receivedAt"] = received_at
    batch["events"] = list(events)
    # compact, non-ASCII as is: the bytes msgspec (the runtime API's encoder) would write
    return json.dumps(batch, separators=(",", ":"), ensure_ascii=False).encode()


def records() -> list[bytes]:
    return [
        # valid (negative times; ingestion refuses them, a raw record can hold them): the
        # first sets the watermark to -65 001, so all three are on time, in the minutes
        # -120 000, -60 000 and 0 (floored, not truncated toward zero)
        record(
            T0,
            event("neg-1", -60_001, units=1),
            event("neg-2", -1, units=2),
            event("zero", 0, units=3),
        ),
        # valid: late (watermark -5 000), minute -3 660 000, late hour -7 200 000
        record(T0 + 1, event("neg-3", -3_600_001, units=4)),
        # valid: a label holding U+2028, U+2029 and U+0085
        record(T0 + 2, event("lines", T0 + 1_000, note=LINE_BREAKING_LABEL, units=5)),
        # not an EventBatch (a nested object in dimensions): Python dead-letters the record;
        # Flink's EVENT_RE picks the inner {"b":1} as an event without key or time (dropped)
        record(T0 + 3, event("nested", T0 + 2_000, a={"b": 1}, c="x")),
        # not an EventBatch (no idempotencyKey, twice): nothing (the null keys must not be
        # deduplicated into one event)
        record(T0 + 4, event(None, T0 + 2_100), event(None, T0 + 2_200)),
        # not an EventBatch (timestamp not an integer / no receivedAt): nothing
        record(T0 + 5, event("soon", "soon")),
        record(None, event("unreceived", T0 + 2_300)),
        # valid, after the bad records: processing went on
        record(T0 + 6, event("after", T0 + 3_000, units=6)),
    ]


def main() -> None:
    (EDGE_DIR / "partition-3.ndjson").write_bytes(b"".join(r + b"\n" for r in records()))


if __name__ == "__main__":
    main()
