"""Schemathesis hooks (loaded through SCHEMATHESIS_HOOKS by test_openapi_schemathesis.py).

Rules on date-times that JSON Schema cannot state: an ingested timestamp / createdAt may be
at most ``api.max_future_skew_s`` (300 s) ahead and not before 2025-01-01 UTC (documented in
its description: a pattern cannot see the offset), and a check's ``reservationExpiresAt`` must
lie in (now, now + 24 h]. Generated values that are not a date-time at all are kept (negative
cases stay negative); a valid date-time is moved into the allowed range, so positive cases
are really valid."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import schemathesis

TIME_FIELDS = ("timestamp", "createdAt")


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


FIRST_HOUR = datetime(2025, 1, 1, tzinfo=UTC)


def _clamped(value: Any) -> Any:
    when, now = _when(value), datetime.now(UTC)
    if when is None:
        return value
    return now.isoformat() if when > now else FIRST_HOUR.isoformat() if when < FIRST_HOUR else value


def _walk(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _clamped(v) if k in TIME_FIELDS else _walk(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_walk(item) for item in node]
    return node


@schemathesis.hook
def map_body(ctx: schemathesis.HookContext, body: Any) -> Any:
    return _walk(body)


@schemathesis.hook
def map_query(ctx: schemathesis.HookContext, query: Any) -> Any:
    if isinstance(query, dict) and _when(query.get("reservationExpiresAt")) is not None:
        query = {
            **query,
            "reservationExpiresAt": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        }
    return query
