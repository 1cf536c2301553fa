"""GraphQL ingestion operations at ``POST /graphql``, as ``stigg-api-client-v2`` sends them.

The client posts fixed documents ``{query, operationName, variables}`` (and the header
``x-graphql-operation-name``); we dispatch on the operation name rather than parse the query,
as the control-plane stand-in does. Served: ``ReportEvent`` (1..1000 events, answers
``{"data":{"reportEvent":null}}``), ``ReportUsage`` and ``ReportUsageBulk`` (answer
``UsageMeasurementWithCurrentUsage`` objects with the fields ``ReportUsageFragment`` selects).

Status codes follow the GraphQL-over-HTTP convention for ``application/json``: a body that is
not a JSON object, or whose ``query``/``operationName``/``variables`` are ill-typed -> 400,
a body over the size limit -> 413, a body not declared ``application/json`` -> 415 (request
errors); invalid input, too many items, an item too large, an
unknown operation -> 200 with ``{"errors":[{message, extensions:{code}}]}`` (the
message names the path, e.g. ``input.usageEvents[3].customerId``); broker unavailable -> 503
and producer buffer full -> 429, both with retry-after and an ``errors`` body, never 200.
The environment is the API key's; ``input.environmentId`` is accepted and ignored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from byoc_platform.api_errors import ApiError
from byoc_platform.content_type import require_json
from byoc_platform.events import UsageReport
from byoc_platform.plugins import UsageOutcome
from streaming.ingest import wire
from streaming.ingest.rest import iso_ms, read_body
from streaming.ingest.service import IngestService, now_ms, rejection_reason

# Statuses that stay HTTP statuses (request or transport errors); others become 200 + errors.
_HTTP_STATUSES = {400, 401, 413, 415, 429, 503}
# Inside an operation only these do: a refused item (too many, too large, a feature that is
# not metered) is a GraphQL error, whose message the SDK shows; as an HTTP 400/413 it raised
# GraphQLClientHttpError with the status alone (F59).
_OPERATION_HTTP_STATUSES = {401, 429, 503}
_GRAPHQL_CODES = {
    400: "BadUserInput",
    404: "NotFound",
    413: "BadUserInput",
    415: "UnsupportedMediaType",
    422: "BadUserInput",
    429: "RateLimited",
    503: "ServiceUnavailable",
}


def measurement(report: UsageReport, outcome: UsageOutcome, received_ms: int) -> dict[str, Any]:
    """A UsageMeasurementWithCurrentUsage as ReportUsageFragment selects it."""
    return {
        "__typename": "UsageMeasurementWithCurrentUsage",
        "id": report.id,
        "featureId": report.featureId,
        "customerId": report.customerId,
        "resourceId": report.resourceId,
        # Whole 5-decimal units as REST answers them (F19), not 0.30000000000000004.
        "currentUsage": None if outcome.current_usage is None else round(outcome.current_usage, 5),
        "credit": None,
        "usagePeriodStart": iso_ms(outcome.usage_period_start),
        "usagePeriodEnd": iso_ms(outcome.usage_period_end),
        "nextResetDate": iso_ms(outcome.next_reset_date),
        "timestamp": iso_ms(report.createdAt),
    }


def error_document(exc: ApiError, *, in_operation: bool = False) -> Response:
    body = {
        "errors": [
            {
                "message": exc.message,
                "extensions": {"code": _GRAPHQL_CODES.get(exc.status, exc.code)},
            }
        ]
    }
    kept = _OPERATION_HTTP_STATUSES if in_operation else _HTTP_STATUSES
    status = exc.status if exc.status in kept else 200
    headers = {}
    original = exc.response()
    for name in ("retry-after", "retry-after-ms", "x-should-retry"):
        if name in original.headers:
            headers[name] = original.headers[name]
    return Response(
        msgspec.json.encode(body),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


class GraphQLRoute:
    def __init__(self, service: IngestService) -> None:
        self.service = service
        self.body_limit = service.settings.api.max_body_bytes
        self._ops: dict[str, Callable[[str, Any], Awaitable[dict[str, Any]]]] = {
            "ReportEvent": self.report_event,
            "ReportUsage": self.report_usage,
            "ReportUsageBulk": self.report_usage_bulk,
        }

    async def handle(self, request: Request) -> Response:
        service = self.service
        service.metrics.requests.labels("graphql").inc()
        try:
            require_json(request.headers)
            body = await read_body(request, self.body_limit)
            try:
                document = msgspec.json.decode(body)
            except msgspec.DecodeError as exc:
                raise wire.Rejected(400, f"Malformed JSON: {exc}", "malformed") from None
            except (UnicodeDecodeError, RecursionError) as exc:  # bad UTF-8, absurd nesting
                raise wire.Rejected(
                    400, f"Malformed JSON: {type(exc).__name__}", "malformed"
                ) from None
            if not isinstance(document, dict):
                raise wire.Rejected(400, "The request body must be a JSON object", "malformed")
            name = document.get("operationName")
            variables = document.get("variables")
            # Request errors (GraphQL-over-HTTP): ill-typed envelope fields -> 400.
            if (
                not isinstance(name, str | None)
                or not isinstance(variables, dict | None)
                or not isinstance(document.get("query"), str | None)
            ):
                raise wire.Rejected(
                    400,
                    "`query` and `operationName` must be strings and `variables` an object",
                    "malformed",
                )
            name = name or request.headers.get("x-graphql-operation-name")
            op = self._ops.get(name) if name else None
            if op is None:
                raise wire.Rejected(
                    422,
                    f"Operation {name!r} is not served here (served: {', '.join(self._ops)})",
                    "unknown_operation",
                )
            if not variables or "input" not in variables:
                raise wire.Rejected(422, "Missing variable `input`", "invalid")
        except ApiError as exc:
            service.metrics.rejections.labels("graphql", rejection_reason(exc)).inc()
            return error_document(exc)
        try:
            data = await op(request.state.environment, variables["input"])
        except ApiError as exc:
            service.metrics.rejections.labels("graphql", rejection_reason(exc)).inc()
            return error_document(exc, in_operation=True)
        return Response(msgspec.json.encode({"data": data}), media_type="application/json")

    async def report_event(self, environment: str, data: Any) -> dict[str, Any]:
        service = self.service
        inp = wire.convert(data, wire.GqlEventsInput, "input")
        events = inp.usageEvents
        wire.check_count(len(events), service.max_items, "usageEvents")
        received = now_ms()
        wire.stamp_events(events, received, service.max_future_ms, "input.usageEvents")
        await service.ingest_events("graphql", environment, events, received)
        return {"reportEvent": None}

    async def report_usage(self, environment: str, data: Any) -> dict[str, Any]:
        inp = wire.convert(data, wire.GqlUsageInput, "input")
        received, reports, outcomes = await self.service.report_usage(
            "graphql", environment, [inp], "input"
        )
        return {"reportUsage": measurement(reports[0], outcomes[0], received)}

    async def report_usage_bulk(self, environment: str, data: Any) -> dict[str, Any]:
        service = self.service
        inp = wire.convert(data, wire.GqlUsageBulkInput, "input")
        wire.check_count(len(inp.usages), service.max_items, "usages")
        received, reports, outcomes = await service.report_usage(
            "graphql", environment, inp.usages, "input.usages"
        )
        return {
            "reportUsageBulk": [
                measurement(r, o, received) for r, o in zip(reports, outcomes, strict=True)
            ]
        }
