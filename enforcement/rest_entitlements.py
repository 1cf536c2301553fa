"""REST entitlement checks, in the shapes the official ``stigg`` REST SDK parses.

- ``GET /api/v1/customers/{id}/entitlements/check``: one feature (``featureId``) or one credit
  currency (``currencyId``, optionally reserving credits atomically with ``reserveAmount`` and
  ``reservationId``);
- ``GET /api/v1/customers/{id}/entitlements``: every entitlement of the customer (or resource).

Everything is scoped to the environment of the caller's API key. An unknown customer is an
answer (``isGranted: false, accessDeniedReason: CustomerNotFound``), not an error, as in
Stigg's API; malformed parameters are 400s naming the parameter.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from enforcement import rest_params as p
from enforcement.engine import METERED, NUMERIC, CreditDecision, Decision, feature_kind
from enforcement.periods import iso

if TYPE_CHECKING:
    from enforcement.component import EnforcementComponent

MAX_TTL_S = 86_400


def json(data: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(data), status_code=status, media_type="application/json")


def feature_body(decision: Decision, feature_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "FEATURE", "isGranted": decision.has_access}
    if decision.reason:
        body["accessDeniedReason"] = decision.reason
    feature = decision.feature
    if feature is not None:
        body["feature"] = {
            "id": feature.id,
            "displayName": feature.displayName or feature.id,
            "featureStatus": "ACTIVE",
            "featureType": feature.featureType,
        }
    ent = decision.entitlement
    fb = decision.fallback
    kind = feature_kind(feature) if feature is not None else None
    if ent is not None:
        body["entitlementUpdatedAt"] = iso(ent.updated_at) if ent.updated_at else None
        if kind == METERED:
            body["currentUsage"] = decision.current_usage
            body["usageLimit"] = ent.usage_limit
            body["hasUnlimitedUsage"] = ent.unlimited
            if ent.reset_period is not None:
                start, end = decision.window
                body["resetPeriod"] = ent.reset_period
                body["usagePeriodAnchor"] = iso(ent.anchor_time)
                body["usagePeriodStart"] = iso(start)
                body["usagePeriodEnd"] = iso(end)
        elif kind == NUMERIC:
            body["usageLimit"] = ent.number_value
            body["hasUnlimitedUsage"] = ent.unlimited
    elif fb is not None:
        if fb.usageLimit is not None or fb.isUnlimited:
            body["usageLimit"] = fb.usageLimit
            body["hasUnlimitedUsage"] = fb.isUnlimited
        elif fb.value is not None:
            body["usageLimit"] = fb.value
    if decision.valid_until is not None:
        body["validUntil"] = iso(decision.valid_until)
    return {k: v for k, v in body.items() if v is not None}


def credit_body(
    decision: CreditDecision, currency_id: str, reservation: dict[str, Any] | None = None
) -> dict[str, Any]:
    currency = decision.currency
    b = decision.balance
    body: dict[str, Any] = {
        "type": "CREDIT",
        "isGranted": decision.has_access,
        "currency": {
            "currencyId": currency.id if currency else currency_id,
            "displayName": (currency.displayName or currency.id) if currency else currency_id,
            "unitSingular": currency.unit if currency else None,
            "unitPlural": currency.unit if currency else None,
        },
        "currentUsage": b.current_usage if b else 0.0,
        "usageLimit": b.usage_limit if b else 0.0,
        "usageUpdatedAt": iso(b.updated_at if b else time.time()),
        "reserved": b.reserved if b else 0.0,
    }
    if decision.reason:
        body["accessDeniedReason"] = decision.reason
    if b is not None and b.usage_period_end is not None:
        body["usagePeriodEnd"] = iso(b.usage_period_end)
    if b is not None and b.reserved_on_expired_grants:
        body["reservedOnExpiredGrants"] = b.reserved_on_expired_grants
    if reservation is not None:
        body["reservation"] = reservation
    body["currency"] = {k: v for k, v in body["currency"].items() if v is not None}
    return body


class EntitlementRoutes:
    def __init__(self, component: EnforcementComponent) -> None:
        self.c = component

    async def check(self, request: Request) -> Response:
        env = p.environment_of(request)
        customer_id = p.identifier(request.path_params["customer_id"], "customerId")
        assert customer_id is not None
        q = request.query_params
        # Each parameter on its own first, then how they combine (the document's CHECK_QUERY
        # states the same rules as a oneOf), so a message names the first wrong parameter.
        feature_id = p.query_str(q, "featureId")
        currency_id = p.query_str(q, "currencyId")
        resource_id = p.query_str(q, "resourceId")
        requested = p.query_number(q, "requestedUsage", minimum=0, maximum=p.MAX_NUMBER)
        values = p.query_values(q, "requestedValues")
        reserve = p.query_number(q, "reserveAmount", minimum=p.MIN_AMOUNT, maximum=p.MAX_AMOUNT)
        reservation_id = p.query_str(q, "reservationId")
        ttl = p.query_int(q, "reservationTtlSeconds", 1, MAX_TTL_S)
        expires_raw = q.get("reservationExpiresAt")
        expires_at = None
        if expires_raw is not None:
            expires_at = p.time_value(expires_raw, "reservationExpiresAt")
        metadata_raw = q.get("reservationMetadata")
        metadata = None
        if metadata_raw is not None:
            metadata = p.json_string_map(metadata_raw, "reservationMetadata")
        if bool(feature_id) == bool(currency_id):
            raise p.bad("exactly one of featureId and currencyId is required")
        reservation_params = (reservation_id, ttl, expires_raw, metadata_raw)
        if feature_id:
            if reserve is not None or any(x is not None for x in reservation_params):
                raise p.bad("reserveAmount and reservation* apply to currencyId checks only")
            d = self.c.engine.check(
                env,
                customer_id,
                feature_id,
                resource_id,
                requested_usage=requested,
                requested_values=values,
            )
            return json({"data": feature_body(d, feature_id)})
        assert currency_id is not None
        if reserve is None:
            if any(x is not None for x in reservation_params):
                raise p.bad("reservation parameters need reserveAmount")
            decision = self.c.engine.check_credit(
                env, customer_id, currency_id, resource_id, requested=requested or 0.0
            )
            return json({"data": credit_body(decision, currency_id)})
        if reservation_id is None:
            raise p.bad("reservationId is required with reserveAmount")
        if request.method == "HEAD":
            # HEAD is answered by this GET route, and a HEAD must not change anything.
            raise p.bad("reserveAmount holds credits: send the check as GET, not HEAD")
        if ttl is not None and expires_at is not None:
            raise p.bad("reservationTtlSeconds and reservationExpiresAt are mutually exclusive")
        if expires_at is not None:
            # Relative to the clock: the one rule of this route the document cannot state.
            if expires_at > time.time() + MAX_TTL_S:
                raise p.bad("reservationExpiresAt must be at most 24 hours ahead")
            if expires_at <= time.time():
                raise p.bad("reservationExpiresAt must be in the future")
        body = await self.c.credit_routes.check_and_reserve(
            env,
            customer_id,
            currency_id,
            resource_id,
            reserve,
            reservation_id,
            ttl_s=ttl,
            expires_at=expires_at,
            metadata=metadata,
        )
        return json({"data": body})

    async def list(self, request: Request) -> Response:
        env = p.environment_of(request)
        customer_id = p.identifier(request.path_params["customer_id"], "customerId")
        assert customer_id is not None
        resource_id = p.query_str(request.query_params, "resourceId")
        reason, decisions = self.c.engine.entitlements(env, customer_id, resource_id)
        items: list[dict[str, Any]] = [
            feature_body(d, d.feature.id if d.feature else "") for d in decisions
        ]
        if self.c.engine.lists_credits(reason):
            for currency_id in self.c.credits.currencies_of(env, customer_id, resource_id):
                decision = self.c.engine.check_credit(env, customer_id, currency_id, resource_id)
                items.append(credit_body(decision, currency_id))
        data: dict[str, Any] = {"entitlements": items}
        if reason:
            data["accessDeniedReason"] = reason
        return json({"data": data})
