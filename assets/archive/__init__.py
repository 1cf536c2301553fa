"""The cold tier: raw events as encrypted Parquet on object storage, verified, restorable."""
