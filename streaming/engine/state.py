"""Serialized per-partition state (versioned msgspec JSON), for checkpoints and restores."""

from __future__ import annotations

import msgspec

STATE_VERSION = 1

DedupEntry = tuple[str, str, str, int]  # (environment, customer_id, idempotency_key, first_seen_ms)


class WindowState(msgspec.Struct, array_like=True):
    key: list[str | int]  # WindowKey as a list
    acc: list[object]  # WindowAcc.to_list()


class PartitionState(msgspec.Struct, kw_only=True):
    v: int = STATE_VERSION
    partition: int
    next_offset: int | None
    watermark: int | None
    clock: int | None  # highest receivedAt seen: the dedup clock
    windows: list[WindowState]
    touched: list[list[str | int]]
    dedup: list[DedupEntry]

    def encode(self) -> bytes:
        return _encoder.encode(self)


class StateError(ValueError):
    """Stored state that this engine cannot read."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(PartitionState)


def decode_state(data: bytes) -> PartitionState:
    try:
        state = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise StateError(f"unreadable partition state: {exc}") from exc
    if state.v != STATE_VERSION:
        raise StateError(f"partition state version {state.v}, this engine reads {STATE_VERSION}")
    return state
