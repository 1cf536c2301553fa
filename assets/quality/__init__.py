"""Data quality: reconciliation, expectations, freshness, archive counts, coverage."""
