"""Great Expectations suite of the hourly rollup, run inside an asset check.

``import great_expectations`` costs 5-7 s and ~320 MB here (platform-facts.md), so it happens
only inside :func:`validate_rollup`, i.e. only in a run that executes the check; definitions
loading, the webserver and other runs never pay for it. Analytics and progress bars are off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from assets.rollups.compute import REPORTED_DELTA

if TYPE_CHECKING:
    import pandas as pd

KEY_COLUMNS = ("environment", "customer_id", "feature_id", "hour")
# Non-Nullable String columns: a missing value is '', never null, so they must not be empty.
TEXT_KEY_COLUMNS = ("environment", "customer_id", "feature_id")


@dataclass
class SuiteResult:
    success: bool
    evaluated: int
    failed: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)


def validate_rollup(frame: pd.DataFrame, allowed_features: list[str]) -> SuiteResult:
    """Run the rollup suite on ``frame`` (columns of usage_hourly plus ``env_feature``).

    ``allowed_features``: "environment/feature_id" pairs the catalog holds, and those of
    deleted features whose meters the rollup keeps.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas("warehouse")
    batch_definition = source.add_dataframe_asset(
        "hourly_usage_rollup"
    ).add_batch_definition_whole_dataframe("hour")
    suite = gx.ExpectationSuite(name="hourly_usage_rollup")
    for column in KEY_COLUMNS:
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=column))
    for column in TEXT_KEY_COLUMNS:
        suite.add_expectation(gxe.ExpectColumnValueLengthsToBeBetween(column=column, min_value=1))
    # A reported DELTA may give usage back (a negative report): its hourly sum may be < 0.
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(
            column="value",
            min_value=0,
            row_condition=f'aggregation != "{REPORTED_DELTA}"',
            condition_parser="pandas",
        )
    )
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="events", min_value=1))
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeInSet(column="env_feature", value_set=sorted(allowed_features))
    )
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    outcome = batch.validate(suite)
    results = []
    for r in outcome.results:
        config = r.expectation_config
        results.append(
            {
                "expectation": config.type,
                "column": config.kwargs.get("column"),
                "success": bool(r.success),
                "unexpected_count": r.result.get("unexpected_count"),
                "partial_unexpected_list": r.result.get("partial_unexpected_list", [])[:5],
            }
        )
    return SuiteResult(
        success=bool(outcome.success),
        evaluated=len(results),
        failed=[r for r in results if not r["success"]],
        results=results,
    )
