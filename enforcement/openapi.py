"""OpenAPI 3.1 ``paths`` of the enforcement routes (merged into /openapi.json by the runtime).

Every documented 4xx is one the routes really answer; bad input never reaches a 5xx.
"""

from __future__ import annotations

from typing import Any

from byoc_platform.api_errors import ERROR_BODY_SCHEMA
from enforcement import rest_params as p

_ERROR = ERROR_BODY_SCHEMA
# Identifiers: 1-255 characters, no control characters (rest_params.identifier).
_ID = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^\\u0000-\\u001f]+$"}
_CURSOR = {"type": "string", "pattern": f"^[0-9]{{1,{p.MAX_CURSOR_DIGITS}}}$"}
_AMOUNT = {"type": "number", "minimum": p.MIN_AMOUNT, "maximum": p.MAX_AMOUNT}
# RFC 3339 date-times of the years 1900-2999 (rest_params.time_datetime).
_TIME = {"type": "string", "format": "date-time", "pattern": p.TIME_PATTERN}
_AT = {"type": "string", "format": "date-time"}  # times the API answers
# Optional body fields may also be null (the REST SDK sends null for an explicit None).
_OPT_ID = {**_ID, "type": ["string", "null"]}
_OPT_TIME = {**_TIME, "type": ["string", "null"]}
_FINITE = {"type": "number", "minimum": -p.MAX_NUMBER, "maximum": p.MAX_NUMBER}
_NUM = {"type": "number"}
_NULLABLE_NUM = {"type": ["number", "null"]}
_REASONS = [
    "FeatureNotFound",
    "CustomerNotFound",
    "CustomerIsArchived",
    "CustomerResourceNotFound",
    "NoActiveSubscription",
    "NoFeatureEntitlementInSubscription",
    "RequestedUsageExceedingLimit",
    "RequestedValuesMismatch",
    "BudgetExceeded",
    "Unknown",
    "FeatureTypeMismatch",
    "Revoked",
    "InsufficientCredits",
    "EntitlementNotFound",
]
_EVENT_TYPES = [
    "CREDITS_GRANTED",
    "CREDITS_EXPIRED",
    "CREDITS_CONSUMED",
    "CREDITS_VOIDED",
    "CREDITS_UPDATED",
    "CREDITS_CONSUMPTION_TRANSFER_SOURCE",
    "CREDITS_CONSUMPTION_TRANSFER_TARGET",
    "CREDITS_RESERVED",
    "CREDITS_RESERVATION_RELEASED",
    "CREDITS_RESERVATION_EXPIRED",
]
_TYPES_RE = "|".join(_EVENT_TYPES)

FEATURE_ENTITLEMENT = {
    "type": "object",
    "required": ["type", "isGranted"],
    "properties": {
        "type": {"const": "FEATURE"},
        "isGranted": {"type": "boolean"},
        "accessDeniedReason": {"enum": _REASONS},
        "currentUsage": _NUM,
        "usageLimit": _NULLABLE_NUM,
        "hasUnlimitedUsage": {"type": "boolean"},
        "resetPeriod": {"enum": ["YEAR", "MONTH", "WEEK", "DAY", "HOUR"]},
        "usagePeriodAnchor": _AT,
        "usagePeriodStart": _AT,
        "usagePeriodEnd": _AT,
        "validUntil": _AT,
        "entitlementUpdatedAt": _AT,
        "feature": {
            "type": "object",
            "required": ["id", "displayName", "featureStatus", "featureType"],
            "properties": {
                "id": {"type": "string"},
                "displayName": {"type": "string"},
                "featureStatus": {"enum": ["NEW", "SUSPENDED", "ACTIVE"]},
                "featureType": {"enum": ["BOOLEAN", "NUMBER", "ENUM"]},
            },
        },
    },
}
RESERVATION = {
    "type": "object",
    "required": ["id", "amount", "expiresAt", "status"],
    "properties": {
        "id": {"type": "string"},
        "amount": _NUM,
        "consumedAmount": _NUM,
        "expiresAt": _AT,
        "status": {"enum": ["ACTIVE", "RELEASED"]},
    },
}
CREDIT_ENTITLEMENT = {
    "type": "object",
    "required": ["type", "isGranted", "currency", "currentUsage", "usageLimit", "usageUpdatedAt"],
    "properties": {
        "type": {"const": "CREDIT"},
        "isGranted": {"type": "boolean"},
        "accessDeniedReason": {"enum": _REASONS},
        "currency": {
            "type": "object",
            "required": ["currencyId", "displayName"],
            "properties": {
                "currencyId": {"type": "string"},
                "displayName": {"type": "string"},
                "unitSingular": {"type": "string"},
                "unitPlural": {"type": "string"},
            },
        },
        "currentUsage": _NUM,
        "usageLimit": _NUM,
        "usageUpdatedAt": _AT,
        "reserved": _NUM,
        "reservedOnExpiredGrants": _NUM,
        "usagePeriodEnd": _AT,
        "reservation": RESERVATION,
    },
}
ENTITLEMENT = {"oneOf": [FEATURE_ENTITLEMENT, CREDIT_ENTITLEMENT]}
CREDIT_SUMMARY = {
    "type": "object",
    "required": ["currencyId", "currentUsage", "usageLimit", "timestamp"],
    "properties": {
        "currencyId": {"type": "string"},
        "currentUsage": _NUM,
        "usageLimit": _NUM,
        "timestamp": _AT,
    },
}
GRANT = {
    "type": "object",
    "required": [
        "id",
        "amount",
        "consumedAmount",
        "cost",
        "createdAt",
        "currencyId",
        "customerId",
        "displayName",
        "effectiveAt",
        "grantType",
        "metadata",
        "paymentCollection",
        "priority",
        "status",
        "updatedAt",
    ],
    "properties": {
        "id": {"type": "string"},
        "amount": _NUM,
        "consumedAmount": _NUM,
        "cost": {"type": "object", "properties": {"amount": _NUM, "currency": {"type": "string"}}},
        "comment": {"type": "string"},
        "createdAt": _AT,
        "updatedAt": _AT,
        "currencyId": {"type": "string"},
        "customerId": {"type": "string"},
        "resourceId": {"type": "string"},
        "displayName": {"type": "string"},
        "effectiveAt": _AT,
        "expireAt": {"type": ["string", "null"], "format": "date-time"},
        "voidedAt": _AT,
        "grantType": {"enum": ["PAID", "PROMOTIONAL", "RECURRING", "OVERDRAFT"]},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "paymentCollection": {"enum": ["NOT_REQUIRED", "PROCESSING", "FAILED", "ACTION_REQUIRED"]},
        "priority": _NUM,
        "status": {"enum": ["PAYMENT_PENDING", "ACTIVE", "EXPIRED", "VOIDED", "SCHEDULED"]},
    },
}
LEDGER_EVENT = {
    "type": "object",
    "required": [
        "eventId",
        "eventType",
        "amount",
        "creditGrantId",
        "creditCurrencyId",
        "customerId",
        "timestamp",
    ],
    "properties": {
        "eventId": {"type": "string"},
        "eventType": {"enum": _EVENT_TYPES},
        "amount": _NUM,
        "creditGrantId": {"type": "string"},
        "creditCurrencyId": {"type": "string"},
        "customerId": {"type": "string"},
        "resourceId": {"type": ["string", "null"]},
        "featureId": {"type": ["string", "null"]},
        "reservationId": {"type": ["string", "null"]},
        "holdReturnedAmount": _NUM,
        "breakdown": {"type": "array", "items": {"type": "object"}},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "timestamp": _AT,
    },
}
PAGINATION = {
    "type": "object",
    "properties": {
        "next": {"type": ["string", "null"]},
        "prev": {"type": ["string", "null"]},
    },
}
DIMENSIONS = {
    "type": ["object", "null"],
    "additionalProperties": {"anyOf": [{"type": ["string", "boolean"]}, _FINITE]},
}
CONSUMPTION = {
    "type": "object",
    "required": ["amount", "currencyId", "customerId", "idempotencyKey"],
    "additionalProperties": False,
    "properties": {
        "amount": _AMOUNT,
        "currencyId": _ID,
        "customerId": _ID,
        "idempotencyKey": _ID,
        "createdAt": _OPT_TIME,
        "dimensions": DIMENSIONS,
        "resourceId": _OPT_ID,
    },
}


_RESERVATION_ONLY = (
    "reserveAmount",
    "reservationId",
    "reservationTtlSeconds",
    "reservationExpiresAt",
    "reservationMetadata",
)


def _none_of(*names: str) -> dict[str, Any]:
    return {"not": {"anyOf": [{"required": [name]} for name in names]}}


CHECK_QUERY = {
    "type": "object",
    "properties": {
        "featureId": {**_ID, "description": "Feature to check (or currencyId, not both)"},
        "currencyId": {**_ID, "description": "Credit currency to check (or featureId)"},
        "resourceId": {**_ID, "description": "Resource scope"},
        "requestedUsage": {
            "type": "number",
            "minimum": 0,
            "maximum": p.MAX_NUMBER,
            "description": "Usage to evaluate (metered/numeric; default 1 for metered)",
        },
        "requestedValues": {
            "type": "string",
            "pattern": p.VALUES_PATTERN,
            "description": "Comma-separated enum values",
        },
        "reserveAmount": {
            **_AMOUNT,
            "description": "Credits to reserve atomically (currencyId only; needs reservationId)",
        },
        "reservationId": {**_ID, "description": "Client reservation id (retried: same result)"},
        "reservationTtlSeconds": {
            "type": "integer",
            "minimum": 1,
            "maximum": 86400,
            "description": "Hold time (default 3600); not with reservationExpiresAt",
        },
        "reservationExpiresAt": {
            **_TIME,
            "description": "Hold until this time: in the future and at most 24 h ahead (a 400 "
            "otherwise: a rule relative to the clock, which no schema can state)",
        },
        "reservationMetadata": {
            "type": "string",
            "pattern": p.STRING_MAP_PATTERN,
            "description": "A JSON object of string values attached to the reservation",
        },
    },
    "oneOf": [
        {
            "title": "feature check",
            "required": ["featureId"],
            **_none_of("currencyId", *_RESERVATION_ONLY),
        },
        {
            "title": "credit check",
            "required": ["currencyId"],
            **_none_of("featureId", *_RESERVATION_ONLY),
        },
        {
            "title": "credit check reserving reserveAmount",
            "required": ["currencyId", "reserveAmount", "reservationId"],
            "allOf": [
                _none_of("featureId"),
                {"not": {"required": ["reservationTtlSeconds", "reservationExpiresAt"]}},
            ],
        },
    ],
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _data(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["data"], "properties": {"data": schema}}


def _errors(*extra: tuple[str, str]) -> dict[str, Any]:
    responses = {
        "400": _json(_ERROR, "A malformed or missing parameter or field (named in the message)"),
        "401": _json(_ERROR, "Invalid or missing API key"),
        "403": _json(_ERROR, "X-ENVIRONMENT-ID names another environment than the key's"),
    }
    for status, description in extra:
        responses[status] = _json(_ERROR, description)
    return responses


def _query(
    name: str, schema: dict[str, Any], description: str, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": schema,
        "description": description,
    }


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _ID, "description": description}


_ENV_HEADER = {
    "name": "X-ENVIRONMENT-ID",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "Optional; must equal the environment of the API key",
}
_PAGING = [
    _query("after", _CURSOR, "Cursor: items after this one (older); with before: between"),
    _query("before", _CURSOR, "Cursor: items before this one (newer); with after: between"),
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "Page size (20)"),
]


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def openapi_paths() -> dict[str, Any]:
    check_params = [
        _path("id", "Customer id"),
        {
            # The check's query parameters as ONE exploded object (style form, explode: the
            # wire form is the usual `featureId=...&requestedUsage=...`), so that the rules
            # between them (exactly one of featureId/currencyId, reservation* only when
            # reserving, ...) are part of the document: CHECK_QUERY.
            "name": "check",
            "in": "query",
            "required": True,
            "style": "form",
            "explode": True,
            "schema": CHECK_QUERY,
            "description": "The check's query parameters (see the schema for how they combine)",
        },
        _ENV_HEADER,
    ]
    return {
        "/api/v1/customers/{id}/entitlements/check": {
            "get": {
                "summary": "Check one feature or credit entitlement (optionally reserving)",
                "tags": ["enforcement"],
                "parameters": check_params,
                "responses": {
                    "200": _json(_data(ENTITLEMENT), "The decision (a denial is a 200 too)"),
                    **_errors(("409", "reservationId reused with other parameters")),
                },
            }
        },
        "/api/v1/customers/{id}/entitlements": {
            "get": {
                "summary": "Every entitlement of a customer or resource",
                "tags": ["enforcement"],
                "parameters": [
                    _path("id", "Customer id"),
                    _query("resourceId", _ID, "Resource scope"),
                    _ENV_HEADER,
                ],
                "responses": {
                    "200": _json(
                        _data(
                            {
                                "type": "object",
                                "required": ["entitlements"],
                                "properties": {
                                    "entitlements": {"type": "array", "items": ENTITLEMENT},
                                    "accessDeniedReason": {"enum": _REASONS},
                                },
                            }
                        ),
                        "The entitlements (empty with accessDeniedReason when denied)",
                    ),
                    **_errors(),
                },
            }
        },
        "/api/v1/credits/grants": {
            "post": {
                "summary": "Grant credits to a customer (or resource)",
                "tags": ["credits"],
                "parameters": [_ENV_HEADER],
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": [
                            "amount",
                            "currencyId",
                            "customerId",
                            "displayName",
                            "grantType",
                        ],
                        "additionalProperties": False,
                        "properties": {
                            "amount": _AMOUNT,
                            "currencyId": _ID,
                            "customerId": _ID,
                            "displayName": {"type": "string"},
                            "grantType": {"enum": ["PAID", "PROMOTIONAL"]},
                            "priority": {
                                "type": ["integer", "null"],
                                "minimum": 0,
                                "maximum": 100,
                                "description": "Lower draws first (default 50)",
                            },
                            "effectiveAt": _OPT_TIME,
                            "expireAt": {
                                **_OPT_TIME,
                                "description": "After effectiveAt (or now): a 400 otherwise, "
                                "a rule between two values that no schema can state",
                            },
                            "cost": {
                                "type": ["object", "null"],
                                "required": ["amount", "currency"],
                                "properties": {
                                    "amount": {**_FINITE, "minimum": 0},
                                    "currency": {"type": "string"},
                                },
                            },
                            "paymentCollectionMethod": {
                                "enum": ["CHARGE", "INVOICE", "NONE", None]
                            },
                            "awaitPaymentConfirmation": {"type": ["boolean", "null"]},
                            "resourceId": _OPT_ID,
                            "metadata": {
                                "type": ["object", "null"],
                                "additionalProperties": {"type": "string"},
                            },
                            "comment": {"type": ["string", "null"]},
                            "billingInformation": {"type": ["object", "null"]},
                        },
                    }
                ),
                "responses": {
                    "200": _json(_data(GRANT), "The grant"),
                    **_errors(
                        ("404", "Unknown customer, resource or currency"),
                        ("413", "Body too large"),
                        ("415", "Content-Type is not application/json"),
                    ),
                },
            },
            "get": {
                "summary": "List a customer's grants (newest first, cursor pages)",
                "tags": ["credits"],
                "parameters": [
                    _query("customerId", _ID, "Customer (required)", required=True),
                    _query("currencyId", _ID, "Currency filter"),
                    _query("resourceId", _ID, "Resource (without it: customer-level grants)"),
                    *_PAGING,
                    _ENV_HEADER,
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["data"],
                            "properties": {
                                "data": {"type": "array", "items": GRANT},
                                "pagination": PAGINATION,
                            },
                        },
                        "One page of grants",
                    ),
                    **_errors(),
                },
            },
        },
        "/api/v1/credits/grants/{id}/void": {
            "post": {
                "summary": "Void a grant (its remaining credits are no longer usable)",
                "tags": ["credits"],
                "parameters": [_path("id", "Grant id"), _ENV_HEADER],
                "responses": {
                    "200": _json(_data(GRANT), "The voided grant"),
                    **_errors(("404", "Unknown grant")),
                },
            }
        },
        "/api/v1/credits/consumption": {
            "post": {
                "summary": "Consume credits from a wallet (all or nothing, idempotent by key)",
                "tags": ["credits"],
                "parameters": [_ENV_HEADER],
                "requestBody": _body(CONSUMPTION),
                "responses": {
                    "200": _json(
                        _data(
                            {
                                "type": "object",
                                "required": ["amount", "currencyId", "customerId", "timestamp"],
                                "properties": {
                                    "amount": _NUM,
                                    "currencyId": {"type": "string"},
                                    "customerId": {"type": "string"},
                                    "resourceId": {"type": "string"},
                                    "timestamp": _AT,
                                    "credit": CREDIT_SUMMARY,
                                },
                            }
                        ),
                        "The consumption and the balance after it",
                    ),
                    **_errors(
                        ("404", "Unknown customer, resource or currency"),
                        ("409", "idempotencyKey reused with other values"),
                        ("413", "Body too large"),
                        ("415", "Content-Type is not application/json"),
                    ),
                },
            }
        },
        "/api/v1/credits/consumption/async": {
            "post": {
                "summary": "Consume up to 1000 times; refusals are listed, not fatal",
                "tags": ["credits"],
                "parameters": [_ENV_HEADER],
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["consumptions"],
                        "additionalProperties": False,
                        "properties": {
                            "consumptions": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": 1000,
                                "items": CONSUMPTION,
                            }
                        },
                    }
                ),
                "responses": {
                    "200": _json(
                        _data(
                            {
                                "type": "object",
                                "properties": {
                                    "consumed": {"type": "integer"},
                                    "duplicates": {"type": "integer"},
                                    "refused": {"type": "array", "items": {"type": "object"}},
                                },
                            }
                        ),
                        "Counts of consumed, duplicate and refused items",
                    ),
                    **_errors(
                        ("404", "Unknown customer, resource or currency"),
                        ("413", "Body too large"),
                        ("415", "Content-Type is not application/json"),
                    ),
                },
            }
        },
        "/api/v1/credits/reservations/{id}/release": {
            "post": {
                "summary": "Release a reservation, consuming part (or all, or more) of it",
                "tags": ["credits"],
                "parameters": [_path("id", "Reservation id"), _ENV_HEADER],
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["consumedAmount", "currencyId", "customerId"],
                        "additionalProperties": False,
                        "properties": {
                            "consumedAmount": {
                                "type": "number",
                                "minimum": 0,
                                "maximum": p.MAX_AMOUNT,
                            },
                            "currencyId": _ID,
                            "customerId": _ID,
                            "resourceId": _OPT_ID,
                        },
                    }
                ),
                "responses": {
                    "200": _json(
                        _data(
                            {
                                "type": "object",
                                "required": ["reservation"],
                                "properties": {
                                    "reservation": RESERVATION,
                                    "credit": CREDIT_SUMMARY,
                                },
                            }
                        ),
                        "The released reservation and the balance after it",
                    ),
                    **_errors(
                        ("404", "Unknown reservation (for this customer/currency)"),
                        ("409", "Already released or expired"),
                        ("413", "Body too large"),
                        ("415", "Content-Type is not application/json"),
                    ),
                },
            }
        },
        "/api/v1/credits/ledger": {
            "get": {
                "summary": "The credit ledger of a customer (newest first, cursor pages)",
                "tags": ["credits"],
                "parameters": [
                    _query("customerId", _ID, "Customer (required)", required=True),
                    _query("currencyId", _ID, "Currency filter"),
                    _query("resourceId", _ID, "Resource filter"),
                    _query("reservationId", _ID, "Reservation filter"),
                    _query(
                        "eventType",
                        {"type": "string", "pattern": f"^({_TYPES_RE})(,({_TYPES_RE}))*$"},
                        "Comma-separated event types",
                    ),
                    *_PAGING,
                    _ENV_HEADER,
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["data"],
                            "properties": {
                                "data": {"type": "array", "items": LEDGER_EVENT},
                                "pagination": PAGINATION,
                            },
                        },
                        "One page of ledger events",
                    ),
                    **_errors(),
                },
            }
        },
    }
