"""Usage counters per (customer, resource, feature, usage window), and budget usage.

Two feeds write them:
- raw events, deduplicated (``usage.deduped``, or the Flink job's ``usage_events`` rows; see
  usage_feed.py), near real time, and from the warehouse replay on start:
  each event counts toward every metered feature whose meter matches its name (COUNT: +1,
  SUM: + the meter field's numeric dimension), in the window its EVENT time falls in;
- ``ReportUsage`` (immediate), DELTA adds and SET replaces the current window's value.

Idempotency of the event feed: the stream processor deduplicates, but redelivers across its
own crashes, and this consumer may re-read after ours. Each event's identity
(environment, customer, idempotencyKey) is claimed in the store IN THE SAME TRANSACTION as its
counter increments; a claimed identity counts nothing again. Identities are kept until the
end of the latest window the event counted into, and at least the 7-day dedup window.
Memory is updated only after the commit, so what a check reads is always durable.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

from byoc_platform.catalog import Budget, Feature
from byoc_platform.events import (
    MAX_DIMENSION_VALUE,
    UsageEvent,
    UsageReport,
    dimension_value_problem,
)
from enforcement.periods import CALENDAR, window
from enforcement.state import NO_RESOURCE, LocalState
from enforcement.store import BudgetKey, CounterKey, Store

log = logging.getLogger(__name__)

DEDUP_WINDOW_S = 7 * 24 * 3600.0
# A logged report's claim: its id, prefixed apart from the events' idempotency keys.
REPORT_CLAIM_PREFIX = "\x1freport\x1f"
KEEP_ENDED_WINDOWS_S = 35 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Reported:
    """The outcome of one ReportUsage."""

    current_usage: float
    window_start: int
    window_end: int
    timestamp: float


def event_amount(feature: Feature, event: UsageEvent) -> float | None:
    """What one event adds to a feature's counter, or None when it does not count."""
    meter = feature.meter
    if meter is None or meter.eventName != event.eventName:
        return None
    if meter.aggregation == "COUNT":
        return 1.0
    if meter.aggregation == "SUM" and meter.field:
        value = event.dimensions.get(meter.field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)
    return None  # MAX / UNIQUE are rollup aggregations, not running counters


class UsageCounters:
    """Counters in memory (read lock-free by checks) backed by the store."""

    def __init__(self, store: Store, state: LocalState, dedup_window_s: float = DEDUP_WINDOW_S):
        self.store = store
        self.state = state
        self.dedup_window_s = dedup_window_s
        self.values: dict[CounterKey, float] = {}
        self.budget_values: dict[BudgetKey, float] = {}
        self.events_counted = 0
        self.events_replayed = 0

    def load(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.values, self.budget_values = self.store.load_counters(now - KEEP_ENDED_WINDOWS_S)

    # --- reads (hot path) ------------------------------------------------------------------

    def current(
        self, environment: str, customer_id: str, resource_key: str, feature_id: str, start: int
    ) -> float:
        return self.values.get(
            CounterKey(environment, customer_id, resource_key, feature_id, start), 0.0
        )

    def budget_current(self, environment: str, budget: Budget, now: float) -> float:
        start, _ = window(budget.period, CALENDAR, now)
        return self.budget_values.get(BudgetKey(environment, budget.id, start), 0.0)

    # --- increments --------------------------------------------------------------------------

    def _increments(
        self,
        environment: str,
        customer_id: str,
        resource_key: str,
        feature: Feature,
        amount: float,
        at: float,
        now: float,
        deltas: dict[CounterKey, tuple[int, float]],
        budget_deltas: dict[BudgetKey, tuple[int, float]],
    ) -> int:
        """Add one usage amount to its counter and budgets; returns the latest window end."""
        env = self.state.env(environment)
        ent = env.view(customer_id, resource_key, now).entitlements.get(feature.id)
        if ent is not None and ent.reset_period is not None:
            start, end = window(ent.reset_period, ent.anchor, at)
        else:
            start, end = 0, 0
        key = CounterKey(environment, customer_id, resource_key, feature.id, start)
        _, previous = deltas.get(key, (end, 0.0))
        deltas[key] = (end, previous + amount)
        latest = end
        for budget in env.budgets_by_customer.get(customer_id, ()):
            if budget.featureId != feature.id:
                continue
            if budget.resourceId is not None and budget.resourceId != resource_key:
                continue
            b_start, b_end = window(budget.period, CALENDAR, at)
            b_key = BudgetKey(environment, budget.id, b_start)
            _, b_prev = budget_deltas.get(b_key, (b_end, 0.0))
            budget_deltas[b_key] = (b_end, b_prev + amount)
            latest = max(latest, b_end)
        return latest

    def apply_events(
        self,
        environment: str,
        events: Iterable[UsageEvent],
        *,
        replay: bool = False,
        skip_lifetime: bool = False,
        now: float | None = None,
    ) -> int:
        """Count deduplicated raw events, each at most once; returns how many counted.

        ``replay`` (the warehouse replay) counts into current windows only, and with
        ``skip_lifetime`` not into never-resetting ones (their identities may have expired).
        """
        now = time.time() if now is None else now
        features_by_event = self.state.env(environment).features_by_event
        counted = 0
        unusable: list[str] = []
        deltas: dict[CounterKey, tuple[int, float]] = {}
        budget_deltas: dict[BudgetKey, tuple[int, float]] = {}
        events = [ev for ev in events if ev.eventName in features_by_event]
        with self.store.write_lock:
            with self.store.transaction() as conn:
                already = self.store.claimed(
                    conn, environment, {(ev.customerId, ev.idempotencyKey) for ev in events}
                )
                for ev in events:
                    if (ev.customerId, ev.idempotencyKey) in already:
                        self.events_replayed += 1
                        continue
                    features = features_by_event[ev.eventName]
                    at = ev.timestamp / 1000.0
                    resource_key = ev.resourceId or NO_RESOURCE
                    ev_deltas: dict[CounterKey, tuple[int, float]] = {}
                    ev_budgets: dict[BudgetKey, tuple[int, float]] = {}
                    latest = 0
                    for feature in features:
                        amount = event_amount(feature, ev)
                        if amount is None:
                            continue
                        if dimension_value_problem(amount) is not None:
                            # Durable before ingestion bounded dimensions: a sum of such
                            # values becomes inf (then NULL), failing the whole batch for
                            # every customer on every retry. Left out, and said.
                            unusable.append(f"{ev.customerId}/{ev.idempotencyKey}")
                            continue
                        end = self._increments(
                            environment,
                            ev.customerId,
                            resource_key,
                            feature,
                            amount,
                            at,
                            now,
                            ev_deltas,
                            ev_budgets,
                        )
                        latest = max(latest, end)
                    if replay:
                        _drop_windows(ev_deltas, ev_budgets, now, skip_lifetime)
                    if not ev_deltas and not ev_budgets:
                        continue
                    expires = max(float(latest), at + self.dedup_window_s, now + 3600.0)
                    if not self.store.claim_event(
                        conn, environment, ev.customerId, ev.idempotencyKey, expires
                    ):
                        self.events_replayed += 1
                        continue
                    counted += 1
                    _merge(deltas, ev_deltas)
                    _merge(budget_deltas, ev_budgets)
                self.store.add_counters(conn, deltas, budget_deltas, now)
            self._apply_memory(deltas, budget_deltas)
        self.events_counted += counted
        if unusable:
            log.error(
                "%d usage events not counted: a numeric value beyond %.0f (customer/key: %s)",
                len(unusable),
                MAX_DIMENSION_VALUE,
                ", ".join(unusable[:5]),
            )
        return counted

    def report(
        self,
        environment: str,
        customer_id: str,
        resource_id: str | None,
        feature: Feature,
        value: float,
        behavior: str,
        at: float | None = None,
        claim: str | None = None,
    ) -> Reported:
        """ReportUsage: DELTA adds to, SET replaces, the current window's value.

        ``claim`` (a report's id) makes it idempotent: a claimed report changes nothing again
        (the in-process apply and the ``usage.reports`` consumer both pass the same id).
        """
        now = time.time()
        at = now if at is None else at
        resource_key = resource_id or NO_RESOURCE
        deltas: dict[CounterKey, tuple[int, float]] = {}
        budget_deltas: dict[BudgetKey, tuple[int, float]] = {}
        with self.store.write_lock:
            if behavior == "SET":
                # Stigg computes the delta for SET: new value minus what the window holds now.
                probe: dict[CounterKey, tuple[int, float]] = {}
                self._increments(
                    environment, customer_id, resource_key, feature, 0.0, at, now, probe, {}
                )
                (key,) = probe
                amount = value - self.values.get(key, 0.0)
            else:
                amount = value
            self._increments(
                environment,
                customer_id,
                resource_key,
                feature,
                amount,
                at,
                now,
                deltas,
                budget_deltas,
            )
            (key,) = deltas
            end, total = deltas[key]
            if not math.isfinite(self.values.get(key, 0.0) + total):
                # Only a counter already beyond range (values are bounded at every entry):
                # stored, inf - inf would be a NULL that fails every later write of the feed.
                log.error(
                    "usage report of customer %r not counted: counter out of range", key.customer_id
                )
                return Reported(self.values.get(key, 0.0), key.window_start, end, at)
            with self.store.transaction() as conn:
                if claim is not None:
                    expires = max(float(end), at + self.dedup_window_s, now + 3600.0)
                    if not self.store.claim_event(conn, environment, customer_id, claim, expires):
                        self.events_replayed += 1
                        return Reported(self.values.get(key, 0.0), key.window_start, end, at)
                self.store.add_counters(conn, deltas, budget_deltas, now)
            self._apply_memory(deltas, budget_deltas)
            return Reported(self.values.get(key, 0.0), key.window_start, end, at)

    def report_logged(self, environment: str, report: UsageReport, feature: Feature) -> Reported:
        """A report of the ``usage.reports`` log, claimed by its id: whichever reads it first
        (the instance that logged it, or any instance's consumer), it counts once."""
        return self.report(
            environment,
            report.customerId,
            report.resourceId,
            feature,
            report.value,
            report.updateBehavior,
            report.createdAt / 1000.0,
            claim=REPORT_CLAIM_PREFIX + report.id,
        )

    def spend(
        self,
        environment: str,
        customer_id: str,
        resource_id: str | None,
        currency_id: str,
        amount: float,
        at: float | None = None,
    ) -> None:
        """Credits consumed count toward the customer's currency budgets (governance)."""
        now = time.time()
        at = now if at is None else at
        resource_key = resource_id or NO_RESOURCE
        env = self.state.env(environment)
        budget_deltas: dict[BudgetKey, tuple[int, float]] = {}
        for budget in env.budgets_by_customer.get(customer_id, ()):
            if budget.currencyId != currency_id:
                continue
            if budget.resourceId is not None and budget.resourceId != resource_key:
                continue
            start, end = window(budget.period, CALENDAR, at)
            key = BudgetKey(environment, budget.id, start)
            _, previous = budget_deltas.get(key, (end, 0.0))
            budget_deltas[key] = (end, previous + amount)
        if not budget_deltas:
            return
        with self.store.write_lock:
            with self.store.transaction() as conn:
                self.store.add_counters(conn, {}, budget_deltas, now)
            self._apply_memory({}, budget_deltas)

    def _apply_memory(
        self,
        deltas: dict[CounterKey, tuple[int, float]],
        budget_deltas: dict[BudgetKey, tuple[int, float]],
    ) -> None:
        for key, (_, delta) in deltas.items():
            self.values[key] = self.values.get(key, 0.0) + delta
        for b_key, (_, delta) in budget_deltas.items():
            self.budget_values[b_key] = self.budget_values.get(b_key, 0.0) + delta

    def prune(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.store.prune(now, KEEP_ENDED_WINDOWS_S)
        horizon = now - KEEP_ENDED_WINDOWS_S
        with self.store.write_lock:
            # Drop ended windows from memory too; window_end is not in the key, so keep any
            # window that started within the horizon (ended ones age out on the next prune).
            self.values = {
                k: v
                for k, v in self.values.items()
                if k.window_start == 0 or k.window_start > horizon
            }
            self.budget_values = {
                k: v for k, v in self.budget_values.items() if k.window_start > horizon
            }


def _merge(into: dict, add: dict) -> None:
    for key, (end, delta) in add.items():
        _, previous = into.get(key, (end, 0.0))
        into[key] = (end, previous + delta)


def _drop_windows(
    deltas: dict[CounterKey, tuple[int, float]],
    budget_deltas: dict[BudgetKey, tuple[int, float]],
    now: float,
    skip_lifetime: bool,
) -> None:
    """Keep only increments into windows still open (and lifetime ones unless skipped)."""
    for key, (end, _) in list(deltas.items()):
        if (end == 0 and skip_lifetime) or (end != 0 and end <= now):
            del deltas[key]
    for b_key, (end, _) in list(budget_deltas.items()):
        if end <= now:
            del budget_deltas[b_key]
