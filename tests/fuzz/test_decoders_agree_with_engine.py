"""The ingestion decoders and the stream engine agree: whatever ingestion accepts, the engine
can process; any bytes give events or a 4xx; undecodable records are skipped, never fatal."""

from __future__ import annotations

import contextlib
import time

import msgspec
from hypothesis import example, given, settings
from hypothesis import strategies as st

from byoc_platform.api_errors import ApiError
from byoc_platform.events import SCHEMA_VERSION, EventBatch, UsageEvent, decode_batch
from streaming.engine import EngineConfig, StreamEngine
from streaming.ingest import wire

EVENT = b'{"customerId":"c","eventName":"e","idempotencyKey":"k"'


def decode(body: bytes) -> list:
    return wire.decode_events(
        body, max_events=1000, now_ms=int(time.time() * 1000), max_future_ms=300_000
    )


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=50))
@example(
    b'{"events":[{"customerId":"\xff","eventName":"e","idempotencyKey":"k"}]}'
)  # invalid UTF-8
@example(b"[" * 100_000 + b"]" * 100_000)  # deep nesting
@example(b'{"events":[' + EVENT + b',"dimensions":{"a":' + b"[" * 5000 + b"]" * 5000 + b"}}]}")
def test_any_bytes_give_events_or_a_4xx(body: bytes) -> None:
    try:
        decode(body)
    except ApiError as exc:
        assert exc.status in (400, 413, 422)


@settings(max_examples=200, deadline=None)
@given(st.integers())
@example(10**400)
def test_what_ingestion_accepts_the_stream_engine_can_process(value: int) -> None:
    body = b'{"events":[' + EVENT + b',"dimensions":{"n":' + str(value).encode() + b"}}]}"
    try:
        events = decode(body)
    except ApiError as exc:
        assert exc.status == 422
        return
    engine = StreamEngine(EngineConfig()).assign(0)
    batch = EventBatch(
        SCHEMA_VERSION,
        "env",
        int(time.time() * 1000),
        [UsageEvent(**msgspec.structs.asdict(e)) for e in events],
    )
    engine.process(0, batch)  # OverflowError for |n| > float max: the processor crash-loops


@settings(max_examples=20, deadline=None)
@given(st.just(b'{"v":1,"environment":"\xff","receivedAt":1,"events":[]}'))
def test_record_decoder_fails_only_with_errors_the_processor_skips(data: bytes) -> None:
    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError, TypeError):
        decode_batch(data)  # UnicodeDecodeError escapes: a poison record for the processor
