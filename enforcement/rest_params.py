"""Query and body parsing for the REST routes: every bad input is a 400/422 naming the field."""

from __future__ import annotations

import math
from typing import Any

import msgspec
from starlette.datastructures import QueryParams
from starlette.requests import Request

from byoc_platform.api_errors import ApiError
from enforcement.periods import parse_time

MAX_ID = 255


def environment_of(request: Request) -> str:
    """The caller's environment (from its API key); an explicit other one is refused.

    The REST SDK may send ``X-ENVIRONMENT-ID``; a key never reads another environment, so a
    header naming a different environment is a 403 rather than silently answered for the key's.
    """
    environment: str = request.state.environment
    asked = request.headers.get("x-environment-id")
    if asked and asked != environment:
        raise ApiError(
            403,
            f"this API key belongs to environment {environment!r}, not {asked[:100]!r}",
            retryable=False,
        )
    return environment


def bad(message: str) -> ApiError:
    return ApiError(400, message, retryable=False)


def identifier(value: object, name: str, *, required: bool = True) -> str | None:
    if value is None or value == "":
        if required:
            raise bad(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise bad(f"{name} must be a string")
    if len(value) > MAX_ID:
        raise bad(f"{name} is longer than {MAX_ID} characters")
    if any(ord(ch) < 32 for ch in value):
        raise bad(f"{name} contains control characters")
    return value


def query_str(params: QueryParams, name: str, *, required: bool = False) -> str | None:
    return identifier(params.get(name), name, required=required)


def number(
    value: object, name: str, *, minimum: float | None = None, positive: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(f"{name} must be a number")
    try:
        result = float(value)
    except OverflowError:  # an integer too large for a double
        raise bad(f"{name} is out of range") from None
    if not math.isfinite(result):
        raise bad(f"{name} must be a finite number")
    if positive and result <= 0:
        raise bad(f"{name} must be greater than 0")
    if minimum is not None and result < minimum:
        raise bad(f"{name} must be at least {minimum:g}")
    return result


def query_number(
    params: QueryParams, name: str, *, minimum: float | None = None, positive: bool = False
) -> float | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise bad(f"{name} must be a number, got {raw[:40]!r}") from None
    return number(value, name, minimum=minimum, positive=positive)


def query_cursor(params: QueryParams, name: str) -> str | None:
    """A page cursor as the ledger returns them: decimal digits of a 64-bit sequence."""
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise bad(f"{name} must be a cursor returned by a previous page")
    return raw


def query_int(params: QueryParams, name: str, lo: int, hi: int) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise bad(f"{name} must be an integer, got {raw[:40]!r}") from None
    if not lo <= value <= hi:
        raise bad(f"{name} must be between {lo} and {hi}")
    return value


def query_list(params: QueryParams, name: str) -> tuple[str, ...]:
    """Arrays arrive comma-joined (the REST SDK's format) or as repeated parameters."""
    values: list[str] = []
    for raw in params.getlist(name):
        values.extend(v for v in raw.split(",") if v)
    for v in values:
        identifier(v, name)
    return tuple(values)


def time_value(value: object, name: str) -> float:
    if not isinstance(value, str):
        raise bad(f"{name} must be an ISO-8601 date-time string")
    try:
        return parse_time(value)
    except (ValueError, OverflowError):
        raise bad(f"{name} must be an ISO-8601 date-time, got {value[:40]!r}") from None


MAX_BODY_BYTES = 4 * 1024 * 1024


async def json_object(request: Request, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"request body is larger than {max_bytes} bytes", retryable=False)
    body = await request.body()
    if len(body) > max_bytes:
        raise ApiError(413, f"request body is larger than {max_bytes} bytes", retryable=False)
    if not body:
        raise bad("request body is required (a JSON object)")
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise bad(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad("request body must be a JSON object")
    return data


def string_map(value: object, name: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise bad(f"{name} must be an object of string values")
    return value
