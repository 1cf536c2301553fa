"""The entitlement engine: decides a check from the in-memory snapshot, with no I/O.

Denial reasons (the contract's ``accessDeniedReason``), in the order they are decided:
CustomerNotFound (unknown customer and no fallback for the feature), CustomerIsArchived,
FeatureNotFound, FeatureTypeMismatch (a typed check on a feature of another type),
CustomerResourceNotFound, NoActiveSubscription, NoFeatureEntitlementInSubscription,
RequestedValuesMismatch (enum), RequestedUsageExceedingLimit (numeric/metered, unless the
entitlement has a soft limit), BudgetExceeded (a governance cap of the customer or of the
resource, for the feature, in its calendar period), InsufficientCredits (a credit-priced
feature, or a credit check, whose wallet cannot cover the request). Credit checks add
EntitlementNotFound (no such currency, or no grant of it for the customer) and Revoked (every
grant of the currency was voided). Unknown is kept for internal failures.

A metered check asks for ``requestedUsage`` (default 1, as Stigg's SDKs do): granted when
``currentUsage + requestedUsage <= usageLimit``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from byoc_platform.catalog import Currency, Feature
from byoc_platform.settings import FallbackEntitlement
from enforcement.counters import UsageCounters
from enforcement.state import NO_RESOURCE, EffectiveEntitlement, LocalState

# Check kinds of the typed sidecar RPCs.
BOOLEAN, NUMERIC, METERED, ENUM = "BOOLEAN", "NUMERIC", "METERED", "ENUM"


def feature_kind(feature: Feature) -> str:
    if feature.featureType == "BOOLEAN":
        return BOOLEAN
    if feature.featureType == "ENUM":
        return ENUM
    return METERED if feature.meterType != "None" else NUMERIC


@dataclass(slots=True)
class Decision:
    has_access: bool
    reason: str | None = None
    feature: Feature | None = None
    entitlement: EffectiveEntitlement | None = None
    current_usage: float = 0.0
    window: tuple[int, int] = (0, 0)
    requested_usage: float | None = None
    requested_values: tuple[str, ...] = ()
    is_fallback: bool = False
    fallback: FallbackEntitlement | None = None  # the fallback answer used, if any
    valid_until: float | None = None


@dataclass(frozen=True, slots=True)
class WalletBalance:
    """One wallet (customer, currency, resource) as the ledger reported it last.

    ``usage_limit - current_usage == available`` (Stigg's CREDIT entitlement fields):
    the limit is what the usable grants hold in all, the usage what was consumed or is held.
    """

    usage_limit: float
    current_usage: float
    reserved: float
    available: float
    any_grant: bool  # the wallet ever received a grant (issued or awaiting payment)
    revoked: bool  # grants were voided and nothing usable or scheduled is left
    updated_at: float
    usage_period_end: float | None = None
    # Held by open reservations on grants that expired (or were voided) during the hold: not
    # in current_usage, still releasable (Stigg's reservedOnExpiredGrants).
    reserved_on_expired_grants: float = 0.0


@dataclass(slots=True)
class CreditDecision:
    has_access: bool
    reason: str | None
    currency: Currency | None
    balance: WalletBalance | None
    requested: float = 0.0
    is_fallback: bool = False


BalanceReader = Callable[[str, str, str | None, str], WalletBalance | None]


def _no_wallets(env: str, customer: str, resource: str | None, currency: str) -> None:
    return None


class EntitlementEngine:
    """Checks over a :class:`LocalState` and :class:`UsageCounters` (both in memory)."""

    def __init__(
        self,
        state: LocalState,
        counters: UsageCounters,
        *,
        fallbacks: dict[str, FallbackEntitlement] | None = None,
        is_stale: Callable[[str], bool] = lambda env: False,
        balances: BalanceReader = _no_wallets,
    ) -> None:
        self.state = state
        self.counters = counters
        self.fallbacks = fallbacks or {}
        self.is_stale = is_stale
        self.balances = balances

    def check(
        self,
        environment: str,
        customer_id: str,
        feature_id: str,
        resource_id: str | None = None,
        *,
        requested_usage: float | None = None,
        requested_values: tuple[str, ...] = (),
        kind: str | None = None,
        fallback: FallbackEntitlement | None = None,
        now: float | None = None,
    ) -> Decision:
        now = time.time() if now is None else now
        decision = self._decide(
            environment,
            customer_id,
            feature_id,
            resource_id,
            requested_usage,
            requested_values,
            kind,
            fallback,
            now,
        )
        if not decision.is_fallback and self.is_stale(environment):
            decision.is_fallback = True  # answered from local state the sync could not refresh
        return decision

    def _decide(
        self,
        environment: str,
        customer_id: str,
        feature_id: str,
        resource_id: str | None,
        requested_usage: float | None,
        requested_values: tuple[str, ...],
        kind: str | None,
        fallback: FallbackEntitlement | None,
        now: float,
    ) -> Decision:
        env = self.state.env(environment)
        feature = env.features.get(feature_id)
        customer = env.customers.get(customer_id)
        if customer is None:
            chosen = fallback or self.fallbacks.get(feature_id)
            if chosen is not None:
                return Decision(
                    chosen.hasAccess,
                    None if chosen.hasAccess else "CustomerNotFound",
                    feature=feature,
                    requested_usage=requested_usage,
                    requested_values=requested_values,
                    is_fallback=True,
                    fallback=chosen,
                )
            return Decision(False, "CustomerNotFound", feature=feature)
        if customer.archived:
            return Decision(False, "CustomerIsArchived", feature=feature)
        if feature is None:
            return Decision(False, "FeatureNotFound")
        fkind = feature_kind(feature)
        if kind is not None and kind != fkind:
            return Decision(False, "FeatureTypeMismatch", feature=feature)
        resource_key = resource_id or NO_RESOURCE
        if resource_id and resource_id not in env.customer_resources(customer_id):
            return Decision(False, "CustomerResourceNotFound", feature=feature)
        view = env.view(customer_id, resource_key, now)
        if not view.active:
            return Decision(False, "NoActiveSubscription", feature=feature)
        ent = view.entitlements.get(feature_id)
        valid_until = view.valid_until if view.valid_until != float("inf") else None
        if ent is None:
            return Decision(
                False,
                "NoFeatureEntitlementInSubscription",
                feature=feature,
                valid_until=valid_until,
            )
        decision = Decision(
            True,
            None,
            feature=feature,
            entitlement=ent,
            valid_until=valid_until,
            requested_values=requested_values,
        )
        if fkind == ENUM:
            allowed = ent.enum_values
            if any(v not in allowed for v in requested_values):
                decision.has_access, decision.reason = False, "RequestedValuesMismatch"
            return decision
        if fkind == NUMERIC:
            decision.requested_usage = requested_usage
            limit = ent.number_value
            if (
                requested_usage is not None
                and not ent.unlimited
                and limit is not None
                and requested_usage > limit
            ):
                decision.has_access, decision.reason = False, "RequestedUsageExceedingLimit"
            return decision
        if fkind == BOOLEAN:
            return decision
        # Metered.
        requested = 1.0 if requested_usage is None else requested_usage
        decision.requested_usage = requested
        start, end = ent.current_window(now)
        decision.window = (start, end)
        current = self.counters.current(environment, customer_id, resource_key, feature_id, start)
        decision.current_usage = current
        if (
            not ent.unlimited
            and not ent.soft_limit
            and (ent.usage_limit is None or current + requested > ent.usage_limit)
        ):
            decision.has_access, decision.reason = False, "RequestedUsageExceedingLimit"
            return decision
        for budget in env.budgets_by_customer.get(customer_id, ()):
            if budget.featureId != feature_id:
                continue
            if budget.resourceId is not None and budget.resourceId != resource_key:
                continue
            used = self.counters.budget_current(environment, budget, now)
            if used + requested > budget.limit:
                decision.has_access, decision.reason = False, "BudgetExceeded"
                return decision
        if feature.creditCurrencyId:
            cost = requested * (feature.creditsPerUnit or 1.0)
            balance = self.balances(environment, customer_id, resource_id, feature.creditCurrencyId)
            if balance is None or balance.available < cost:
                decision.has_access, decision.reason = False, "InsufficientCredits"
        return decision

    def check_credit(
        self,
        environment: str,
        customer_id: str,
        currency_id: str,
        resource_id: str | None = None,
        *,
        requested: float = 0.0,
        now: float | None = None,
    ) -> CreditDecision:
        """Whether the wallet covers ``requested`` credits (0: any positive balance)."""
        now = time.time() if now is None else now
        env = self.state.env(environment)
        stale = self.is_stale(environment)
        currency = env.currencies.get(currency_id)
        customer = env.customers.get(customer_id)
        if customer is None:
            return CreditDecision(False, "CustomerNotFound", currency, None, requested, stale)
        if customer.archived:
            return CreditDecision(False, "CustomerIsArchived", currency, None, requested, stale)
        if resource_id and resource_id not in env.customer_resources(customer_id):
            return CreditDecision(
                False, "CustomerResourceNotFound", currency, None, requested, stale
            )
        balance = self.balances(environment, customer_id, resource_id, currency_id)
        if currency is None or balance is None or not balance.any_grant:
            return CreditDecision(False, "EntitlementNotFound", currency, balance, requested, stale)
        if balance.revoked:
            return CreditDecision(False, "Revoked", currency, balance, requested, stale)
        for budget in env.budgets_by_customer.get(customer_id, ()):
            if budget.currencyId != currency_id:
                continue
            if budget.resourceId is not None and budget.resourceId != (resource_id or NO_RESOURCE):
                continue
            if self.counters.budget_current(environment, budget, now) + requested > budget.limit:
                return CreditDecision(False, "BudgetExceeded", currency, balance, requested, stale)
        enough = balance.available >= requested if requested > 0 else balance.available > 0
        if not enough:
            return CreditDecision(False, "InsufficientCredits", currency, balance, requested, stale)
        return CreditDecision(True, None, currency, balance, requested, stale)

    @staticmethod
    def lists_credits(reason: str | None) -> bool:
        """Whether a listing denied for ``reason`` still lists the scope's credits: a credit
        check needs no subscription, so a customer without one still has its wallets."""
        return reason in (None, "NoActiveSubscription")

    def entitlements(
        self,
        environment: str,
        customer_id: str,
        resource_id: str | None = None,
        now: float | None = None,
    ) -> tuple[str | None, list[Decision]]:
        """Every entitlement of a scope (GetEntitlements): (accessDeniedReason, decisions)."""
        now = time.time() if now is None else now
        env = self.state.env(environment)
        customer = env.customers.get(customer_id)
        if customer is None:
            return "CustomerNotFound", []
        if customer.archived:
            return "CustomerIsArchived", []
        if resource_id and resource_id not in env.customer_resources(customer_id):
            return "CustomerResourceNotFound", []
        view = env.view(customer_id, resource_id or NO_RESOURCE, now)
        if not view.active:
            return "NoActiveSubscription", []
        decisions = [
            self.check(environment, customer_id, feature_id, resource_id, now=now)
            for feature_id in sorted(view.entitlements)
        ]
        return None, decisions
