"""REST ingestion routes, as the official ``stigg`` SDK calls them.

- ``POST /api/v1/events`` -> ``200 {"data":{}}`` once every event is durable in Kafka.
- ``POST /api/v2/usage`` -> ``200 {"data":{"usages":[...]}}`` (UsageReportResponse shape).

The environment is the API key's (set by the runtime's auth middleware); an
``X-ENVIRONMENT-ID`` header is ignored, so an SDK configured for Stigg Cloud works unchanged.
A body not declared ``application/json`` is refused with 415 before it is read.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from byoc_platform.api_errors import ApiError
from byoc_platform.content_type import require_json
from byoc_platform.events import UsageReport
from byoc_platform.plugins import UsageOutcome
from streaming.ingest import wire
from streaming.ingest.service import IngestService, now_ms, rejection_reason

EVENTS_OK = b'{"data":{}}'


def iso_ms(epoch_ms: int | None) -> str | None:
    if epoch_ms is None:
        return None
    text = datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    too_large = wire.Rejected(
        413, f"Request body exceeds {limit} bytes", "body_too_large", retryable=False
    )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:
        # Nobody is left to answer; a 4xx keeps it out of the 5xx logs and metrics.
        raise wire.Rejected(400, "Client disconnected", "disconnected") from None
    return b"".join(chunks)


def usage_json(report: UsageReport, outcome: UsageOutcome, received_ms: int) -> dict[str, Any]:
    """One ``data.usages[]`` item of the REST v2 response."""
    item: dict[str, Any] = {
        "id": report.id,
        "createdAt": iso_ms(report.createdAt),
        "customerId": report.customerId,
        "featureId": report.featureId,
        "timestamp": iso_ms(received_ms),
        "value": report.value,
    }
    if report.resourceId is not None:
        item["resourceId"] = report.resourceId
    if outcome.current_usage is not None:
        # Reports are whole 5-decimal values; their float sum is not (-0.8765400000000001).
        item["currentUsage"] = round(outcome.current_usage, 5)
    for name, value in (
        ("usagePeriodStart", outcome.usage_period_start),
        ("usagePeriodEnd", outcome.usage_period_end),
        ("nextResetDate", outcome.next_reset_date),
    ):
        if value is not None:
            item[name] = iso_ms(value)
    return item


class RestRoutes:
    def __init__(self, service: IngestService) -> None:
        self.service = service
        self.body_limit = service.settings.api.max_body_bytes

    async def events(self, request: Request) -> Response:
        service = self.service
        service.metrics.requests.labels("events").inc()
        try:
            require_json(request.headers)
            body = await read_body(request, self.body_limit)
            received = now_ms()  # default event time and the records' receivedAt
            events = wire.decode_events(
                body,
                max_events=service.max_items,
                now_ms=received,
                max_future_ms=service.max_future_ms,
            )
            await service.ingest_events("events", request.state.environment, events, received)
        except ApiError as exc:
            service.metrics.rejections.labels("events", rejection_reason(exc)).inc()
            raise
        return Response(EVENTS_OK, media_type="application/json")

    async def usage(self, request: Request) -> Response:
        service = self.service
        service.metrics.requests.labels("usage").inc()
        try:
            require_json(request.headers)
            body = await read_body(request, self.body_limit)
            usages = wire.decode_usages(body, max_usages=service.max_items)
            received, reports, outcomes = await service.report_usage(
                "usage", request.state.environment, usages, "$.usages"
            )
        except ApiError as exc:
            service.metrics.rejections.labels("usage", rejection_reason(exc)).inc()
            raise
        data = {
            "data": {
                "usages": [
                    usage_json(r, o, received) for r, o in zip(reports, outcomes, strict=True)
                ]
            }
        }
        return Response(msgspec.json.encode(data), media_type="application/json")
