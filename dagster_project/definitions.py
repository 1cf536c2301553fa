"""The Dagster code location of byoc-platform."""

from dagster import Definitions

defs = Definitions()
