"""byoc_platform/events.py: the record splitting every producer of usage.events shares, and the
decoding of the Flink job's usage_events rows into the events their records carried."""

from __future__ import annotations

import json

import msgspec
import pytest

from byoc_platform.events import (
    ItemTooLarge,
    UsageEvent,
    decode_batch,
    decode_event_row,
    decode_report_batch,
    split_records,
)


def encode(items: list[str]) -> bytes:
    return json.dumps(items).encode()


def test_a_group_that_fits_is_one_record_encoded_once() -> None:
    calls: list[int] = []

    def counted(items: list[str]) -> bytes:
        calls.append(len(items))
        return encode(items)

    items = ["a" * 10] * 5
    assert split_records(items, counted, limit=1000) == [(items, encode(items))]
    assert calls == [5]


def test_an_oversized_group_splits_in_order_under_the_limit() -> None:
    items = [f"{i:03d}" + "x" * 90 for i in range(100)]
    groups = split_records(items, encode, limit=1000)
    assert len(groups) > 1
    assert [item for group, _ in groups for item in group] == items
    for group, value in groups:
        assert value == encode(group)
        assert len(value) <= 1000


def test_one_item_over_the_limit_names_itself() -> None:
    items = ["small", "y" * 2000, "small too"]
    with pytest.raises(ItemTooLarge) as raised:
        split_records(items, encode, limit=1000)
    assert raised.value.item == "y" * 2000
    assert raised.value.size == len(encode(["y" * 2000]))


# Records of tests/fixtures/stream (RECORD_B without its events b-2 and b-3) and, verbatim,
# the rows the Flink job (streaming/flink) wrote for their events (Jackson's JSON: escapes like
# '\uD83D\uDE80', the dimensions as the producer's values in sorted JSON text).
RECORD_B = (
    r'{"v":1,"environment":"production","receivedAt":1793613608000,"events":[{"customerId":'
    r'"cust-b","eventName":"tokens.used","idempotencyKey":"b-1","timestamp":1793613580000,'
    r'"resourceId":"doc-9","dimensions":{"region":"eu \"west\", 1: {x}","path":"C:\\tmp\\x",'
    r'"emoji":"🚀 é","a":"1","a b":"two","ab":3,"timestamp":7,"dimensions":"nested-looking",'
    r'"ratio":0.1,"big":12345678.5,"tiny":1e-7,"neg":-3,"flag":true}},{"customerId":"cust-b",'
    r'"eventName":"seats","idempotencyKey":"b-4","timestamp":1793613605000,"dimensions":'
    r'{"seats":2}}]}'
).encode()
ROW_B1 = (
    r'{"environment":"production","customer_id":"cust-b","resource_id":"doc-9","event_name":'
    r'"tokens.used","idempotency_key":"b-1","event_time":1793613580000,"ingest_time":'
    r'1793613608000,"labels":{"path":"C:\\tmp\\x","a":"1","a b":"two","flag":"true","emoji":'
    r'"\uD83D\uDE80 é","region":"eu \"west\", 1: {x}","dimensions":"nested-looking"},"values":'
    r'{"big":1.23456785E7,"ratio":0.1,"timestamp":7.0,"neg":-3.0,"ab":3.0,"tiny":1.0E-7},'
    r'"dimensions":"{\"a\":\"1\",\"a b\":\"two\",\"ab\":3,\"big\":12345678.5,\"dimensions\":'
    r"\"nested-looking\",\"emoji\":\"\uD83D\uDE80 é\",\"flag\":true,\"neg\":-3,\"path\":"
    r"\"C:\\\\tmp\\\\x\",\"ratio\":0.1,\"region\":\"eu \\\"west\\\", 1: {x}\",\"timestamp\":7,"
    r'\"tiny\":1e-7}"}'
).encode()
ROW_B4 = (
    rb'{"environment":"production","customer_id":"cust-b","resource_id":"","event_name":"seats",'
    rb'"idempotency_key":"b-4","event_time":1793613605000,"ingest_time":1793613608000,'
    rb'"labels":{},"values":{"seats":2.0},"dimensions":"{\"seats\":2}"}'
)
RECORD_A = (
    rb'{"v":1,"environment":"production","receivedAt":1793613481100,"events":[{"customerId":'
    rb'"cust-a","eventName":"api.call","idempotencyKey":"a-3","timestamp":1793613482500}]}'
)
ROW_A3 = (
    rb'{"environment":"production","customer_id":"cust-a","resource_id":"","event_name":'
    rb'"api.call","idempotency_key":"a-3","event_time":1793613482500,"ingest_time":'
    rb'1793613481100,"labels":{},"values":{},"dimensions":"{}"}'
)


def exact(environment: str, event: UsageEvent) -> bytes:
    """Compares types too: 3 == 3.0 == True in Python, not in this text."""
    return msgspec.json.encode([environment, event], order="sorted")


@pytest.mark.parametrize(
    ("row", "record", "index"),
    [(ROW_B1, RECORD_B, 0), (ROW_B4, RECORD_B, 1), (ROW_A3, RECORD_A, 0)],
    ids=["resource-and-every-dimension-type", "no-resource", "no-dimensions"],
)
def test_a_flink_row_decodes_to_the_event_its_record_carried(
    row: bytes, record: bytes, index: int
) -> None:
    batch = decode_batch(record)
    assert exact(*decode_event_row(row)) == exact(batch.environment, batch.events[index])


def test_a_flink_row_keeps_dimension_types_and_no_resource_as_none() -> None:
    _, b1 = decode_event_row(ROW_B1)
    assert [type(b1.dimensions[k]) for k in ("ab", "big", "flag", "a")] == [int, float, bool, str]
    assert b1.dimensions["emoji"] == "🚀 é" and b1.dimensions["tiny"] == 1e-07
    _, b4 = decode_event_row(ROW_B4)
    assert b4.resourceId is None and b4.dimensions == {"seats": 2}


@pytest.mark.parametrize(
    "row",
    [
        b"not json",
        b"\xff\xfe",
        ROW_A3.replace(b'"event_time":1793613482500,', b""),  # a field missing
        ROW_A3.replace(b'"dimensions":"{}"', b'"dimensions":{}'),  # not the JSON text
        ROW_A3.replace(b'"dimensions":"{}"', b'"dimensions":"{\\"x\\":"'),  # truncated text
        ROW_A3.replace(b'"dimensions":"{}"', b'"dimensions":"[1]"'),  # not an object
        ROW_A3.replace(b'"dimensions":"{}"', b'"dimensions":"{\\"x\\":[1]}"'),  # nested value
    ],
)
def test_an_undecodable_flink_row_raises_a_msgspec_error(row: bytes) -> None:
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode_event_row(row)


@pytest.mark.parametrize(
    "record",
    [
        b"not json",
        b'{"v":1,"environment":"\xff","receivedAt":1,"usages":[]}',  # invalid UTF-8
        b"[" * 100_000,  # nesting deeper than the decoder's recursion limit
        b'{"v":1,"environment":"e","receivedAt":1}',  # no usages
    ],
)
def test_an_undecodable_report_record_raises_a_msgspec_error(record: bytes) -> None:
    """Its consumers (the enforcement feed, the reports loader) skip msgspec errors only: a raw
    UnicodeDecodeError stopped them on the record, and they read it again for ever."""
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode_report_batch(record)


def test_a_record_with_an_integer_beyond_64_bits_is_refused_whole() -> None:
    """A raw producer's 10**400 decoded as a Python int; the stream engine then raised
    OverflowError half-way through the record, after counting its first events, and its
    checkpoint covered the record: the rest was lost, and a retry of the first counted
    twice. Refused at decoding, the processor dead-letters the record whole."""

    def record(bad: int) -> bytes:
        events = [
            {"customerId": "c", "eventName": "e", "idempotencyKey": key, "timestamp": 1}
            | {"dimensions": {"t": value}}
            for key, value in (("ok", 2**63 - 1), ("bad", bad))
        ]
        return json.dumps({"v": 1, "environment": "p", "receivedAt": 1, "events": events}).encode()

    with pytest.raises(msgspec.ValidationError, match="9223372036854775807"):
        decode_batch(record(10**400))
    edge = decode_batch(record(-(2**63)))
    assert [e.dimensions["t"] for e in edge.events] == [2**63 - 1, -(2**63)]
    assert all(type(e.dimensions["t"]) is int for e in edge.events)
