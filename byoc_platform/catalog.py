"""Catalog, customer and credit entities as the control plane publishes them.

This is the contract between the control plane (Stigg Cloud or the local stand-in) and the
enforcement local store: the inbound sync carries these records, in a snapshot and then in a
change feed of :class:`Change` with a monotone cursor. Field names follow Stigg's camelCase.
"""

from __future__ import annotations

from typing import Literal

import msgspec

FeatureType = Literal["BOOLEAN", "NUMBER", "ENUM"]
MeterType = Literal["None", "Fluctuating", "Incremental"]
ResetPeriod = Literal["HOUR", "DAY", "WEEK", "MONTH", "YEAR"]
Aggregation = Literal["COUNT", "SUM", "MAX", "UNIQUE"]
GrantType = Literal["PAID", "PROMOTIONAL"]
GrantStatus = Literal["PAYMENT_PENDING", "ACTIVE", "EXPIRED", "VOIDED", "SCHEDULED"]
SubscriptionStatus = Literal["ACTIVE", "IN_TRIAL", "CANCELED", "EXPIRED", "NOT_STARTED"]
EntityKind = Literal[
    "feature", "plan", "addon", "customer", "subscription", "currency", "grant", "budget"
]


class _Entity(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str


class Meter(msgspec.Struct, kw_only=True, omit_defaults=True):
    """How raw events feed a metered feature: which event, how aggregated."""

    eventName: str
    aggregation: Aggregation = "COUNT"
    field: str | None = None  # numeric dimension for SUM/MAX, label for UNIQUE


class Feature(_Entity, kw_only=True):
    displayName: str = ""
    featureType: FeatureType = "BOOLEAN"
    meterType: MeterType = "None"
    unit: str | None = None
    unitPlural: str | None = None
    enumValues: list[str] = []
    meter: Meter | None = None
    # Credit-priced features: how many units of which currency one unit of usage costs.
    creditCurrencyId: str | None = None
    creditsPerUnit: float | None = None


class Entitlement(msgspec.Struct, kw_only=True, omit_defaults=True):
    featureId: str
    usageLimit: float | None = None
    hasUnlimitedUsage: bool = False
    hasSoftLimit: bool = False
    resetPeriod: ResetPeriod | None = None
    # Anchors: day of month (1-28) for MONTH/YEAR, ISO weekday (1-7) for WEEK, hour for DAY.
    resetAnchorDay: int | None = None
    resetAnchorHour: int | None = None
    resetAnchorMonth: int | None = None
    numberValue: float | None = None  # NUMBER features
    enumValues: list[str] = []  # ENUM features: the allowed values


class Plan(_Entity, kw_only=True):
    displayName: str = ""
    entitlements: list[Entitlement] = []


class Addon(_Entity, kw_only=True):
    displayName: str = ""
    entitlements: list[Entitlement] = []


class Customer(_Entity, kw_only=True):
    name: str = ""
    email: str | None = None
    archived: bool = False
    resourceIds: list[str] = []


class Subscription(_Entity, kw_only=True):
    customerId: str
    planId: str
    resourceId: str | None = None
    addonIds: list[str] = []
    status: SubscriptionStatus = "ACTIVE"
    startDate: str  # ISO-8601 UTC
    endDate: str | None = None
    # Overrides that apply to this subscription only.
    entitlements: list[Entitlement] = []


class Currency(_Entity, kw_only=True):
    displayName: str = ""
    unit: str = "credit"


class Grant(_Entity, kw_only=True):
    customerId: str
    currencyId: str
    amount: float
    resourceId: str | None = None
    displayName: str = ""
    grantType: GrantType = "PAID"
    priority: int = 50
    effectiveAt: str  # ISO-8601 UTC
    expireAt: str | None = None
    createdAt: str  # ISO-8601 UTC
    status: GrantStatus = "ACTIVE"


class Budget(_Entity, kw_only=True):
    """A governance cap: usage of a feature (or spend of a currency) per period."""

    customerId: str
    resourceId: str | None = None  # e.g. a team or an agent; None: the whole customer
    featureId: str | None = None
    currencyId: str | None = None
    limit: float
    period: ResetPeriod = "MONTH"


ENTITY_TYPES: dict[str, type[msgspec.Struct]] = {
    "feature": Feature,
    "plan": Plan,
    "addon": Addon,
    "customer": Customer,
    "subscription": Subscription,
    "currency": Currency,
    "grant": Grant,
    "budget": Budget,
}


class Change(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One entry of the change feed. Applying the same change twice is harmless (upsert)."""

    seq: int  # the cursor: strictly increasing per environment
    environment: str
    kind: EntityKind
    op: Literal["upsert", "delete"]
    id: str
    data: dict = {}  # the entity as JSON (the struct of ENTITY_TYPES[kind]); empty on delete


class ChangePage(msgspec.Struct, kw_only=True):
    changes: list[Change]
    cursor: int  # pass back as ``after`` for the next page
    hasMore: bool


def decode_entity(kind: str, data: dict) -> msgspec.Struct:
    """Validate a change's data into its entity struct (raises msgspec.ValidationError)."""
    return msgspec.convert(data, ENTITY_TYPES[kind])
