"""Hypothesis strategies for ingestion inputs: well-formed events, almost-well-formed ones (a
field missing, of the wrong type, empty, oversized), and arbitrary JSON around them."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# Text without lone surrogates (a JSON encoder cannot write them as UTF-8).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
IDS = st.one_of(TEXT, st.sampled_from(["c", "customer-acme", "x" * 300, "a\u0000b", "ü/é"]))
SAFE_INTS = st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
FINITE = st.floats(allow_nan=False, allow_infinity=False)

JSON_SCALARS = st.one_of(st.none(), st.booleans(), SAFE_INTS, FINITE, TEXT)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=20,
)

DIMENSION_VALUES = st.one_of(st.booleans(), SAFE_INTS, FINITE, TEXT)
TIMESTAMPS = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.sampled_from(["2025-01-01T00:00:00Z", "2025-01-01T00:00:00.123+02:00", "", "yesterday"]),
    SAFE_INTS,
)
FIELDS = {
    "customerId": IDS,
    "eventName": IDS,
    "idempotencyKey": IDS,
    "resourceId": st.one_of(st.none(), IDS),
    "dimensions": st.dictionaries(TEXT, DIMENSION_VALUES, max_size=5),
    "timestamp": TIMESTAMPS,
}
REQUIRED = ("customerId", "eventName", "idempotencyKey")


@st.composite
def events(draw: Any) -> dict[str, Any]:
    """An event, often valid, sometimes with a field dropped, mistyped or an extra one."""
    event: dict[str, Any] = {name: draw(FIELDS[name]) for name in REQUIRED}
    for name in ("resourceId", "dimensions", "timestamp"):
        if draw(st.booleans()):
            event[name] = draw(FIELDS[name])
    mutation = draw(st.sampled_from(["none", "none", "drop", "retype", "extra"]))
    if mutation == "drop":
        del event[draw(st.sampled_from(REQUIRED))]
    elif mutation == "retype":
        event[draw(st.sampled_from(sorted(FIELDS)))] = draw(JSON)
    elif mutation == "extra":
        event[draw(TEXT)] = draw(JSON)
    return event


EVENT_LISTS = st.lists(events(), max_size=8)
