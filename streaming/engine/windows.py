"""Accumulators of 1-minute tumbling windows and the usage_minute rows they produce."""

from __future__ import annotations

from streaming.engine.rows import MinuteRow

# (environment, customer_id, resource_id, event_name, dimensions_key, window start ms)
WindowKey = tuple[str, str, str, str, str, int]

COUNT_METRIC = ""


class MetricAcc:
    """count, sum, min, max and first/last event time of one metric inside one window."""

    __slots__ = ("count", "first", "last", "max", "min", "sum")

    def __init__(self, value: float, event_time: int) -> None:
        self.count = 1
        self.sum = value
        self.min = value
        self.max = value
        self.first = event_time
        self.last = event_time

    def add(self, value: float, event_time: int) -> None:
        self.count += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if event_time < self.first:
            self.first = event_time
        if event_time > self.last:
            self.last = event_time

    def to_list(self) -> list[float | int]:
        return [self.count, self.sum, self.min, self.max, self.first, self.last]

    @classmethod
    def from_list(cls, data: list[float | int]) -> MetricAcc:
        acc = cls.__new__(cls)
        count, acc.sum, acc.min, acc.max, first, last = data
        acc.count, acc.first, acc.last = int(count), int(first), int(last)
        acc.sum, acc.min, acc.max = float(acc.sum), float(acc.min), float(acc.max)
        return acc


class WindowAcc:
    """One open window: the event count plus one MetricAcc per numeric dimension seen."""

    __slots__ = ("events", "labels", "metrics")

    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels
        self.events: MetricAcc | None = None
        self.metrics: dict[str, MetricAcc] = {}

    def add(self, event_time: int, values: dict[str, float]) -> None:
        if self.events is None:
            self.events = MetricAcc(1.0, event_time)
        else:
            self.events.add(1.0, event_time)
        metrics = self.metrics
        for name, value in values.items():
            acc = metrics.get(name)
            if acc is None:
                metrics[name] = MetricAcc(value, event_time)
            else:
                acc.add(value, event_time)

    def rows(self, key: WindowKey, late_key: str = "") -> list[MinuteRow]:
        environment, customer, resource, event_name, dims_key, start = key
        labels = self.labels
        out: list[MinuteRow] = []
        # The count row first, then metrics by name: a stable order makes a re-emitted batch
        # byte-identical, which ClickHouse's insert dedup relies on.
        assert self.events is not None
        items = [(COUNT_METRIC, self.events), *sorted(self.metrics.items())]
        for metric, acc in items:
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
                    acc.count,
                    acc.sum,
                    acc.min,
                    acc.max,
                    acc.first,
                    acc.last,
                    acc.count,
                )
            )
        return out

    def to_list(self) -> list[object]:
        assert self.events is not None
        return [
            self.labels,
            self.events.to_list(),
            {name: acc.to_list() for name, acc in self.metrics.items()},
        ]

    @classmethod
    def from_list(cls, data: list[object]) -> WindowAcc:
        labels, events, metrics = data
        acc = cls(dict(labels))  # type: ignore[call-overload]
        acc.events = MetricAcc.from_list(events)  # type: ignore[arg-type]
        acc.metrics = {
            name: MetricAcc.from_list(m)
            for name, m in metrics.items()  # type: ignore[attr-defined]
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
    acc = WindowAcc(labels)
    acc.add(event_time, values)
    # version = count = 1: a late row is never updated, its late_key being unique.
    return acc.rows(key, late_key)
