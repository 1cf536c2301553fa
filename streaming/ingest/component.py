"""The ingestion runtime component ("ingest"), plugged into the runtime API process.

Entry point ``byoc.runtime``: ``ingest = "streaming.ingest.component:create"``. It serves
``POST /api/v1/events``, ``POST /api/v2/usage`` and ``POST /graphql`` (ReportEvent,
ReportUsage, ReportUsageBulk), all durable in Kafka before the 2xx.

Lifecycle: ``startup`` starts the producer and its poll thread and a readiness probe (a
metadata round trip every few seconds, off the event loop); ``shutdown`` runs after the
server stopped accepting and in-flight requests finished (uvicorn's graceful shutdown), then
flushes the producer so nothing acknowledged -- or accepted -- is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.routing import BaseRoute, Route

from byoc_platform.plugins import RuntimeContext
from streaming.ingest.graphql import GraphQLRoute
from streaming.ingest.openapi import openapi_paths
from streaming.ingest.producer import DurableProducer
from streaming.ingest.rest import RestRoutes
from streaming.ingest.service import IngestMetrics, IngestService

log = logging.getLogger(__name__)

READY_INTERVAL_S = 3.0


class IngestComponent:
    name = "ingest"

    def __init__(self, context: RuntimeContext) -> None:
        self.settings = context.settings
        self.producer = DurableProducer(context.settings, on_latency=self._observe_latency)
        metrics = self.metrics = IngestMetrics(context.registry, self.producer)
        self.service = IngestService(context.settings, self.producer, metrics, context.hooks)
        self.rest = RestRoutes(self.service)
        self.graphql = GraphQLRoute(self.service)
        self._ready: tuple[bool, str] = (False, "starting")
        self._probe: asyncio.Task[None] | None = None

    def _observe_latency(self, seconds: float) -> None:
        self.metrics.produce_latency.observe(seconds)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/v1/events", self.rest.events, methods=["POST"]),
            Route("/api/v2/usage", self.rest.usage, methods=["POST"]),
            Route("/graphql", self.graphql.handle, methods=["POST"]),
        ]

    def openapi_paths(self) -> dict[str, Any]:
        return openapi_paths(self.settings)

    async def startup(self) -> None:
        self.producer.start()
        self._ready = await asyncio.to_thread(self.producer.ready)
        self._probe = asyncio.create_task(self._probe_loop(), name="ingest-readiness")
        log.info(
            "ingestion ready: %s",
            self._ready[1],
            extra={"fields": {"topic": self.settings.kafka.events_topic}},
        )

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(READY_INTERVAL_S)
            self._ready = await asyncio.to_thread(self.producer.ready)

    async def shutdown(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        self._ready = (False, "stopped")
        # Records expire after produce_timeout_s (message.timeout.ms), so flushing cannot take
        # longer; this keeps SIGTERM -> exit within the supervisor's stop timeout.
        timeout = self.settings.api.produce_timeout_s + 5
        remaining = await asyncio.to_thread(self.producer.close, timeout)
        if remaining:
            log.error("%d records not flushed at shutdown", remaining)
        else:
            log.info("ingestion flushed and stopped")

    def ready(self) -> tuple[bool, str]:
        return self._ready


def create(context: RuntimeContext) -> IngestComponent:
    return IngestComponent(context)
