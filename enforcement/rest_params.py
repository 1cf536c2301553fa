"""Query and body parsing for the REST routes: every bad input is a 400/422 naming the field."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
from starlette.datastructures import QueryParams
from starlette.requests import Request

from byoc_platform.api_errors import ApiError
from byoc_platform.content_type import require_json

MAX_ID = 255
_CONTROL = re.compile("[\x00-\x1f]")  # refused in ids (a regex: ~20x faster than a loop)
# Numbers in a query as JSON writes them: Python's float()/int() also take "+5", "5_0",
# " 5 " and "inf", which no client means.
_QUERY_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_QUERY_INT = re.compile(r"-?[0-9]+")
# Credit amounts: the ledger keeps 5 decimal places and moves at most 10^12 per operation.
# Refused here before rounding, so "0.000004" is a 400 exactly as the documented minimum says
# (rounding would otherwise turn 0.0000075 into an accepted 0.00001).
MIN_AMOUNT = 0.00001
MAX_AMOUNT = 1e12
MAX_NUMBER = 1.7976931348623157e308  # the largest finite double: larger values are refused
VALUES_PATTERN = "^[^\\u0000-\\u001f]*$"

# reservationMetadata: a JSON object of string values, as a regular expression, so the
# OpenAPI document states exactly what the route accepts (the route checks this pattern, then
# decodes). A \\u escape of a surrogate must be a high+low pair (JSON decoders refuse a lone one).
_WS = r"[ \t\n\r]*"
_ESCAPE = (
    r"\\(?:[\"\\/bfnrt]|u(?:[0-9a-ce-fA-CE-F][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2}"
    r"|[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}))"
)
_STRING = r'"(?:[^"\\\u0000-\u001f]|' + _ESCAPE + r')*"'
_PAIR = _STRING + _WS + ":" + _WS + _STRING
STRING_MAP_PATTERN = (
    "^" + _WS + r"\{" + _WS + "(?:" + _PAIR + _WS + "(?:," + _WS + _PAIR + _WS + ")*)?"
    r"\}" + _WS + "$"
)
_STRING_MAP_RE = re.compile(STRING_MAP_PATTERN)


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
    """An id: 1-255 characters without control characters; ``None`` when absent.

    An empty string is refused even where the field is optional: the documented minLength is
    1, and silently reading ``resourceId=`` as "no resource" would widen the scope asked for.
    """
    if value is None:
        if required:
            raise bad(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise bad(f"{name} must be a string")
    if not value:
        raise bad(f"{name} must not be empty")
    if len(value) > MAX_ID:
        raise bad(f"{name} is longer than {MAX_ID} characters")
    if _CONTROL.search(value):
        raise bad(f"{name} contains control characters")
    return value


def query_str(params: QueryParams, name: str, *, required: bool = False) -> str | None:
    return identifier(params.get(name), name, required=required)


def number(
    value: object,
    name: str,
    *,
    minimum: float | None = None,
    positive: bool = False,
    maximum: float | None = None,
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
    if maximum is not None and result > maximum:
        raise bad(f"{name} must be at most {maximum:g}")
    return result


def amount(value: object, name: str) -> float:
    """A credit amount: from MIN_AMOUNT to MAX_AMOUNT (the ledger rounds to 5 places)."""
    return number(value, name, minimum=MIN_AMOUNT, maximum=MAX_AMOUNT)


def query_number(
    params: QueryParams,
    name: str,
    *,
    minimum: float | None = None,
    positive: bool = False,
    maximum: float | None = None,
) -> float | None:
    raw = params.get(name)
    if raw is None:
        return None
    if _QUERY_NUMBER.fullmatch(raw) is None:
        raise bad(f"{name} must be a number, got {raw[:40]!r}")
    value = float(raw)
    return number(value, name, minimum=minimum, positive=positive, maximum=maximum)


MAX_CURSOR_DIGITS = 18  # the ledger's seq is 64-bit; 18 digits always fit


def query_cursor(params: QueryParams, name: str) -> str | None:
    """A page cursor as the ledger returns them: decimal digits of a 64-bit sequence."""
    raw = params.get(name)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > MAX_CURSOR_DIGITS:
        raise bad(f"{name} must be a cursor returned by a previous page (1-18 digits)")
    return raw


def query_int(params: QueryParams, name: str, lo: int, hi: int) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    if _QUERY_INT.fullmatch(raw) is None:
        raise bad(f"{name} must be an integer, got {raw[:40]!r}")
    # Past 19 digits it is out of any range here (and int() refuses over 4,300 digits).
    value = int(raw) if len(raw) <= 19 else hi + 1
    if not lo <= value <= hi:
        raise bad(f"{name} must be between {lo} and {hi}")
    return value


def query_values(params: QueryParams, name: str) -> tuple[str, ...]:
    """Free-form values, comma-joined (the REST SDK's format) or repeated; empty items are
    skipped. Only control characters are refused (VALUES_PATTERN in the document)."""
    values: list[str] = []
    for raw in params.getlist(name):
        if _CONTROL.search(raw):
            raise bad(f"{name} contains control characters")
        values.extend(v for v in raw.split(",") if v)
    return tuple(values)


def query_choices(params: QueryParams, name: str, choices: frozenset[str]) -> tuple[str, ...]:
    """Comma-joined (or repeated) values, each one of ``choices``; no empty item."""
    values: list[str] = []
    for raw in params.getlist(name):
        for v in raw.split(","):
            if v not in choices:
                raise bad(f"{name}: {v[:60]!r} is not one of {', '.join(sorted(choices))}")
            values.append(v)
    return tuple(values)


# Times: RFC 3339 date-times (JSON Schema's "date-time") of the years 1900-2999. Parsed here
# rather than by datetime.fromisoformat, which accepts more ("2025-01-01", naive times) and
# less (a lower-case "t", the leap second 23:59:60Z) than the document's format.
TIME_PATTERN = "^(?:19|2[0-9])[0-9]{2}-"
_RFC3339 = re.compile(
    r"((?:19|2[0-9])[0-9]{2})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)


def _rfc3339(value: str) -> datetime | None:
    m = _RFC3339.fullmatch(value)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction, sign, off_h, off_m = m.group(7), m.group(8), m.group(9), m.group(10)
    offset = 0
    if sign is not None:
        if int(off_h) > 23 or int(off_m) > 59:
            return None
        offset = (int(off_h) * 60 + int(off_m)) * (1 if sign == "+" else -1)
    leap = second == 60
    if leap:
        # RFC 3339 allows a leap second only at 23:59:60 UTC.
        if (hour * 60 + minute - offset) % 1440 != 23 * 60 + 59:
            return None
        second = 59
    try:
        moment = datetime(
            year,
            month,
            day,
            hour,
            minute,
            second,
            int((fraction or "0")[:6].ljust(6, "0")),
            tzinfo=timezone(timedelta(minutes=offset)),
        )
    except ValueError:  # month 13, February 30th, hour 24...
        return None
    return moment + timedelta(seconds=1) if leap else moment


def time_datetime(value: object, name: str) -> datetime:
    if not isinstance(value, str):
        raise bad(f"{name} must be an RFC 3339 date-time string")
    moment = _rfc3339(value)
    if moment is None:
        raise bad(f"{name} must be an RFC 3339 date-time of 1900-2999, got {value[:40]!r}")
    return moment


def time_value(value: object, name: str) -> float:
    return time_datetime(value, name).timestamp()


MAX_BODY_BYTES = 4 * 1024 * 1024


async def json_object(request: Request, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    require_json(request.headers)  # 415 before the body is read
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
    except (UnicodeDecodeError, RecursionError) as exc:  # invalid UTF-8, absurd nesting
        raise bad(f"request body is not valid JSON: {type(exc).__name__}") from None
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


def json_string_map(raw: str, name: str) -> dict[str, str]:
    """A query parameter holding a JSON object of strings (STRING_MAP_PATTERN)."""
    if not _STRING_MAP_RE.fullmatch(raw):
        raise bad(f"{name} must be a JSON object of string values")
    data = msgspec.json.decode(raw)  # cannot fail: the pattern is a subset of JSON
    assert isinstance(data, dict)
    return data
