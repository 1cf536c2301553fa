"""The ``stigg.sidecar.v1.SidecarService`` (12 unary RPCs, h2c) on the SDK's generated base.

The official SDK sends no authentication metadata (stigg-api.md section 1), so one gRPC port
serves ONE environment, ``settings.environment``, as Stigg's own sidecar does: run one port
per environment. Checks are answered from memory in the event loop (no I/O); their answers
go through a caching codec (grpc_codec.py) that spares repeated betterproto work. Usage
reports write the store in a worker thread so the loop keeps answering checks meanwhile.

Bad input is the client's mistake, answered INVALID_ARGUMENT (RESOURCE_EXHAUSTED for a message
over the size limit, UNIMPLEMENTED for a compressed one) with a message naming what is wrong,
never UNKNOWN with a traceback in the log: message framing and decoding are checked before any
handler runs (grpc_fastpath.py), and usage reports get the bounds REST applies
(byoc_platform.events: event times, numeric dimensions; ``api.max_future_skew_s``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import betterproto
import betterproto.lib.google.protobuf as pb_google
import grpclib
import grpclib.const
import grpclib.server
from grpclib.const import Status
from stigg_sidecar_sdk.generated.stigg.sidecar import v1 as pb

from byoc_platform.catalog import Feature
from byoc_platform.events import (
    MAX_RECORD_BYTES,
    ItemTooLarge,
    UsageEvent,
    UsageReport,
    dimension_value_problem,
    epoch_ms,
    event_time_problem,
    round_usage_value,
    usage_value_problem,
)
from byoc_platform.settings import ApiSettings
from enforcement import sidecar_messages as msg
from enforcement.counters import Reported, UsageCounters
from enforcement.engine import BOOLEAN, ENUM, METERED, NUMERIC, EntitlementEngine
from enforcement.grpc_codec import AnswerCache, CachingCodec
from enforcement.grpc_fastpath import decode, read_message

log = logging.getLogger(__name__)

EventSink = Callable[[str, list[UsageEvent]], Awaitable[None]]
Reloader = Callable[[], Awaitable[None]]
ReportSink = Callable[[str, list[UsageReport]], Awaitable[None]]

_SET = pb.UsageUpdateBehavior.USAGE_UPDATE_BEHAVIOR_SET
_BEHAVIORS = frozenset(pb.UsageUpdateBehavior)  # betterproto passes unknown values as ints
DEFAULT_MAX_FUTURE_SKEW_S = ApiSettings().max_future_skew_s


def _dimension(value: pb.EventDimensionValue) -> str | float | bool:
    name, inner = betterproto.which_one_of(value, "value")
    if name == "number_value":
        return float(inner)
    if name == "boolean_value":
        return bool(inner)
    return str(inner or "")


class SidecarService(pb.SidecarServiceBase):
    def __init__(
        self,
        environment: str,
        engine: EntitlementEngine,
        counters: UsageCounters,
        *,
        events_sink: EventSink | None = None,
        reports_sink: ReportSink | None = None,
        reload: Reloader | None = None,
        currencies: Callable[[str, str, str | None], list[str]] = lambda env, c, r: [],
        max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,  # settings.api, as REST
    ) -> None:
        self.environment = environment
        self.max_future_ms = int(max_future_skew_s * 1000)
        self.engine = engine
        self.counters = counters
        self.events_sink = events_sink
        self.reports_sink = reports_sink  # usage.reports, read by every runtime instance
        self.reload = reload
        self.currencies = currencies  # the credit currencies a customer holds wallets in
        self.answers = AnswerCache()
        self.codec = CachingCodec()

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        # The generated handlers pass on what grpclib's recv_message gives: None for a request
        # without a message, its exceptions (UNKNOWN, an error traceback) for a compressed,
        # truncated or undecodable one, and it reads any length a prefix declares. Ours read
        # the message as the fast path does.
        return {
            path: grpclib.const.Handler(self._unary(h), h.cardinality, h.request_type, h.reply_type)
            for path, h in super().__mapping__().items()
        }

    def _unary(self, handler: grpclib.const.Handler) -> Callable[[Any], Awaitable[None]]:
        method = getattr(self, handler.func.__name__.removeprefix("__rpc_"))
        request_type = handler.request_type

        async def rpc(stream: grpclib.server.Stream[Any, Any]) -> None:
            data = await read_message(stream)
            problem = msg.timestamp_problem(data, request_type)
            if problem is not None:
                raise grpclib.GRPCError(Status.INVALID_ARGUMENT, problem)
            request = decode(self.codec, data, request_type)
            await stream.send_message(await method(request))

        return rpc

    def fast_methods(self) -> dict[str, Callable[[Any], Any]]:
        """The checks by gRPC path: synchronous, answered from memory (grpc_fastpath.py)."""
        prefix = "/stigg.sidecar.v1.SidecarService/"
        return {
            prefix + "GetBooleanEntitlement": self.get_boolean_entitlement_now,
            prefix + "GetNumericEntitlement": self.get_numeric_entitlement_now,
            prefix + "GetMeteredEntitlement": self.get_metered_entitlement_now,
            prefix + "GetEnumEntitlement": self.get_enum_entitlement_now,
            prefix + "GetEntitlement": self.get_entitlement_now,
            prefix + "GetEntitlementV2": self.get_entitlement_v2_now,
            prefix + "GetEntitlements": self.get_entitlements_now,
            prefix + "GetEntitlementsStateV2": self.get_entitlements_state_v2_now,
        }

    # --- typed checks (each also answered synchronously: *_now) -------------------------------

    async def get_boolean_entitlement(
        self, request: pb.GetBooleanEntitlementRequest
    ) -> pb.GetBooleanEntitlementResponse:
        return self.get_boolean_entitlement_now(request)  # type: ignore[return-value]

    def get_boolean_entitlement_now(self, request: pb.GetBooleanEntitlementRequest) -> Any:
        fb = None
        if request.options is not None and request.options.fallback is not None:
            fb = msg.fallback_from(request.options.fallback.has_access)
        d = self.engine.check(
            self.environment,
            request.customer_id,
            request.feature_id,
            request.resource_id,
            kind=BOOLEAN,
            fallback=fb,
        )
        return self.answers.get(
            msg.decision_key("bool", d, request.feature_id),
            lambda: pb.GetBooleanEntitlementResponse(
                has_access=d.has_access,
                is_fallback=d.is_fallback,
                access_denied_reason=msg.reason_of(d),
                entitlement=msg.boolean(d, request.feature_id),
            ),
        )

    async def get_numeric_entitlement(
        self, request: pb.GetNumericEntitlementRequest
    ) -> pb.GetNumericEntitlementResponse:
        return self.get_numeric_entitlement_now(request)  # type: ignore[return-value]

    def get_numeric_entitlement_now(self, request: pb.GetNumericEntitlementRequest) -> Any:
        fb = None
        if request.options is not None and request.options.fallback is not None:
            f = request.options.fallback
            fb = msg.fallback_from(f.has_access, value=f.value, is_unlimited=f.is_unlimited)
        d = self.engine.check(
            self.environment,
            request.customer_id,
            request.feature_id,
            request.resource_id,
            kind=NUMERIC,
            fallback=fb,
        )
        return self.answers.get(
            msg.decision_key("num", d, request.feature_id),
            lambda: pb.GetNumericEntitlementResponse(
                has_access=d.has_access,
                is_fallback=d.is_fallback,
                access_denied_reason=msg.reason_of(d),
                entitlement=msg.numeric(d, request.feature_id),
            ),
        )

    async def get_metered_entitlement(
        self, request: pb.GetMeteredEntitlementRequest
    ) -> pb.GetMeteredEntitlementResponse:
        return self.get_metered_entitlement_now(request)  # type: ignore[return-value]

    def get_metered_entitlement_now(self, request: pb.GetMeteredEntitlementRequest) -> Any:
        fb = None
        requested = None
        options = request.options
        if options is not None:
            requested = options.requested_usage
            if options.fallback is not None:
                f = options.fallback
                fb = msg.fallback_from(
                    f.has_access, usage_limit=f.usage_limit, is_unlimited=f.is_unlimited
                )
        _requested_usage(requested)
        d = self.engine.check(
            self.environment,
            request.customer_id,
            request.feature_id,
            request.resource_id,
            requested_usage=requested,
            kind=METERED,
            fallback=fb,
        )
        # The request's own usage, also on denials decided before the metered path (which
        # leave it unset): part of the cache key, or one caller's answer would serve another's.
        echoed = d.requested_usage
        if echoed is None:
            echoed = 1.0 if requested is None else requested
        return self.answers.get(
            (*msg.decision_key("metered", d, request.feature_id), echoed),
            lambda: pb.GetMeteredEntitlementResponse(
                has_access=d.has_access,
                is_fallback=d.is_fallback,
                access_denied_reason=msg.reason_of(d),
                requested_usage=echoed,
                entitlement=msg.metered(d, request.feature_id),
            ),
        )

    async def get_enum_entitlement(
        self, request: pb.GetEnumEntitlementRequest
    ) -> pb.GetEnumEntitlementResponse:
        return self.get_enum_entitlement_now(request)  # type: ignore[return-value]

    def get_enum_entitlement_now(self, request: pb.GetEnumEntitlementRequest) -> Any:
        fb = None
        values: tuple[str, ...] = ()
        if request.options is not None:
            values = tuple(request.options.requested_values)
            if request.options.fallback is not None:
                f = request.options.fallback
                fb = msg.fallback_from(f.has_access, enum_values=list(f.enum_values))
        d = self.engine.check(
            self.environment,
            request.customer_id,
            request.feature_id,
            request.resource_id,
            requested_values=values,
            kind=ENUM,
            fallback=fb,
        )
        return self.answers.get(
            # The answer echoes the request's values: they belong in the key (a denial decided
            # early leaves the decision's own empty, and served one customer's to another).
            (*msg.decision_key("enum", d, request.feature_id), values),
            lambda: pb.GetEnumEntitlementResponse(
                has_access=d.has_access,
                is_fallback=d.is_fallback,
                access_denied_reason=msg.reason_of(d),
                requested_values=list(values),
                entitlement=msg.enum(d, request.feature_id),
            ),
        )

    # --- generic checks ---------------------------------------------------------------------

    def _generic(
        self,
        customer_id: str,
        feature_id: str,
        resource_id: str | None,
        options: pb.GetEntitlementOptions | None,
    ):  # type: ignore[no-untyped-def]
        fb = None
        requested = None
        values: tuple[str, ...] = ()
        if options is not None:
            requested = options.requested_usage
            values = tuple(options.requested_values)
            if options.fallback is not None:
                f = options.fallback
                fb = msg.fallback_from(
                    f.has_access,
                    value=f.value,
                    is_unlimited=f.is_unlimited,
                    usage_limit=f.usage_limit,
                    enum_values=list(f.enum_values),
                )
        _requested_usage(requested)
        return self.engine.check(
            self.environment,
            customer_id,
            feature_id,
            resource_id,
            requested_usage=requested,
            requested_values=values,
            fallback=fb,
        )

    async def get_entitlement(self, request: pb.GetEntitlementRequest) -> pb.GetEntitlementResponse:
        return self.get_entitlement_now(request)  # type: ignore[return-value]

    def get_entitlement_now(self, request: pb.GetEntitlementRequest) -> Any:
        d = self._generic(
            request.customer_id, request.feature_id, request.resource_id, request.options
        )
        return self.answers.get(
            msg.decision_key("generic", d, request.feature_id),
            lambda: pb.GetEntitlementResponse(
                has_access=d.has_access,
                is_fallback=d.is_fallback,
                access_denied_reason=msg.reason_of(d),
                **msg.oneof_fields(d, request.feature_id),
            ),
        )

    async def get_entitlement_v2(
        self, request: pb.GetEntitlementV2Request
    ) -> pb.GetEntitlementV2Response:
        return self.get_entitlement_v2_now(request)  # type: ignore[return-value]

    def get_entitlement_v2_now(self, request: pb.GetEntitlementV2Request) -> Any:
        if bool(request.feature_id) == bool(request.currency_id):
            raise grpclib.GRPCError(
                Status.INVALID_ARGUMENT, "exactly one of feature_id and currency_id is required"
            )
        if request.currency_id:
            requested = 0.0
            if request.options is not None and request.options.requested_usage is not None:
                requested = request.options.requested_usage
            _requested_usage(requested)
            c = self.engine.check_credit(
                self.environment,
                request.customer_id,
                request.currency_id,
                request.resource_id,
                requested=requested,
            )
            return pb.GetEntitlementV2Response(entitlement=msg.credit_v2(c, request.currency_id))
        assert request.feature_id is not None
        d = self._generic(
            request.customer_id, request.feature_id, request.resource_id, request.options
        )
        feature_id = request.feature_id
        return self.answers.get(
            msg.decision_key("v2", d, feature_id),
            lambda: pb.GetEntitlementV2Response(entitlement=msg.entitlement_v2(d, feature_id)),
        )

    async def get_entitlements(
        self, request: pb.GetEntitlementsRequest
    ) -> pb.GetEntitlementsResponse:
        return self.get_entitlements_now(request)  # type: ignore[return-value]

    def get_entitlements_now(self, request: pb.GetEntitlementsRequest) -> Any:
        reason, decisions = self.engine.entitlements(
            self.environment, request.customer_id, request.resource_id
        )
        return pb.GetEntitlementsResponse(
            entitlements=[
                pb.Entitlement(**msg.oneof_fields(d, d.feature.id if d.feature else ""))
                for d in decisions
            ],
            access_denied_reason=msg.REASONS[reason] if reason else None,
        )

    async def get_entitlements_state_v2(
        self, request: pb.GetEntitlementsStateV2Request
    ) -> pb.GetEntitlementsStateV2Response:
        return self.get_entitlements_state_v2_now(request)  # type: ignore[return-value]

    def get_entitlements_state_v2_now(self, request: pb.GetEntitlementsStateV2Request) -> Any:
        reason, decisions = self.engine.entitlements(
            self.environment, request.customer_id, request.resource_id
        )
        items = [msg.entitlement_v2(d, d.feature.id if d.feature else "") for d in decisions]
        if self.engine.lists_credits(reason):
            for currency_id in self.currencies(
                self.environment, request.customer_id, request.resource_id
            ):
                c = self.engine.check_credit(
                    self.environment, request.customer_id, currency_id, request.resource_id
                )
                items.append(msg.credit_v2(c, currency_id))
        return pb.GetEntitlementsStateV2Response(
            entitlements=items,
            access_denied_reason=msg.REASONS[reason] if reason else None,
        )

    # --- usage --------------------------------------------------------------------------------

    async def report_usage(self, request: pb.ReportUsageRequest) -> pb.ReportUsageResponse:
        now_ms = int(time.time() * 1000)
        feature = self._validate_usage(request, now_ms)
        (response,) = await self._report([(request, feature)], now_ms)
        return response

    async def report_usage_bulk(
        self, request: pb.ReportUsageBulkRequest
    ) -> pb.ReportUsageBulkResponse:
        if len(request.usages) > 1000:
            raise grpclib.GRPCError(Status.INVALID_ARGUMENT, "at most 1000 usages per call")
        if not request.usages:
            raise grpclib.GRPCError(Status.INVALID_ARGUMENT, "at least one usage is required")
        now_ms = int(time.time() * 1000)
        checked = [  # validate all before applying any
            (usage, self._validate_usage(usage, now_ms, f"usages[{i}]."))
            for i, usage in enumerate(request.usages)
        ]
        return pb.ReportUsageBulkResponse(usages=await self._report(checked, now_ms))

    def _validate_usage(  # type: ignore[no-untyped-def]
        self, request: pb.ReportUsageRequest, now_ms: int, path: str = ""
    ):
        """The usage's metered feature, or a GRPCError; ``path`` prefixes field names."""
        if not request.customer_id or not request.feature_id:
            raise grpclib.GRPCError(
                Status.INVALID_ARGUMENT, f"{path}customer_id and {path}feature_id are required"
            )
        # REST's bounds: a value near 1.7e308 made the counter inf, then a SET NaN (F57).
        problem = usage_value_problem(request.value)
        if problem is not None:
            raise grpclib.GRPCError(Status.INVALID_ARGUMENT, f"{path}value {problem}")
        behavior = request.update_behavior
        if behavior is not None and behavior not in _BEHAVIORS:
            raise grpclib.GRPCError(
                Status.INVALID_ARGUMENT,
                f"{path}update_behavior {behavior} is not a UsageUpdateBehavior value",
            )
        if request.timestamp is not None:
            problem = event_time_problem(epoch_ms(request.timestamp), now_ms, self.max_future_ms)
            if problem is not None:
                raise grpclib.GRPCError(Status.INVALID_ARGUMENT, f"{path}timestamp {problem}")
        env = self.engine.state.env(self.environment)
        feature = env.features.get(request.feature_id)
        if feature is None:
            raise grpclib.GRPCError(Status.NOT_FOUND, f"feature {request.feature_id!r} not found")
        if feature.meterType == "None":
            raise grpclib.GRPCError(
                Status.FAILED_PRECONDITION,
                f"feature {request.feature_id!r} is not metered; usage cannot be reported",
            )
        if request.customer_id not in env.customers:
            raise grpclib.GRPCError(Status.NOT_FOUND, f"customer {request.customer_id!r} not found")
        if request.resource_id and request.resource_id not in env.customer_resources(
            request.customer_id
        ):
            raise grpclib.GRPCError(
                Status.NOT_FOUND,
                f"resource {request.resource_id!r} of customer {request.customer_id!r} not found",
            )
        return feature

    async def _report(
        self, checked: list[tuple[pb.ReportUsageRequest, Feature]], now_ms: int
    ) -> list[pb.ReportUsageResponse]:
        """Log the usages to ``usage.reports`` (when configured), then count them here.

        Every runtime instance counts what the log holds, each report once (claimed by its
        id): counted only here, a report reached one replica of several (F58)."""
        reports = [
            UsageReport(
                id=str(uuid.uuid4()),  # the request has no idempotency key (contract)
                customerId=request.customer_id,
                featureId=request.feature_id,
                value=round_usage_value(request.value),
                updateBehavior="SET" if request.update_behavior == _SET else "DELTA",
                createdAt=now_ms if request.timestamp is None else epoch_ms(request.timestamp),
                resourceId=request.resource_id or None,
            )
            for request, _ in checked
        ]
        if self.reports_sink is not None:
            try:
                await self.reports_sink(self.environment, reports)
            except Exception as exc:
                log.warning("ReportUsage could not make the usage durable: %r", exc)
                raise grpclib.GRPCError(Status.UNAVAILABLE, "usage log unavailable, retry") from exc
        results = await asyncio.to_thread(
            self._count,
            [(report, feature) for report, (_, feature) in zip(reports, checked, strict=True)],
            durable=self.reports_sink is not None,
        )
        responses = []
        for report, (request, _), result in zip(reports, checked, results, strict=True):
            response = pb.ReportUsageResponse(
                measurement_id=report.id,
                customer_id=request.customer_id,
                resource_id=request.resource_id,
                feature_id=request.feature_id,
                current_usage=result.current_usage,
            )
            if result.window_end:
                response.usage_period_start = msg._time(result.window_start)
                response.usage_period_end = msg._time(result.window_end)
            responses.append(response)
        return responses

    def _count(self, reports: list[tuple[UsageReport, Feature]], durable: bool) -> list[Reported]:
        results: list[Reported] = []
        for report, feature in reports:
            try:
                result = self.counters.report_logged(self.environment, report, feature)
            except Exception:
                if not durable:
                    raise  # nothing of it is anywhere: the caller's retry is safe
                # In usage.reports, the consumers (this instance's too) count it. An error
                # would invite a retry the log cannot tell from a new DELTA (no idempotency
                # key): answer what is known, as REST /api/v2/usage does.
                log.exception("counting logged usage report %s failed", report.id)
                set_value = report.value if report.updateBehavior == "SET" else 0.0
                result = Reported(set_value, 0, 0, report.createdAt / 1000.0)
            results.append(result)
        return results

    async def report_events(self, request: pb.ReportEventsRequest) -> pb_google.Empty:
        if self.events_sink is None:
            raise grpclib.GRPCError(Status.UNAVAILABLE, "event reporting is not configured")
        if len(request.events) > 1000:
            raise grpclib.GRPCError(Status.INVALID_ARGUMENT, "at most 1000 events per call")
        if not request.events:
            raise grpclib.GRPCError(Status.INVALID_ARGUMENT, "at least one event is required")
        now_ms = int(time.time() * 1000)
        events: list[UsageEvent] = []
        for i, ev in enumerate(request.events):
            if not ev.customer_id or not ev.event_name or not ev.idempotency_key:
                raise grpclib.GRPCError(
                    Status.INVALID_ARGUMENT,
                    f"events[{i}]: customer_id, event_name and idempotency_key are required",
                )
            dims = {name: _dimension(value) for name, value in ev.dimensions.items()}
            for name, value in dims.items():
                if not name:  # the stream engines' event count is the metric named ""
                    raise grpclib.GRPCError(
                        Status.INVALID_ARGUMENT, f"events[{i}].dimensions: a name is empty"
                    )
                # The stream engines and the counters sum numeric dimensions as floats.
                problem = dimension_value_problem(value)
                if problem is not None:
                    raise grpclib.GRPCError(
                        Status.INVALID_ARGUMENT, f"events[{i}].dimensions.{name} {problem}"
                    )
            at_ms = now_ms if ev.timestamp is None else epoch_ms(ev.timestamp)
            # A future time would move the stream watermark of every customer on the partition.
            problem = event_time_problem(at_ms, now_ms, self.max_future_ms)
            if problem is not None:
                raise grpclib.GRPCError(Status.INVALID_ARGUMENT, f"events[{i}].timestamp {problem}")
            events.append(
                UsageEvent(
                    customerId=ev.customer_id,
                    eventName=ev.event_name,
                    idempotencyKey=ev.idempotency_key,
                    timestamp=at_ms,
                    resourceId=ev.resource_id or None,
                    dimensions=dims,
                )
            )
        try:
            await self.events_sink(self.environment, events)
        except ItemTooLarge as exc:
            # No record could carry it: UNAVAILABLE would have the client retry forever.
            event = exc.item
            assert isinstance(event, UsageEvent)
            raise grpclib.GRPCError(
                Status.INVALID_ARGUMENT,
                f"the event of customer {event.customerId[:64]!r} with idempotency_key "
                f"{event.idempotencyKey[:64]!r} is {exc.size} bytes encoded (at most "
                f"{MAX_RECORD_BYTES} per event)",
            ) from None
        except Exception as exc:
            log.warning("ReportEvents could not make the events durable: %r", exc)
            raise grpclib.GRPCError(Status.UNAVAILABLE, "event log unavailable, retry") from exc
        return pb_google.Empty()

    async def reload_entitlements(
        self, request: pb.ReloadEntitlementsRequest
    ) -> pb.ReloadEntitlementsResponse:
        if self.reload is not None:
            try:
                await self.reload()
            except Exception as exc:  # the answer comes from local state either way
                log.info("reload: sync failed, answering from local state: %r", exc)
        env = self.engine.state.env(self.environment)
        exists = request.customer_id in env.customers
        if exists and request.resource_id:
            exists = request.resource_id in env.customer_resources(request.customer_id)
        return pb.ReloadEntitlementsResponse(entitled_entity_exists=exists)


def _finite(name: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise grpclib.GRPCError(Status.INVALID_ARGUMENT, f"{name} must be a finite number")


def _requested_usage(value: float | None) -> None:
    _finite("requested_usage", value)
    if value is not None and value < 0:  # REST: 400 "requestedUsage must be at least 0"
        raise grpclib.GRPCError(Status.INVALID_ARGUMENT, "requested_usage must be at least 0")
