"""Dagster resources: the platform's engines, built from the one settings object.

Each resource names where the settings come from (``config_file``: a YAML settings file such
as the ``settings.yaml`` the stack supervisor writes; empty: the process's own ``BYOC_*``
environment and ``BYOC_CONFIG_FILE``), so no secret ever appears in resource config shown by
the UI. ``dagster_project.resources`` picks the variant per deployment (local stack / cluster).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

import yaml
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from byoc_platform.settings import Settings

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client as ClickHouseClient

    from byoc_platform.control_plane.client import ControlPlaneClient


def load_settings(config_file: str | Path | None = None) -> Settings:
    """The settings from a YAML file (its values win over the environment), or the environment."""
    if not config_file:
        return Settings()
    data = yaml.safe_load(Path(config_file).read_text()) or {}
    return Settings(**data)


class PlatformResource(ConfigurableResource):
    config_file: str = Field(
        default="",
        description="YAML settings file; empty: BYOC_* environment / BYOC_CONFIG_FILE.",
    )
    _settings: Settings | None = PrivateAttr(default=None)

    @classmethod
    def for_settings(cls, settings: Settings, **fields: Any) -> Self:
        """A resource over an in-memory settings object (CLI commands, scripts)."""
        resource = cls(**fields)
        resource._settings = settings
        return resource

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_file)
        return self._settings


class WarehouseResource(PlatformResource):
    """ClickHouse (the stack's warehouse process, or a ClickHouse cluster) over HTTP."""

    @property
    def database(self) -> str:
        return self.settings.clickhouse.database

    @contextmanager
    def client(self, ensure: bool = True) -> Iterator[ClickHouseClient]:
        """A client (one per thread); ``ensure``: create the Dagster-owned tables if missing."""
        from assets.warehouse_tables import ensure_tables
        from byoc_platform.clients import clickhouse

        client = clickhouse(self.settings)
        try:
            if ensure:
                ensure_tables(client, self.database, self.settings.clickhouse.cluster)
            yield client
        finally:
            client.close()


class ArchiveStoreResource(PlatformResource):
    """Object storage + KMS of the cold tier.

    ``credentials``: ``static`` uses the settings' access keys (the local stack);
    ``default_chain`` leaves them to boto3 (instance profile / IRSA in a cluster).
    ``create_missing_keys``: create the PII column key if absent (local stack only; in a
    cloud the keys come from Terraform).
    """

    credentials: Literal["static", "default_chain"] = "static"
    create_missing_keys: bool = False

    @property
    def bucket(self) -> str:
        return self.settings.s3.archive_bucket

    def _boto3(self, service: str) -> Any:
        import boto3

        from byoc_platform.clients import boto3_config, boto3_kwargs

        kwargs = boto3_kwargs(self.settings, service)
        if self.credentials == "default_chain":
            kwargs.pop("aws_access_key_id")
            kwargs.pop("aws_secret_access_key")
        return boto3.client(service, config=boto3_config(service), **kwargs)

    def s3(self) -> Any:
        return self._boto3("s3")

    def kms(self) -> Any:
        client = self._boto3("kms")
        if self.create_missing_keys:
            from assets.archive.keys import ensure_key

            ensure_key(client, self.settings.kms.pii_key_alias, "byoc-platform archive PII key")
        return client


class ControlPlaneResource(PlatformResource):
    """The control plane: its change feed (meters) and Stigg's GraphQL API (ReportUsageBulk)."""

    def catalog(self) -> ControlPlaneClient:
        from byoc_platform.control_plane.client import ControlPlaneClient

        return ControlPlaneClient.from_settings(self.settings)

    def graphql(self) -> Any:
        """Stigg's official GraphQL client (stigg-api-client-v2) for the configured API URL."""
        # By module path: the package ``stigg`` is shared with the REST SDK (see
        # byoc_platform/control_plane/graphql.py).
        from stigg.client import Stigg

        cp = self.settings.control_plane
        assert cp.api_url is not None
        return Stigg.create_client(cp.api_key, api_url=cp.api_url, enable_edge=False)
