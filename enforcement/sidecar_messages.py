"""Engine decisions as the SidecarService messages the official SDK ships (betterproto), and
the request timestamps as sent (:func:`timestamp_problem`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import betterproto
from stigg_sidecar_sdk.generated.stigg.sidecar import v1 as pb

from byoc_platform.catalog import Currency, Feature
from byoc_platform.settings import FallbackEntitlement
from enforcement.engine import (
    BOOLEAN,
    ENUM,
    METERED,
    CreditDecision,
    Decision,
    feature_kind,
)

REASONS: dict[str, pb.AccessDeniedReason] = {
    "Unknown": pb.AccessDeniedReason.ACCESS_DENIED_REASON_UNKNOWN,
    "CustomerIsArchived": pb.AccessDeniedReason.ACCESS_DENIED_REASON_CUSTOMER_IS_ARCHIVED,
    "CustomerNotFound": pb.AccessDeniedReason.ACCESS_DENIED_REASON_CUSTOMER_NOT_FOUND,
    "CustomerResourceNotFound": (
        pb.AccessDeniedReason.ACCESS_DENIED_REASON_CUSTOMER_RESOURCE_NOT_FOUND
    ),
    "FeatureNotFound": pb.AccessDeniedReason.ACCESS_DENIED_REASON_FEATURE_NOT_FOUND,
    "NoActiveSubscription": pb.AccessDeniedReason.ACCESS_DENIED_REASON_NO_ACTIVE_SUBSCRIPTION,
    "NoFeatureEntitlementInSubscription": (
        pb.AccessDeniedReason.ACCESS_DENIED_REASON_NO_FEATURE_ENTITLEMENT_IN_SUBSCRIPTION
    ),
    "RequestedUsageExceedingLimit": (
        pb.AccessDeniedReason.ACCESS_DENIED_REASON_REQUESTED_USAGE_EXCEEDING_LIMIT
    ),
    "BudgetExceeded": pb.AccessDeniedReason.ACCESS_DENIED_REASON_BUDGET_EXCEEDED,
    "RequestedValuesMismatch": pb.AccessDeniedReason.ACCESS_DENIED_REASON_REQUESTED_VALUES_MISMATCH,
    "FeatureTypeMismatch": pb.AccessDeniedReason.ACCESS_DENIED_REASON_FEATURE_TYPE_MISMATCH,
    "InsufficientCredits": pb.AccessDeniedReason.ACCESS_DENIED_REASON_INSUFFICIENT_CREDITS,
    "Revoked": pb.AccessDeniedReason.ACCESS_DENIED_REASON_REVOKED,
    "EntitlementNotFound": pb.AccessDeniedReason.ACCESS_DENIED_REASON_ENTITLEMENT_NOT_FOUND,
}

RESET_PERIODS = {
    "DAY": pb.EntitlementResetPeriod.ENTITLEMENT_RESET_PERIOD_DAY,
    "HOUR": pb.EntitlementResetPeriod.ENTITLEMENT_RESET_PERIOD_HOUR,
    "MONTH": pb.EntitlementResetPeriod.ENTITLEMENT_RESET_PERIOD_MONTH,
    "WEEK": pb.EntitlementResetPeriod.ENTITLEMENT_RESET_PERIOD_WEEK,
    "YEAR": pb.EntitlementResetPeriod.ENTITLEMENT_RESET_PERIOD_YEAR,
}

FEATURE_TYPES = {
    "BOOLEAN": pb.FeatureType.FEATURE_TYPE_BOOLEAN,
    "NUMBER": pb.FeatureType.FEATURE_TYPE_NUMBER,
    "ENUM": pb.FeatureType.FEATURE_TYPE_ENUM,
}

METER_TYPES = {
    "None": pb.MeterType.METER_TYPE_NONE,
    "Fluctuating": pb.MeterType.METER_TYPE_FLUCTUATING,
    "Incremental": pb.MeterType.METER_TYPE_INCREMENTAL,
}

INT32_MAX = 2**31 - 1


def _time(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def reason_of(decision: Decision | CreditDecision) -> pb.AccessDeniedReason | None:
    return REASONS[decision.reason] if decision.reason else None


def feature_message(feature: Feature | None, feature_id: str) -> pb.EntitlementFeature:
    if feature is None:
        return pb.EntitlementFeature(id=feature_id)
    return pb.EntitlementFeature(
        id=feature.id,
        feature_type=FEATURE_TYPES[feature.featureType],
        units=feature.unit,
        units_plural=feature.unitPlural,
        meter_type=METER_TYPES[feature.meterType],
        is_metered=feature.meterType != "None",
    )


def _int32(value: float | None) -> int | None:
    if value is None:
        return None
    return max(-INT32_MAX - 1, min(INT32_MAX, int(value)))


def boolean(decision: Decision, feature_id: str) -> pb.BooleanEntitlement:
    return pb.BooleanEntitlement(feature=feature_message(decision.feature, feature_id))


def numeric(decision: Decision, feature_id: str) -> pb.NumericEntitlement:
    ent, fb = decision.entitlement, decision.fallback
    if ent is not None:
        return pb.NumericEntitlement(
            feature=feature_message(decision.feature, feature_id),
            value=_int32(ent.number_value),
            is_unlimited=ent.unlimited,
        )
    return pb.NumericEntitlement(
        feature=feature_message(decision.feature, feature_id),
        value=fb.value if fb else None,
        is_unlimited=bool(fb and fb.isUnlimited),
    )


def metered(decision: Decision, feature_id: str) -> pb.MeteredEntitlement:
    ent, fb = decision.entitlement, decision.fallback
    feature = feature_message(decision.feature, feature_id)
    if ent is None:
        return pb.MeteredEntitlement(
            feature=feature,
            usage_limit=fb.usageLimit if fb else None,
            is_unlimited=bool(fb and fb.isUnlimited),
            current_usage=decision.current_usage,
        )
    start, end = decision.window
    msg = pb.MeteredEntitlement(
        feature=feature,
        usage_limit=ent.usage_limit,
        is_unlimited=ent.unlimited,
        current_usage=decision.current_usage,
        has_soft_limit=ent.soft_limit,
    )
    if ent.reset_period is not None:
        msg.reset_period = RESET_PERIODS[ent.reset_period]
        msg.usage_period_anchor = _time(ent.anchor_time)
        msg.usage_period_start = _time(start)
        msg.usage_period_end = _time(end)
    return msg


def enum(decision: Decision, feature_id: str) -> pb.EnumEntitlement:
    ent, fb = decision.entitlement, decision.fallback
    values = list(ent.enum_values) if ent else list(fb.enumValues) if fb else []
    return pb.EnumEntitlement(
        feature=feature_message(decision.feature, feature_id), enum_values=values
    )


def kind_of(decision: Decision) -> str | None:
    return feature_kind(decision.feature) if decision.feature is not None else None


def oneof_fields(decision: Decision, feature_id: str) -> dict:
    """The ``entitlement`` oneof of GetEntitlement / EntitlementV2 for a decision."""
    kind = kind_of(decision)
    if kind == BOOLEAN:
        return {"boolean": boolean(decision, feature_id)}
    if kind == METERED:
        return {"metered": metered(decision, feature_id)}
    if kind == ENUM:
        return {"enum": enum(decision, feature_id)}
    if kind is None:
        fb = decision.fallback
        if fb is not None and (fb.usageLimit is not None or fb.isUnlimited):
            return {"metered": metered(decision, feature_id)}
        if fb is not None and fb.enumValues:
            return {"enum": enum(decision, feature_id)}
        return {"boolean": boolean(decision, feature_id)}
    return {"numeric": numeric(decision, feature_id)}


def currency_message(currency: Currency | None, currency_id: str) -> pb.EntitlementCurrency:
    if currency is None:
        return pb.EntitlementCurrency(currency_id=currency_id, display_name=currency_id)
    return pb.EntitlementCurrency(
        currency_id=currency.id,
        display_name=currency.displayName or currency.id,
        unit_singular=currency.unit,
        unit_plural=currency.unit,
    )


def credit(decision: CreditDecision, currency_id: str) -> pb.CreditEntitlement:
    b = decision.balance
    msg = pb.CreditEntitlement(
        currency=currency_message(decision.currency, currency_id),
        usage_limit=b.usage_limit if b else 0.0,
        current_usage=b.current_usage if b else 0.0,
        remaining=b.available if b else 0.0,
    )
    if b is not None and b.usage_period_end is not None:
        msg.usage_period_end = _time(b.usage_period_end)
    return msg


def entitlement_v2(decision: Decision, feature_id: str) -> pb.EntitlementV2:
    return pb.EntitlementV2(
        has_access=decision.has_access,
        is_fallback=decision.is_fallback,
        access_denied_reason=reason_of(decision),
        **oneof_fields(decision, feature_id),
    )


def credit_v2(decision: CreditDecision, currency_id: str) -> pb.EntitlementV2:
    return pb.EntitlementV2(
        has_access=decision.has_access,
        is_fallback=decision.is_fallback,
        access_denied_reason=reason_of(decision),
        credit=credit(decision, currency_id),
    )


def fallback_from(
    has_access: bool,
    *,
    value: int | None = None,
    is_unlimited: bool | None = None,
    usage_limit: float | None = None,
    enum_values: list[str] | None = None,
) -> FallbackEntitlement:
    return FallbackEntitlement(
        hasAccess=has_access,
        value=value,
        isUnlimited=bool(is_unlimited),
        usageLimit=usage_limit,
        enumValues=list(enum_values or []),
    )


def decision_key(rpc: str, d: Decision, feature_id: str) -> tuple:
    """Everything an answer to ``rpc`` is made of: equal keys give equal bytes."""
    f, e, fb = d.feature, d.entitlement, d.fallback
    return (
        rpc,
        feature_id,
        d.has_access,
        d.is_fallback,
        d.reason,
        d.requested_usage,
        d.current_usage,
        d.window,
        d.requested_values,
        (f.id, f.featureType, f.meterType, f.unit, f.unitPlural) if f is not None else None,
        (
            e.usage_limit,
            e.unlimited,
            e.soft_limit,
            e.reset_period,
            e.anchor_time,
            e.number_value,
            e.enum_values,
        )
        if e is not None
        else None,
        (fb.hasAccess, fb.usageLimit, fb.isUnlimited, fb.value, tuple(fb.enumValues))
        if fb is not None
        else None,
    )


# --- request timestamps as sent ----------------------------------------------------------------
#
# betterproto turns a google.protobuf.Timestamp into a datetime while parsing: seconds outside
# datetime's years 1..9999 fail the whole parse with a ValueError, and nanos outside
# [0, 1e9) are silently folded into the seconds. These mirrors of the usage requests read
# only their timestamps, as sent, so such a value is refused by name before the real parse.

# Timestamp's own range (google/protobuf/timestamp.proto), which is also datetime's.
MIN_TIMESTAMP_S = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_TIMESTAMP_S = 253_402_300_799  # 9999-12-31T23:59:59Z


@dataclass(eq=False, repr=False)
class _Timestamp(betterproto.Message):
    seconds: int = betterproto.int64_field(1)
    nanos: int = betterproto.int32_field(2)


@dataclass(eq=False, repr=False)
class _EventTime(betterproto.Message):  # pb.Event
    timestamp: _Timestamp = betterproto.message_field(6)  # noqa: RUF009 (a dataclass field)


@dataclass(eq=False, repr=False)
class _UsageTime(betterproto.Message):  # pb.ReportUsageRequest
    timestamp: _Timestamp = betterproto.message_field(7)  # noqa: RUF009 (a dataclass field)


@dataclass(eq=False, repr=False)
class _EventsTimes(betterproto.Message):  # pb.ReportEventsRequest
    events: list[_EventTime] = betterproto.message_field(1)  # noqa: RUF009 (a dataclass field)


@dataclass(eq=False, repr=False)
class _UsagesTimes(betterproto.Message):  # pb.ReportUsageBulkRequest
    usages: list[_UsageTime] = betterproto.message_field(1)  # noqa: RUF009 (a dataclass field)


def _raw_times(data: bytes, request_type: type) -> list[tuple[str, _Timestamp]]:
    """(field path, timestamp as sent) of a request; empty for requests without any."""
    if request_type is pb.ReportUsageRequest:
        return [("timestamp", _UsageTime().parse(data).timestamp)]
    if request_type is pb.ReportEventsRequest:
        events = _EventsTimes().parse(data).events
        return [(f"events[{i}].timestamp", e.timestamp) for i, e in enumerate(events)]
    if request_type is pb.ReportUsageBulkRequest:
        usages = _UsagesTimes().parse(data).usages
        return [(f"usages[{i}].timestamp", u.timestamp) for i, u in enumerate(usages)]
    return []


def timestamp_problem(data: bytes, request_type: type) -> str | None:
    """Why a timestamp of a serialised request cannot be read, naming it (None when all can,
    or the request cannot be parsed at all: the real parse reports that)."""
    try:
        times = _raw_times(data, request_type)
    except Exception:
        return None
    for path, ts in times:
        if not MIN_TIMESTAMP_S <= ts.seconds <= MAX_TIMESTAMP_S:
            return f"{path}.seconds is out of range (years 0001 to 9999)"
        if not 0 <= ts.nanos < 1_000_000_000:
            return f"{path}.nanos must be in [0, 999999999]"
    return None
