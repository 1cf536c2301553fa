"""Retention of the hot tier (ClickHouse partitions) and of the cold tier (archive objects)."""
