"""The GraphQL operations of Stigg Cloud that the local control plane serves.

Requests are ``POST /graphql`` with ``{"query", "operationName", "variables"}``; we dispatch on
``operationName`` (falling back to the ``x-graphql-operation-name`` header the v2 client also
sends) instead of parsing the query text, because the official client only ever sends its own
fixed documents. Answers are ``200 {"data": ...}`` or ``200 {"errors": [{"message",
"extensions": {"code"}}]}``; error codes use Stigg's ``ErrorCode`` names (``BadUserInput``,
``CustomerNotFound``, ``FeatureNotFound``).

Served: ``ReportUsageBulk`` (<= 100 usages), ``ReportUsage``, ``ReportEvent`` (<= 1000 events).
The data shapes are what the v2 client's pydantic models require (``ReportUsageFragment``:
``id``, ``featureId``, ``customerId`` and ``timestamp`` are mandatory).

How the official GraphQL client is installed and imported
--------------------------------------------------------
Two distributions install into the SAME top-level package ``stigg`` in site-packages:

- ``stigg`` 0.1.0b53 (the Stainless REST SDK): ``stigg/_client.py``, ``stigg/_base_client.py``,
  ``stigg/resources/``, ``stigg/types/``, ... and its own ``stigg/__init__.py``.
- ``stigg-api-client-v2`` 6.25.0 (the ariadne-codegen GraphQL client): ``stigg/client.py``,
  ``stigg/_edge_utils.py``, ``stigg/generated/`` ... and ALSO ``stigg/__init__.py``.

Their RECORD files both list ``stigg/__init__.py``; that is the only path they share, and the
installer that wrote last wins. In this venv the file on disk is the v2 one (its sha256 matches
``stigg_api_client_v2-6.25.0.dist-info/RECORD``), so ``from stigg import Stigg`` is the
*GraphQL* factory, and the REST SDK's top-level re-exports (``stigg.Stigg`` as the REST client,
``stigg.APIError``, ...) are missing. ``stigg_sidecar_sdk`` relies on the v2 one winning
(``from stigg import Stigg, AsyncStiggClient``). Import by module path, which works whichever
``__init__`` won:

- GraphQL v2 client: ``from stigg.client import Stigg`` then
  ``Stigg.create_client(api_key, api_url="http://127.0.0.1:8090/graphql", enable_edge=False)``
  (``create_async_client`` for asyncio); input models in ``stigg.generated.input_types``
  (``ReportUsageBulkInput``, ``ReportUsageBaseInput``, ``ReportUsageInput``,
  ``UsageEventsReportInput``, ``UsageEventReportInput``), enums in ``stigg.generated.enums``
  (``UsageUpdateBehavior``), errors in ``stigg.generated.exceptions``.
- REST SDK: ``from stigg._client import Stigg`` (not ``from stigg import Stigg``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from byoc_platform.control_plane.store import (
    EventIn,
    Store,
    UnknownEntity,
    UsageIn,
    UsageRecord,
)

MAX_BULK_USAGES = 100  # Stigg's reportUsageBulk limit (settings.control_plane.publish_bulk_size)
MAX_EVENTS = 1000

_T = TypeVar("_T")
log = logging.getLogger(__name__)

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
Dimensions = dict[str, str | float | bool]


class GraphQLError(Exception):
    def __init__(self, message: str, code: str = "BadUserInput") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# Input types, strict like a GraphQL schema: unknown fields are refused.
class _UsageBase(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    customerId: NonEmpty
    featureId: NonEmpty
    value: float
    updateBehavior: Literal["DELTA", "SET"] = "DELTA"
    idempotencyKey: NonEmpty | None = None
    resourceId: NonEmpty | None = None
    dimensions: Dimensions | None = None
    createdAt: datetime | None = None


class _ReportUsageInput(_UsageBase, kw_only=True, forbid_unknown_fields=True):
    environmentId: NonEmpty | None = None


class _ReportUsageBulkInput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    usages: Annotated[list[_UsageBase], msgspec.Meta(max_length=MAX_BULK_USAGES)]
    environmentId: NonEmpty | None = None


class _UsageEvent(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    customerId: NonEmpty
    eventName: NonEmpty
    idempotencyKey: NonEmpty
    resourceId: NonEmpty | None = None
    dimensions: Dimensions | None = None
    timestamp: datetime | None = None


class _UsageEventsReportInput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    usageEvents: Annotated[list[_UsageEvent], msgspec.Meta(min_length=1, max_length=MAX_EVENTS)]
    environmentId: NonEmpty | None = None


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # naive timestamps are UTC, as in the event model
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _input(variables: dict[str, Any], cls: type[_T]) -> _T:
    if "input" not in variables:
        raise GraphQLError("missing variable `input`")
    try:
        return msgspec.convert(variables["input"], cls)
    except msgspec.ValidationError as exc:
        # msgspec names the field as `$.usages[3].value`; GraphQL users know it as `input...`.
        raise GraphQLError(f"invalid input: {str(exc).replace('`$', '`input')}") from None


def _usage(u: _UsageBase, where: str) -> UsageIn:
    if not math.isfinite(u.value):
        raise GraphQLError(f"invalid input: value must be a finite number - at `{where}.value`")
    return UsageIn(
        customerId=u.customerId,
        featureId=u.featureId,
        value=u.value,
        updateBehavior=u.updateBehavior,
        idempotencyKey=u.idempotencyKey,
        resourceId=u.resourceId,
        dimensions=u.dimensions,
        createdAt=_iso(u.createdAt),
    )


def _measurement(record: UsageRecord) -> dict[str, Any]:
    """A UsageMeasurementWithCurrentUsage as ReportUsageFragment selects it."""
    return {
        "__typename": "UsageMeasurementWithCurrentUsage",
        "id": record.id,
        "featureId": record.featureId,
        "customerId": record.customerId,
        "resourceId": record.resourceId,
        "currentUsage": record.currentUsage,
        "credit": None,
        "usagePeriodStart": None,
        "usagePeriodEnd": None,
        "nextResetDate": None,
        "timestamp": record.createdAt or record.receivedAt,
    }


class Operations:
    """Executes the served operations against one store."""

    def __init__(self, store: Store, default_environment: str, *, require_catalog: bool = True):
        self.store = store
        self.default_environment = default_environment
        # Stigg Cloud refuses usage for customers/features it does not know; so do we.
        self.require_catalog = require_catalog
        self._ops: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "ReportUsageBulk": self.report_usage_bulk,
            "ReportUsage": self.report_usage,
            "ReportEvent": self.report_event,
        }

    def execute(self, body: Any, header_operation: str | None = None) -> dict[str, Any]:
        """Run one request body; return the GraphQL response document (never raises)."""
        try:
            if not isinstance(body, dict):
                raise GraphQLError("request body must be a JSON object")
            name = body.get("operationName") or header_operation
            if not name:
                raise GraphQLError("missing operationName")
            op = self._ops.get(name)
            if op is None:
                raise GraphQLError(
                    f"operation {name!r} is not served by the local control plane "
                    f"(served: {', '.join(sorted(self._ops))})",
                    "OperationNotSupported",
                )
            variables = body.get("variables") or {}
            if not isinstance(variables, dict):
                raise GraphQLError("`variables` must be an object")
            return {"data": op(variables)}
        except GraphQLError as exc:
            return {"errors": [{"message": exc.message, "extensions": {"code": exc.code}}]}

    def _report(self, env: str, usages: list[UsageIn]) -> list[dict[str, Any]]:
        try:
            records = self.store.report_usages(env, usages, require_catalog=self.require_catalog)
        except UnknownEntity as exc:
            code = "CustomerNotFound" if exc.kind == "customer" else "FeatureNotFound"
            raise GraphQLError(
                f"{exc.kind} {exc.id!r} not found in environment {env!r}"
                f" - at `input.usages[{exc.index}]`",
                code,
            ) from None
        duplicates = sum(r.duplicate for r in records)
        log.info(
            "usage reported",
            extra={
                "fields": {
                    "environment": env,
                    "accepted": len(records) - duplicates,
                    "duplicates": duplicates,
                }
            },
        )
        return [_measurement(r) for r in records]

    def report_usage_bulk(self, variables: dict[str, Any]) -> dict[str, Any]:
        inp = _input(variables, _ReportUsageBulkInput)
        usages = [_usage(u, f"input.usages[{i}]") for i, u in enumerate(inp.usages)]
        env = inp.environmentId or self.default_environment
        return {"reportUsageBulk": self._report(env, usages)}

    def report_usage(self, variables: dict[str, Any]) -> dict[str, Any]:
        inp = _input(variables, _ReportUsageInput)
        env = inp.environmentId or self.default_environment
        try:
            [measurement] = self._report(env, [_usage(inp, "input")])
        except GraphQLError as exc:
            exc.message = exc.message.replace("input.usages[0]", "input")
            raise
        return {"reportUsage": measurement}

    def report_event(self, variables: dict[str, Any]) -> dict[str, Any]:
        inp = _input(variables, _UsageEventsReportInput)
        env = inp.environmentId or self.default_environment
        result = self.store.report_events(
            env,
            [
                EventIn(
                    customerId=e.customerId,
                    idempotencyKey=e.idempotencyKey,
                    eventName=e.eventName,
                    resourceId=e.resourceId,
                    dimensions=e.dimensions,
                    timestamp=_iso(e.timestamp),
                )
                for e in inp.usageEvents
            ],
        )
        log.info(
            "events reported",
            extra={
                "fields": {
                    "environment": env,
                    "accepted": result.accepted,
                    "duplicates": result.duplicates,
                }
            },
        )
        return {"reportEvent": None}
