"""Dagster assets and asset checks of byoc-platform, grouped by concern.

- ``sources``: the ClickHouse tables the stream processor fills (external assets).
- ``rollups``: hourly usage per (environment, customer, resource, feature).
- ``publish``: the rollups sent to the control plane (ReportUsageBulk), exactly once.
- ``archive``: raw events as encrypted Parquet on object storage (the cold tier).
- ``retention``: hot partitions dropped once archived; expired archive objects removed.
- ``quality``: asset checks (reconciliation, expectations, freshness, archive counts).

This package imports ``byoc_platform`` only; ``dagster_project`` assembles it.
"""
