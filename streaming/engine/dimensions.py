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
SORTED_ENCODER = msgspec.json.Encoder(order="sorted")
_sorted_encoder = SORTED_ENCODER

EMPTY_JSON = "{}"


class Dimensions(NamedTuple):
    labels: dict[str, str]
    values: dict[str, float]
    labels_key: str  # canonical JSON of labels: the window's dimension set
    json: str  # the original dimensions, compact JSON with sorted keys


NO_DIMENSIONS = ({}, {}, EMPTY_JSON, EMPTY_JSON)


class DimensionDescriber:
    """:func:`describe` with a bounded cache of labels_key texts.

    Dimension sets repeat (a handful per product) while numeric values vary per event, so
    the labels' canonical text is cached by the labels' items; the cache is cleared when
    full, which keeps memory bounded whatever the cardinality.
    """

    __slots__ = ("cache", "max_entries")

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        # labels items (in the event's order) -> labels_key; read inline by the engine
        self.cache: dict[tuple[tuple[str, str], ...], str] = {}

    def labels_key(self, labels: dict[str, str], items: tuple[tuple[str, str], ...]) -> str:
        """The canonical text of ``labels`` (cached under ``items``)."""
        if len(self.cache) >= self.max_entries:
            self.cache.clear()
        key = self.cache[items] = _sorted_encoder.encode(labels).decode()
        return key

    def __call__(self, dimensions: dict[str, DimensionValue]) -> Dimensions:
        if not dimensions:
            return NO_DIMENSIONS  # type: ignore[return-value]
        labels: dict[str, str] = {}
        values: dict[str, float] = {}
        for name, value in dimensions.items():
            kind = type(value)
            if kind is str:
                labels[name] = value  # type: ignore[assignment]
            elif kind is int or kind is float:
                values[name] = float(value)
            elif kind is bool or isinstance(value, bool):
                labels[name] = "true" if value else "false"
            elif isinstance(value, int | float):
                values[name] = float(value)
            else:
                labels[name] = str(value)
        if labels:
            items = tuple(labels.items())
            lkey = self.cache.get(items)
            if lkey is None:
                lkey = self.labels_key(labels, items)
        else:
            lkey = EMPTY_JSON
        # a plain tuple (same fields as Dimensions): NamedTuple construction costs 3x more
        return labels, values, lkey, _sorted_encoder.encode(dimensions).decode()  # type: ignore[return-value]


def describe(dimensions: dict[str, DimensionValue]) -> Dimensions:
    """Split and canonicalise one event's dimensions (uncached; see DimensionDescriber)."""
    return Dimensions(*DimensionDescriber(max_entries=0)(dimensions))
