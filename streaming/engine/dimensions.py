"""Per-event view of the dimensions: labels, numeric values and their canonical texts.

The split rule is byoc_platform.events.split_dimensions (strings/booleans are labels, numbers
are values); the canonical texts equal byoc_platform.events.labels_key and the compact,
key-sorted JSON of the original dimensions. The Flink job derives the same four in SQL.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from byoc_platform.events import DimensionValue

# order="sorted" gives the same text as encoding dict(sorted(d.items())), without the copy.
_sorted_encoder = msgspec.json.Encoder(order="sorted")

EMPTY_JSON = "{}"


class Dimensions(NamedTuple):
    labels: dict[str, str]
    values: dict[str, float]
    labels_key: str  # canonical JSON of labels: the window's dimension set
    json: str  # the original dimensions, compact JSON with sorted keys


_NO_DIMENSIONS = Dimensions({}, {}, EMPTY_JSON, EMPTY_JSON)


def describe(dimensions: dict[str, DimensionValue]) -> Dimensions:
    """Split and canonicalise one event's dimensions (inlined split_dimensions, for speed)."""
    if not dimensions:
        return _NO_DIMENSIONS
    labels: dict[str, str] = {}
    values: dict[str, float] = {}
    for name, value in dimensions.items():
        kind = type(value)
        if kind is str:
            labels[name] = value  # type: ignore[assignment]
        elif kind is bool:
            labels[name] = "true" if value else "false"
        elif kind is int or kind is float:
            values[name] = float(value)
        elif isinstance(value, bool):
            labels[name] = "true" if value else "false"
        elif isinstance(value, int | float):
            values[name] = float(value)
        else:
            labels[name] = str(value)
    encode = _sorted_encoder.encode
    lkey = encode(labels).decode() if labels else EMPTY_JSON
    return Dimensions(labels, values, lkey, encode(dimensions).decode())
