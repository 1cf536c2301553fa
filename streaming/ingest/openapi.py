"""OpenAPI 3.1 ``paths`` of the ingestion routes (merged into /openapi.json by the runtime).

The schemas say exactly what the decoders in wire.py accept and what the routes answer, so a
schema-driven fuzzer (schemathesis) finds no undocumented status and no 5xx.
"""

from __future__ import annotations

from typing import Any

from byoc_platform.api_errors import ERROR_BODY_SCHEMA
from byoc_platform.events import MAX_FRACTIONAL_USAGE as MAX_FRACTIONAL
from byoc_platform.events import MAX_WHOLE_USAGE as MAX_WHOLE
from byoc_platform.settings import Settings

_ERROR = ERROR_BODY_SCHEMA
_GRAPHQL_ERRORS = {
    "type": "object",
    "required": ["errors"],
    "properties": {
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["message"],
                "properties": {
                    "message": {"type": "string"},
                    "extensions": {"type": "object"},
                },
            },
        }
    },
}
_NON_EMPTY = {"type": "string", "minLength": 1}
_DIMENSIONS = {
    "type": "object",
    "description": "Strings and booleans label the event; numbers are summed by meters and "
    "must lie within ±(2^53 - 1). Names are not empty",
    "propertyNames": {"minLength": 1},
    "additionalProperties": {
        "anyOf": [
            {"type": ["string", "boolean"]},
            {"type": "number", "minimum": -(2**53 - 1), "maximum": 2**53 - 1},
        ]
    },
}
# An example inside the accepted range (not before the first hour rolled up).
_EVENT_TIME_EXAMPLE = "2025-06-01T12:00:00Z"
_DATETIME = {"type": "string", "format": "date-time", "examples": [_EVENT_TIME_EXAMPLE]}
_UNSUPPORTED = "The body is not declared `application/json` (Content-Type missing or another type)"
_RETRY_HEADERS = {
    "retry-after": {"description": "Seconds to wait", "schema": {"type": "string"}},
    "retry-after-ms": {"description": "Milliseconds to wait", "schema": {"type": "string"}},
}


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _errors(schema: dict[str, Any], limit: int, max_body: int) -> dict[str, Any]:
    return {
        "400": _json(schema, "Malformed JSON"),
        "401": _json(_ERROR, "Invalid or missing API key"),
        "413": _json(schema, f"More than {limit} items, or a body over {max_body} bytes"),
        "415": _json(schema, _UNSUPPORTED),
        "422": _json(
            schema,
            "A missing, ill-typed or unknown field (the message names the item index and "
            "field), an empty batch, or a timestamp too far in the future",
        ),
        "429": _json(schema, "Producer buffer full; retry after", headers=_RETRY_HEADERS),
        "503": _json(schema, "Broker unavailable; retry after", headers=_RETRY_HEADERS),
    }


def _event(limit_note: str) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["customerId", "eventName", "idempotencyKey"],
        "properties": {
            "customerId": _NON_EMPTY,
            "eventName": _NON_EMPTY,
            "idempotencyKey": {
                **_NON_EMPTY,
                "description": "Deduplicated for 7 days by the stream processor; first wins",
            },
            "resourceId": {"type": ["string", "null"], "minLength": 1},
            "dimensions": _DIMENSIONS,
            "timestamp": {
                "type": ["string", "null"],
                "format": "date-time",
                "examples": [_EVENT_TIME_EXAMPLE],
                "description": f"Event time (RFC 3339; naive = UTC; default: receive time), "
                f"not before 2025-01-01T00:00:00Z (the first hour rolled up). {limit_note}",
            },
        },
    }


def _usage(max_future_skew_s: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["customerId", "featureId", "value"],
        "properties": {
            "customerId": _NON_EMPTY,
            "featureId": _NON_EMPTY,
            "value": {
                "description": "Rounded half away from zero to 5 decimals; fractional values "
                "below 2^35 in magnitude, whole values up to 2^53-1",
                "anyOf": [
                    {"type": "integer", "minimum": -MAX_WHOLE, "maximum": MAX_WHOLE},
                    {
                        "type": "number",
                        "exclusiveMinimum": -MAX_FRACTIONAL,
                        "exclusiveMaximum": MAX_FRACTIONAL,
                    },
                ],
            },
            "updateBehavior": {"type": "string", "enum": ["DELTA", "SET"], "default": "DELTA"},
            "idempotencyKey": {"type": ["string", "null"], "minLength": 1},
            "resourceId": {"type": ["string", "null"], "minLength": 1},
            "dimensions": {"anyOf": [_DIMENSIONS, {"type": "null"}]},
            "createdAt": {
                "anyOf": [_DATETIME, {"type": "null"}],
                "examples": [_EVENT_TIME_EXAMPLE],
                "description": "Not before 2025-01-01T00:00:00Z (the first hour rolled up), "
                f"at most {max_future_skew_s:g}s in the future; default: receive time",
            },
            **(extra or {}),
        },
    }


_USAGE_ITEM = {
    "type": "object",
    "required": ["id", "createdAt", "customerId", "featureId", "timestamp", "value"],
    "properties": {
        "id": {"type": "string"},
        "createdAt": _DATETIME,
        "customerId": {"type": "string"},
        "featureId": {"type": "string"},
        "timestamp": _DATETIME,
        "value": {"type": "number"},
        "resourceId": {"type": "string"},
        "currentUsage": {
            "type": "number",
            "description": "From the usage counters when enforcement runs in this process; "
            "otherwise the value for SET and absent for DELTA",
        },
        "usagePeriodStart": _DATETIME,
        "usagePeriodEnd": _DATETIME,
        "nextResetDate": _DATETIME,
    },
}


def openapi_paths(settings: Settings) -> dict[str, Any]:
    limit = settings.api.max_batch_events
    max_body = settings.api.max_body_bytes
    skew = f"At most {settings.api.max_future_skew_s:g}s in the future."
    # Unknown fields are refused (422 naming them), at the top level as in the items.
    events_body = {
        "type": "object",
        "additionalProperties": False,
        "required": ["events"],
        "properties": {
            "events": {"type": "array", "minItems": 1, "maxItems": limit, "items": _event(skew)}
        },
    }
    usage_body = {
        "type": "object",
        "additionalProperties": False,
        "required": ["usages"],
        "properties": {
            "usages": {
                "type": "array",
                "minItems": 1,
                "maxItems": limit,
                "items": _usage(settings.api.max_future_skew_s),
            }
        },
    }
    graphql_body = {
        "type": "object",
        "description": "Dispatched on operationName (or the x-graphql-operation-name header); "
        "a missing or unknown operation or input is answered 200 with `errors`",
        "properties": {
            "query": {"type": ["string", "null"]},
            "operationName": {
                "type": ["string", "null"],
                "description": "Served: ReportEvent, ReportUsage, ReportUsageBulk",
            },
            "variables": {
                "type": ["object", "null"],
                "properties": {
                    "input": {
                        "description": "The operation's input (UsageEventsReportInput, "
                        "ReportUsageInput or ReportUsageBulkInput); an invalid one is answered "
                        "200 with `errors` naming the path, as GraphQL does"
                    }
                },
            },
        },
    }
    graphql_ok = {
        "type": "object",
        "properties": {"data": {"type": ["object", "null"]}, **_GRAPHQL_ERRORS["properties"]},
    }
    graphql_errors = {
        "400": _json(
            _GRAPHQL_ERRORS,
            "The body is not a JSON object, or query/operationName/variables are ill-typed",
        ),
        "401": _json(_ERROR, "Invalid or missing API key"),
        # Inside an operation too many items, or one too large, is 200 with `errors` (F59).
        "413": _json(_GRAPHQL_ERRORS, f"A body over {max_body} bytes"),
        "415": _json(_GRAPHQL_ERRORS, _UNSUPPORTED),
        "429": _json(_GRAPHQL_ERRORS, "Producer buffer full; retry after", headers=_RETRY_HEADERS),
        "503": _json(
            # The runtime's own answer while it shuts down uses the platform's error body.
            {"anyOf": [_GRAPHQL_ERRORS, _ERROR]},
            "Broker unavailable, or the server is shutting down; retry after",
            headers=_RETRY_HEADERS,
        ),
    }
    return {
        "/api/v1/events": {
            "post": {
                "summary": "Report raw usage events (durable in Kafka before the 200)",
                "operationId": "reportEvents",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": events_body}},
                    "description": f"1..{limit} events; the batch is accepted or refused whole",
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["data"],
                            "properties": {"data": {"type": "object"}},
                        },
                        "Every event is acknowledged by the broker (acks=all)",
                    ),
                    **_errors(_ERROR, limit, max_body),
                },
            }
        },
        "/api/v2/usage": {
            "post": {
                "summary": "Report aggregated usage (DELTA or SET), durable before the 200",
                "operationId": "reportUsage",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": usage_body}},
                    "description": f"1..{limit} usage reports",
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["data"],
                            "properties": {
                                "data": {
                                    "type": "object",
                                    "required": ["usages"],
                                    "properties": {
                                        "usages": {"type": "array", "items": _USAGE_ITEM}
                                    },
                                }
                            },
                        },
                        "The reports, in request order",
                    ),
                    "404": _json(_ERROR, "Unknown customer or feature (enforcement loaded)"),
                    **_errors(_ERROR, limit, max_body),
                },
            }
        },
        "/graphql": {
            "post": {
                "summary": "Stigg GraphQL ingestion operations: ReportEvent, ReportUsage, "
                "ReportUsageBulk (dispatched on operationName)",
                "operationId": "graphql",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": graphql_body}},
                },
                "responses": {
                    "200": _json(
                        graphql_ok,
                        "`data`, or `errors` for invalid input, more than "
                        f"{limit} items, an item too large, an unknown operation",
                    ),
                    **graphql_errors,
                },
            }
        },
    }
