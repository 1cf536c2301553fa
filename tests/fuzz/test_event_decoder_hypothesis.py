"""Hypothesis on the ingestion decoders, in process (thousands of cases in seconds).

Properties: whatever the body, the REST decoder answers events or a 4xx naming what is wrong
(never another exception, which the API would turn into a 500); the GraphQL input converter
likewise; an accepted event is exactly what was sent; a batch is all or nothing; and the
Kafka record decoder of the stream processor fails only with the errors it skips.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import msgspec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from byoc_platform.api_errors import ApiError
from byoc_platform.events import SCHEMA_VERSION, EventBatch, UsageEvent, decode_batch, encode_batch
from streaming.ingest import wire
from tests.fuzz.strategies import EVENT_LISTS, JSON, events

MAX_EVENTS = 1000
SKEW_MS = 300_000
FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode(body: bytes) -> list[Any]:
    return wire.decode_events(
        body, max_events=MAX_EVENTS, now_ms=int(time.time() * 1000), max_future_ms=SKEW_MS
    )


def assert_clear_4xx(exc: ApiError) -> None:
    assert exc.status in (400, 413, 422), (exc.status, exc.message)
    assert exc.message and exc.retryable is False


@FAST
@given(st.one_of(JSON, st.fixed_dictionaries({"events": JSON}), st.binary(max_size=200)))
@example(b"")
@example(b"{")
@example({"events": []})
@example({"events": None})
@example({"events": [{}]})
def test_any_body_gives_events_or_a_clear_4xx(document: Any) -> None:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    try:
        decoded = decode(body)
    except ApiError as exc:
        assert_clear_4xx(exc)
    else:
        assert 1 <= len(decoded) <= MAX_EVENTS


@FAST
@given(EVENT_LISTS)
def test_accepted_batches_are_exactly_what_was_sent(batch: list[dict[str, Any]]) -> None:
    body = json.dumps({"events": batch}).encode()
    try:
        decoded = decode(body)
    except ApiError as exc:
        assert_clear_4xx(exc)
        if exc.status == 422 and batch:
            # The message names the field, and for an event the item index.
            assert "`$" in exc.message, exc.message
        return
    assert len(decoded) == len(batch)  # all or nothing: no event dropped silently
    for sent, got in zip(batch, decoded, strict=True):
        assert got.customerId == sent["customerId"]
        assert got.eventName == sent["eventName"]
        assert got.idempotencyKey == sent["idempotencyKey"]
        assert got.resourceId == sent.get("resourceId")
        assert got.dimensions == sent.get("dimensions", {})
        assert isinstance(got.timestamp, int)
        # Kafka record format round trip: what the processor will read back.
        record = EventBatch(SCHEMA_VERSION, "env", 0, [UsageEvent(**msgspec.structs.asdict(got))])
        assert decode_batch(encode_batch(record)).events[0].dimensions == got.dimensions


@FAST
@given(st.lists(events(), min_size=2, max_size=6), st.data())
def test_one_bad_event_refuses_the_whole_batch_naming_it(
    batch: list[dict[str, Any]], data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(batch) - 1))
    batch[index] = {**batch[index]}
    batch[index].pop("customerId", None)
    try:
        decode(json.dumps({"events": batch}).encode())
    except ApiError as exc:
        assert exc.status == 422
        assert "$.events[" in exc.message
    else:
        raise AssertionError("a batch with an event missing customerId was accepted")


@FAST
@given(
    st.one_of(
        JSON,
        st.fixed_dictionaries(
            {"usageEvents": EVENT_LISTS},
            optional={
                "environmentId": JSON,
            },
        ),
    )
)
def test_graphql_event_input_gives_events_or_a_clear_4xx(data: Any) -> None:
    try:
        inp = wire.convert(data, wire.GqlEventsInput, "input")
        wire.check_count(len(inp.usageEvents), MAX_EVENTS, "usageEvents")
        wire.stamp_events(inp.usageEvents, int(time.time() * 1000), SKEW_MS, "input.usageEvents")
    except ApiError as exc:
        assert_clear_4xx(exc)
        if exc.status == 422 and "input" in exc.message:
            assert "`input" in exc.message or "usageEvents" in exc.message, exc.message
    else:
        assert 1 <= len(inp.usageEvents) <= MAX_EVENTS
        assert all(isinstance(e.timestamp, int) for e in inp.usageEvents)


@FAST
@given(st.one_of(st.binary(max_size=300), JSON.map(lambda d: json.dumps(d).encode())))
def test_record_decoder_fails_only_with_errors_the_processor_skips(data: bytes) -> None:
    # Anything else would escape the processor's handler (it logs and skips only these).
    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError, TypeError):
        decode_batch(data)
