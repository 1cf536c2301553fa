"""The enforcement runtime component: local store, sync, counters, engine, gRPC and REST.

Plugged into the runtime API process through the ``byoc.runtime`` entry point ``enforcement``
(``enforcement.component:create``). On startup it:
1. loads the stored entities and counters into memory (checks work before any sync);
2. starts the SidecarService gRPC server on ``settings.ports.grpc`` in the same event loop
   (one environment per port: ``settings.environment``, see grpc_service.py);
3. starts the inbound sync loop (the first pull is awaited briefly, never required);
4. replays the current usage periods from ClickHouse, then consumes ``usage.deduped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Gauge
from starlette.routing import BaseRoute, Route

from byoc_platform.control_plane.client import AsyncControlPlaneClient
from byoc_platform.plugins import RuntimeContext
from enforcement.counters import UsageCounters
from enforcement.credits import CreditService
from enforcement.engine import EntitlementEngine
from enforcement.grpc_fastpath import FastCheckServer
from enforcement.grpc_service import SidecarService
from enforcement.openapi import openapi_paths
from enforcement.rest_credits import CreditRoutes
from enforcement.rest_entitlements import EntitlementRoutes
from enforcement.state import LocalState
from enforcement.store import Store
from enforcement.sync import InboundSync, SyncRunner
from enforcement.usage_feed import UsageFeed
from enforcement.usage_hook import UsageHook

log = logging.getLogger(__name__)

FIRST_SYNC_WAIT_S = 3.0
MAINTENANCE_INTERVAL_S = 5.0
DIRTY_REFRESH_S = 0.2  # wallets spent from are re-read exactly this soon after


class EnforcementComponent:
    name = "enforcement"

    def __init__(self, context: RuntimeContext) -> None:
        self.context = context
        self.settings = settings = context.settings
        cfg = settings.enforcement
        assert cfg.database_url is not None
        self.store = Store(cfg.database_url)
        self.state = LocalState()
        self.counters = UsageCounters(self.store, self.state)
        self.credits = CreditService(settings, self.counters)
        self.cp_client = AsyncControlPlaneClient.from_settings(settings, timeout=cfg.sync_timeout_s)
        self.sync = SyncRunner(
            self._make_sync, self._environments, settings.control_plane.sync_interval_s
        )
        self.engine = EntitlementEngine(
            self.state,
            self.counters,
            fallbacks=dict(cfg.fallback_entitlements),
            is_stale=self._is_stale,
            balances=self.credits.balance,
        )
        self.grpc_service = SidecarService(
            settings.environment,
            self.engine,
            self.counters,
            events_sink=self._produce_events,
            # Only when the usage.reports consumer runs: it brings a report to every instance.
            reports_sink=self._produce_reports if cfg.consume_usage else None,
            reload=self._reload,
            currencies=self.credits.currencies_of,
            max_future_skew_s=settings.api.max_future_skew_s,
        )
        self.usage_hook = UsageHook(self.state, self.counters)
        # Aggregated usage accepted by ingestion (REST /api/v2/usage) lands in our counters.
        context.hooks.usage = self.usage_hook
        self.usage_feed = UsageFeed(settings, self.counters, self.state, self.usage_hook)
        self._grpc_server: FastCheckServer | None = None
        self._entitlement_routes = EntitlementRoutes(self)
        self.credit_routes = CreditRoutes(self)
        self._started = False
        self._maintenance: asyncio.Task[None] | None = None
        self._register_metrics()

    # --- wiring -----------------------------------------------------------------------------

    def _environments(self) -> set[str]:
        envs = {self.settings.environment}
        envs.update(r.environment for r in self.context.keys.records())
        return envs

    def _make_sync(self, environment: str) -> InboundSync:
        cfg = self.settings.enforcement
        return InboundSync(
            environment,
            self.cp_client,
            self.store,
            self.state,
            page_size=cfg.sync_page_size,
            stale_after_s=cfg.stale_after_s,
            on_grant=self.credits.apply_grant_change,
        )

    def _is_stale(self, environment: str) -> bool:
        sync = self.sync.syncs.get(environment)
        return True if sync is None else sync.status.is_stale()

    async def _reload(self) -> None:
        await self.sync.sync_all()

    async def _produce_events(self, environment: str, events: list) -> None:
        await self.usage_feed.produce(environment, events)

    async def _produce_reports(self, environment: str, reports: list) -> None:
        await self.usage_feed.produce_reports(environment, reports)

    def _register_metrics(self) -> None:
        # Read at scrape time only (set_function): nothing is added to the check path.
        registry = self.context.registry
        environment = self.settings.environment

        def gauge(name: str, doc: str, read: Callable[[], float]) -> None:
            Gauge(name, doc, registry=registry).set_function(read)

        gauge(
            "byoc_enforcement_sync_age_seconds",
            f"Seconds since the last successful sync of {environment}",
            self._sync_age,
        )
        gauge(
            "byoc_enforcement_sync_stale",
            "1 when checks are answered as fallback",
            lambda: float(self._is_stale(environment)),
        )
        gauge(
            "byoc_enforcement_events_counted",
            "Usage events counted into counters",
            lambda: self.counters.events_counted,
        )
        gauge(
            "byoc_enforcement_events_redelivered",
            "Usage events seen again and not counted",
            lambda: self.counters.events_replayed,
        )
        gauge(
            "byoc_enforcement_grpc_answer_cache_hits",
            "gRPC answers served pre-encoded",
            lambda: self.grpc_service.answers.hits,
        )
        gauge(
            "byoc_enforcement_grpc_checks_routed",
            "gRPC checks answered from recognised header bytes (h2 bypassed)",
            lambda: self._grpc_server.stats.routed if self._grpc_server else 0,
        )
        gauge(
            "byoc_enforcement_grpc_answer_cache_misses",
            "gRPC answers encoded afresh",
            lambda: self.grpc_service.answers.misses,
        )

    async def _maintain(self) -> None:
        """Expire due grants/reservations, refresh cached balances, prune old counters."""
        rounds = 0
        last_full = time.monotonic()
        while True:
            await asyncio.sleep(DIRTY_REFRESH_S)
            try:
                if self.credits.has_dirty:
                    await asyncio.to_thread(self.credits.refresh_dirty)
                if time.monotonic() - last_full < MAINTENANCE_INTERVAL_S:
                    continue
                last_full = time.monotonic()
                rounds += 1
                await asyncio.to_thread(self.credits.maintain)
                if rounds % 60 == 0:
                    await asyncio.to_thread(self.counters.prune)
            except Exception:
                log.exception("credit maintenance failed")

    def _sync_age(self) -> float:
        sync = self.sync.syncs.get(self.settings.environment)
        if sync is None or sync.status.last_success is None:
            return float("inf")
        return time.time() - sync.status.last_success

    # --- RuntimeComponent -------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        e, c = self._entitlement_routes, self.credit_routes
        return [
            # The hot routes first: Starlette tries the routes in order.
            Route("/api/v1/credits/consumption", c.consume, methods=["POST"]),
            Route("/api/v1/customers/{customer_id}/entitlements/check", e.check, methods=["GET"]),
            Route("/api/v1/customers/{customer_id}/entitlements", e.list, methods=["GET"]),
            # One route per path, so a 405 (and OPTIONS) lists every method of the path.
            Route("/api/v1/credits/grants", c.grants, methods=["GET", "POST"]),
            Route("/api/v1/credits/grants/{grant_id}/void", c.void_grant, methods=["POST"]),
            Route("/api/v1/credits/consumption/async", c.consume_async, methods=["POST"]),
            Route(
                "/api/v1/credits/reservations/{reservation_id}/release",
                c.release,
                methods=["POST"],
            ),
            Route("/api/v1/credits/ledger", c.ledger_listing, methods=["GET"]),
        ]

    def openapi_paths(self) -> dict[str, Any]:
        return openapi_paths()

    def load_local_state(self) -> None:
        """Memory from the store: checks are answered right away, before any sync."""
        for entity in self.store.load_entities():
            self.state.apply(
                entity.environment,
                entity.kind,
                "upsert",
                entity.id,
                entity.data,
                entity.applied_at,
            )
        self.counters.load()
        for environment in self._environments():
            self.sync.get(environment)

    async def startup(self) -> None:
        await asyncio.to_thread(self.load_local_state)
        await asyncio.to_thread(self.credits.open, loop=asyncio.get_running_loop())
        if self.settings.enforcement.grpc_enabled:
            self._grpc_server = FastCheckServer(
                [self.grpc_service],
                fast=self.grpc_service.fast_methods(),
                codec=self.grpc_service.codec,
            )
            await self._grpc_server.start(self.settings.host, self.settings.ports.grpc)
            log.info(
                "SidecarService listening",
                extra={
                    "fields": {
                        "host": self.settings.host,
                        "port": self.settings.ports.grpc,
                        "environment": self.settings.environment,
                    }
                },
            )
        try:
            await asyncio.wait_for(self.sync.sync_all(), timeout=FIRST_SYNC_WAIT_S)
        except TimeoutError:
            log.warning("first sync did not finish in %ss; continuing", FIRST_SYNC_WAIT_S)
        self.sync.start()
        self._maintenance = asyncio.get_running_loop().create_task(
            self._maintain(), name="enforcement-credits"
        )
        await self.usage_feed.start()
        # Everything loaded so far (modules, catalog, counters) lives as long as the process:
        # moved out of the collector's reach, a full collection scans only what came after.
        # Measured: gen-2 pauses of 11-100 ms on the loop thread under 2,000 checks/s before,
        # which made the gRPC p99 (docs/benchmarks-enforcement.md).
        gc.collect()
        gc.freeze()
        self._started = True

    async def shutdown(self) -> None:
        self._started = False
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        await self.sync.stop()
        await self.usage_feed.stop()
        if self._grpc_server is not None:
            self._grpc_server.close()
            await self._grpc_server.wait_closed()
            self._grpc_server = None
        await self.cp_client.aclose()
        self.credit_routes.close()
        await asyncio.to_thread(self.credits.close)
        self.store.close()

    def ready(self) -> tuple[bool, str]:
        if not self._started:
            return False, "starting"
        sync = self.sync.syncs.get(self.settings.environment)
        if sync is None or sync.status.last_success is None:
            return False, "no successful sync yet (answers are fallback)"
        if sync.status.is_stale():
            return True, f"serving local state; control plane: {sync.status.last_error}"
        return True, "ok"


def create(context: RuntimeContext) -> EnforcementComponent:
    return EnforcementComponent(context)
