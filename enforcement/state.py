"""The in-memory snapshot the entitlement engine reads: catalog, customers, subscriptions.

Sync writes entities here (after persisting them in the store); the engine only reads. Per
customer and resource scope, the effective entitlements are merged once and cached until a
change touches them or a subscription boundary (start or end date) passes, so a check costs a
few dict lookups. Everything is plain Python objects in one process: no I/O on the check path.

Merge rules (per scope, over the subscriptions active at the moment):
- within one subscription: plan entitlements, then each add-on ADDS to them (limits and numeric
  values add, unlimited wins, enum values unite), then the subscription's own overrides
  REPLACE the feature's entitlement;
- across several active subscriptions of the same scope: the most permissive value wins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from byoc_platform.catalog import (
    Addon,
    Budget,
    Currency,
    Customer,
    Entitlement,
    Feature,
    Grant,
    Plan,
    Subscription,
    decode_entity,
)
from enforcement.periods import Anchor, parse_time, window

log = logging.getLogger(__name__)

ACTIVE_STATUSES = frozenset({"ACTIVE", "IN_TRIAL"})
NO_RESOURCE = ""  # the scope key of customer-level (resource-less) subscriptions


@dataclass(slots=True)
class EffectiveEntitlement:
    """One feature's entitlement for one (customer, resource) scope, merged."""

    feature: Feature
    usage_limit: float | None = None
    unlimited: bool = False
    soft_limit: bool = False
    reset_period: str | None = None
    anchor: Anchor = field(default_factory=Anchor)
    anchor_time: float = 0.0  # usagePeriodAnchor (epoch seconds)
    number_value: float | None = None
    enum_values: tuple[str, ...] = ()
    updated_at: float = 0.0
    # Cached current window: recomputed only when the clock passes its end.
    win_start: int = 0
    win_end: int = 0

    @property
    def metered(self) -> bool:
        return self.feature.meterType != "None"

    def current_window(self, now: float) -> tuple[int, int]:
        if self.reset_period is None:
            return 0, 0
        if not (self.win_start <= now < self.win_end):
            self.win_start, self.win_end = window(self.reset_period, self.anchor, now)
        return self.win_start, self.win_end


@dataclass(slots=True)
class ScopeView:
    """The merged entitlements of one (customer, resource) scope, valid until a boundary."""

    entitlements: dict[str, EffectiveEntitlement]
    active: bool  # at least one active subscription
    valid_until: float  # next subscription start/end that can change this view
    ever_subscribed: bool


@dataclass(slots=True)
class EnvState:
    """Everything one environment's control plane published, indexed for checks."""

    features: dict[str, Feature] = field(default_factory=dict)
    plans: dict[str, Plan] = field(default_factory=dict)
    addons: dict[str, Addon] = field(default_factory=dict)
    customers: dict[str, Customer] = field(default_factory=dict)
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    currencies: dict[str, Currency] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)
    budgets: dict[str, Budget] = field(default_factory=dict)
    updated_at: dict[str, float] = field(default_factory=dict)  # "kind/id" -> apply time
    # Indexes derived from the above.
    subs_by_customer: dict[str, set[str]] = field(default_factory=dict)
    budgets_by_customer: dict[str, list[Budget]] = field(default_factory=dict)
    features_by_event: dict[str, list[Feature]] = field(default_factory=dict)
    views: dict[tuple[str, str], ScopeView] = field(default_factory=dict)

    _KINDS = {
        "feature": "features",
        "plan": "plans",
        "addon": "addons",
        "customer": "customers",
        "subscription": "subscriptions",
        "currency": "currencies",
        "grant": "grants",
        "budget": "budgets",
    }

    def apply(self, kind: str, op: str, entity_id: str, data: dict, at: float) -> None:
        """Upsert or delete one entity (idempotent: applying it twice changes nothing)."""
        table: dict = getattr(self, self._KINDS[kind])
        old = table.get(entity_id)
        if op == "delete":
            table.pop(entity_id, None)
            new = None
        else:
            new = decode_entity(kind, data)
            table[entity_id] = new
        self.updated_at[f"{kind}/{entity_id}"] = at
        self._reindex(kind, old, new)

    def _reindex(self, kind: str, old: msgspec.Struct | None, new: msgspec.Struct | None) -> None:
        if kind == "subscription":
            for sub in (old, new):
                if isinstance(sub, Subscription):
                    self._drop_views(sub.customerId)
            if isinstance(old, Subscription):
                self.subs_by_customer.get(old.customerId, set()).discard(old.id)
            if isinstance(new, Subscription):
                self.subs_by_customer.setdefault(new.customerId, set()).add(new.id)
        elif kind == "customer":
            for cust in (old, new):
                if isinstance(cust, Customer):
                    self._drop_views(cust.id)
        elif kind == "budget":
            customer_ids = {b.customerId for b in (old, new) if isinstance(b, Budget)}
            for customer_id in customer_ids:
                self.budgets_by_customer[customer_id] = [
                    b for b in self.budgets.values() if b.customerId == customer_id
                ]
        elif kind in ("feature", "plan", "addon"):
            # Catalog changes reach many customers: drop every cached view (rebuilt lazily).
            self.views.clear()
            if kind == "feature":
                index: dict[str, list[Feature]] = {}
                for feature in self.features.values():
                    if feature.meter is not None:
                        index.setdefault(feature.meter.eventName, []).append(feature)
                self.features_by_event = index

    def _drop_views(self, customer_id: str) -> None:
        # list() snapshots the keys atomically: the consumer thread may build views meanwhile.
        for key in list(self.views):
            if key[0] == customer_id:
                self.views.pop(key, None)

    # --- reads -------------------------------------------------------------------------

    def customer_resources(self, customer_id: str) -> set[str]:
        customer = self.customers.get(customer_id)
        known = set(customer.resourceIds) if customer else set()
        for sub_id in self.subs_by_customer.get(customer_id, ()):
            resource_id = self.subscriptions[sub_id].resourceId
            if resource_id:
                known.add(resource_id)
        return known

    def view(self, customer_id: str, resource_key: str, now: float) -> ScopeView:
        key = (customer_id, resource_key)
        cached = self.views.get(key)
        if cached is not None and now < cached.valid_until:
            return cached
        view = self._build_view(customer_id, resource_key, now)
        self.views[key] = view
        return view

    def _build_view(self, customer_id: str, resource_key: str, now: float) -> ScopeView:
        merged: dict[str, EffectiveEntitlement] = {}
        valid_until = float("inf")
        active = False
        ever = False
        for sub_id in sorted(self.subs_by_customer.get(customer_id, ())):
            sub = self.subscriptions[sub_id]
            if (sub.resourceId or NO_RESOURCE) != resource_key:
                continue
            ever = True
            start = parse_time(sub.startDate)
            end = parse_time(sub.endDate) if sub.endDate else float("inf")
            for boundary in (start, end):
                if boundary > now:
                    valid_until = min(valid_until, boundary)
            if sub.status not in ACTIVE_STATUSES or not (start <= now < end):
                continue
            active = True
            sub_ents = self._subscription_entitlements(sub, start)
            for feature_id, ent in sub_ents.items():
                merged[feature_id] = _most_permissive(merged.get(feature_id), ent)
        return ScopeView(merged, active, valid_until, ever)

    def _subscription_entitlements(
        self, sub: Subscription, start: float
    ) -> dict[str, EffectiveEntitlement]:
        updated = max(
            self.updated_at.get(f"subscription/{sub.id}", 0.0),
            self.updated_at.get(f"plan/{sub.planId}", 0.0),
        )
        result: dict[str, EffectiveEntitlement] = {}
        plan = self.plans.get(sub.planId)
        for ent in plan.entitlements if plan else ():
            self._put(result, ent, start, updated, replace=True)
        for addon_id in sub.addonIds:
            addon = self.addons.get(addon_id)
            for ent in addon.entitlements if addon else ():
                self._put(result, ent, start, updated, replace=False)
        for ent in sub.entitlements:
            self._put(result, ent, start, updated, replace=True)
        return result

    def _put(
        self,
        into: dict[str, EffectiveEntitlement],
        ent: Entitlement,
        anchor_time: float,
        updated: float,
        *,
        replace: bool,
    ) -> None:
        feature = self.features.get(ent.featureId)
        if feature is None:  # an entitlement to a feature the catalog does not (yet) hold
            return
        new = _effective(feature, ent, anchor_time, updated)
        old = into.get(ent.featureId)
        into[ent.featureId] = new if replace or old is None else _added(old, new)


def _effective(
    feature: Feature, ent: Entitlement, anchor_time: float, updated: float
) -> EffectiveEntitlement:
    base = Anchor.from_datetime(datetime.fromtimestamp(anchor_time, UTC))
    anchor = Anchor(
        month=ent.resetAnchorMonth or base.month,
        day=ent.resetAnchorDay or base.day,
        weekday=(ent.resetAnchorDay or base.weekday) if ent.resetPeriod == "WEEK" else base.weekday,
        hour=ent.resetAnchorHour if ent.resetAnchorHour is not None else base.hour,
    )
    return EffectiveEntitlement(
        feature=feature,
        usage_limit=ent.usageLimit,
        unlimited=ent.hasUnlimitedUsage,
        soft_limit=ent.hasSoftLimit,
        reset_period=ent.resetPeriod,
        anchor=anchor,
        anchor_time=anchor_time,
        number_value=ent.numberValue,
        enum_values=tuple(ent.enumValues),
        updated_at=updated,
    )


def _sum(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _max(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _union(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    return a + tuple(v for v in b if v not in a)


def _added(old: EffectiveEntitlement, new: EffectiveEntitlement) -> EffectiveEntitlement:
    """An add-on's entitlement on top of the plan's: limits add up."""
    return EffectiveEntitlement(
        feature=old.feature,
        usage_limit=_sum(old.usage_limit, new.usage_limit),
        unlimited=old.unlimited or new.unlimited,
        soft_limit=old.soft_limit or new.soft_limit,
        reset_period=old.reset_period or new.reset_period,
        anchor=old.anchor,
        anchor_time=old.anchor_time,
        number_value=_sum(old.number_value, new.number_value),
        enum_values=_union(old.enum_values, new.enum_values),
        updated_at=max(old.updated_at, new.updated_at),
    )


def _most_permissive(
    old: EffectiveEntitlement | None, new: EffectiveEntitlement
) -> EffectiveEntitlement:
    if old is None:
        return new
    return EffectiveEntitlement(
        feature=old.feature,
        usage_limit=_max(old.usage_limit, new.usage_limit),
        unlimited=old.unlimited or new.unlimited,
        soft_limit=old.soft_limit or new.soft_limit,
        reset_period=old.reset_period or new.reset_period,
        anchor=old.anchor,
        anchor_time=old.anchor_time,
        number_value=_max(old.number_value, new.number_value),
        enum_values=_union(old.enum_values, new.enum_values),
        updated_at=max(old.updated_at, new.updated_at),
    )


class LocalState:
    """All environments' snapshots; the engine and the counters read it, sync writes it."""

    def __init__(self) -> None:
        self.envs: dict[str, EnvState] = {}

    def env(self, environment: str) -> EnvState:
        state = self.envs.get(environment)
        if state is None:
            state = self.envs[environment] = EnvState()
        return state

    def apply(
        self, environment: str, kind: str, op: str, entity_id: str, data: dict, at: float
    ) -> None:
        self.env(environment).apply(kind, op, entity_id, data, at)
