"""The Dagster-side fixtures (session stack settings file, isolated environment, ClickHouse)."""

from tests.assets.conftest import ch, config_file, env

__all__ = ["ch", "config_file", "env"]
