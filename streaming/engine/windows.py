"""Accumulators of 1-minute tumbling windows and the usage_minute rows they produce.

Accumulators are plain lists updated inline by the engine's hot loop (attribute access and
method calls per event cost more than the arithmetic here).
"""

from __future__ import annotations

from streaming.engine.rows import MinuteRow

# (environment, customer_id, resource_id, event_name, dimensions_key, window start ms)
WindowKey = tuple[str, str, str, str, str, int]

COUNT_METRIC = ""

# Indexes of a metric accumulator list: [count, sum, min, max, first_time, last_time]
COUNT, SUM, MIN, MAX, FIRST, LAST = range(6)


class WindowAcc:
    """One open window: the event count [n, first, last] and one accumulator per metric."""

    __slots__ = ("events", "labels", "metrics")

    def __init__(self, labels: dict[str, str], event_time: int) -> None:
        self.labels = labels
        self.events = [0, event_time, event_time]
        self.metrics: dict[str, list[float]] = {}

    def add(self, event_time: int, values: dict[str, float]) -> None:
        events = self.events
        events[0] += 1
        if event_time < events[1]:
            events[1] = event_time
        elif event_time > events[2]:
            events[2] = event_time
        if values:
            metrics = self.metrics
            for name, value in values.items():
                acc = metrics.get(name)
                if acc is None:
                    metrics[name] = [1, value, value, value, event_time, event_time]
                    continue
                acc[0] += 1
                acc[1] += value
                if value < acc[2]:
                    acc[2] = value
                if value > acc[3]:
                    acc[3] = value
                if event_time < acc[4]:
                    acc[4] = event_time
                elif event_time > acc[5]:
                    acc[5] = event_time

    def rows(self, key: WindowKey, late_key: str = "") -> list[MinuteRow]:
        environment, customer, resource, event_name, dims_key, start = key
        labels = self.labels
        n, first, last = self.events
        # version = count: grows with every event added to the row
        out = [
            MinuteRow(
                environment,
                customer,
                resource,
                event_name,
                dims_key,
                labels,
                start,
                COUNT_METRIC,
                late_key,
                n,
                float(n),
                1.0,
                1.0,
                first,
                last,
                n,
            )
        ]
        # metrics by name: a stable order keeps a re-emitted batch byte-identical, which
        # ClickHouse's insert deduplication relies on
        for metric in sorted(self.metrics):
            c, s, lo, hi, f, la = self.metrics[metric]
            out.append(
                MinuteRow(
                    environment,
                    customer,
                    resource,
                    event_name,
                    dims_key,
                    labels,
                    start,
                    metric,
                    late_key,
                    int(c),
                    s,
                    lo,
                    hi,
                    int(f),
                    int(la),
                    int(c),
                )
            )
        return out

    def to_list(self) -> list[object]:
        return [self.labels, self.events, self.metrics]

    @classmethod
    def from_list(cls, data: list[object]) -> WindowAcc:
        labels, events, metrics = data
        acc = cls.__new__(cls)
        acc.labels = dict(labels)  # type: ignore[call-overload]
        acc.events = [int(x) for x in events]  # type: ignore[attr-defined]
        acc.metrics = {
            name: [int(c), float(s), float(lo), float(hi), int(f), int(la)]
            for name, (c, s, lo, hi, f, la) in metrics.items()  # type: ignore[attr-defined]
        }
        return acc


def late_rows(
    key: WindowKey,
    labels: dict[str, str],
    event_time: int,
    values: dict[str, float],
    late_key: str,
) -> list[MinuteRow]:
    """The rows of one late event: a window of its own, keyed by its idempotency key."""
    acc = WindowAcc(labels, event_time)
    acc.add(event_time, values)
    # version = count = 1: a late row is never updated, its late_key being unique.
    return acc.rows(key, late_key)
