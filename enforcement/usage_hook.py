"""Aggregated usage from the ingestion routes (REST /api/v2/usage, GraphQL ReportUsage) into
the counters, through ``RuntimeContext.hooks.usage`` (byoc_platform.plugins.UsageApplier).

Ingestion validates with :meth:`validate_usage` (unknown customer or feature: 404, a feature
that is not metered: 400, nothing written), logs the reports durably to ``usage.reports``, then
calls :meth:`apply_usage`. Each report is claimed by its id, so the same report read back from
``usage.reports`` by this or another runtime instance counts once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from byoc_platform.api_errors import ApiError
from byoc_platform.catalog import Feature
from byoc_platform.events import UsageReport, usage_value_problem
from byoc_platform.plugins import UsageOutcome
from enforcement.counters import UsageCounters
from enforcement.state import LocalState

log = logging.getLogger(__name__)


class UsageHook:
    def __init__(self, state: LocalState, counters: UsageCounters) -> None:
        self.state = state
        self.counters = counters

    def _feature(self, environment: str, report: UsageReport, where: str) -> Feature:
        env = self.state.env(environment)
        if report.customerId not in env.customers:
            raise ApiError(
                404,
                f"{where}.customerId: customer {report.customerId!r} not found",
                retryable=False,
            )
        feature = env.features.get(report.featureId)
        if feature is None:
            raise ApiError(
                404, f"{where}.featureId: feature {report.featureId!r} not found", retryable=False
            )
        if feature.meterType == "None":
            raise ApiError(
                400,
                f"{where}.featureId: feature {report.featureId!r} is not metered",
                retryable=False,
            )
        if report.resourceId and report.resourceId not in env.customer_resources(report.customerId):
            raise ApiError(
                404,
                f"{where}.resourceId: resource {report.resourceId!r} of customer "
                f"{report.customerId!r} not found",
                retryable=False,
            )
        return feature

    def validate_usage(
        self, environment: str, reports: Sequence[UsageReport], path: str = "usages"
    ) -> None:
        for index, report in enumerate(reports):
            where = f"{path}[{index}]" if path.endswith("usages") else path
            self._feature(environment, report, where)

    def apply_one(self, environment: str, report: UsageReport) -> UsageOutcome:
        feature = self.state.env(environment).features.get(report.featureId)
        if feature is None or feature.meterType == "None":
            return UsageOutcome()  # the catalog changed since validation: nothing to count
        problem = usage_value_problem(report.value)
        if problem is not None:
            # Logged before every path bounded values (gRPC did not, F57): counted, such a
            # value made the counter inf, then NaN, failing the usage.reports consumer.
            log.error(
                "usage report %s of customer %r not counted: value %s",
                report.id,
                report.customerId,
                problem,
            )
            return UsageOutcome()
        result = self.counters.report_logged(environment, report, feature)
        if not result.window_end:
            return UsageOutcome(current_usage=result.current_usage)
        return UsageOutcome(
            current_usage=result.current_usage,
            usage_period_start=result.window_start * 1000,
            usage_period_end=result.window_end * 1000,
            next_reset_date=result.window_end * 1000,
        )

    def apply_many(self, environment: str, reports: Sequence[UsageReport]) -> list[UsageOutcome]:
        return [self.apply_one(environment, report) for report in reports]

    async def apply_usage(
        self, environment: str, reports: Sequence[UsageReport]
    ) -> list[UsageOutcome]:
        return await asyncio.to_thread(self.apply_many, environment, list(reports))
