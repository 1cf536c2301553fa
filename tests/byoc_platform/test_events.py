"""The record splitting every producer of usage.events shares (byoc_platform/events.py)."""

from __future__ import annotations

import json

import pytest

from byoc_platform.events import ItemTooLarge, split_records


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
