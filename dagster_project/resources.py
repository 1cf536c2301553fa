"""Resources per deployment, chosen from ``settings.deployment``.

- ``local``: the embedded stack of `byoc up` (static S3/KMS keys from the settings; the PII
  archive key is created on first use).
- ``cluster``: a cloud deployment (S3/KMS credentials from boto3's default chain, e.g. IRSA;
  KMS keys provisioned by Terraform, never created here).
Both read the same settings object; ``config_file`` names a YAML settings file for processes
that do not get it through ``BYOC_CONFIG_FILE`` (tests, ad-hoc runs).
"""

from __future__ import annotations

from typing import Any

from assets.resources import ArchiveStoreResource, ControlPlaneResource, WarehouseResource
from byoc_platform.settings import Settings


def local_resources(config_file: str = "") -> dict[str, Any]:
    return {
        "warehouse": WarehouseResource(config_file=config_file),
        "archive_store": ArchiveStoreResource(
            config_file=config_file, credentials="static", create_missing_keys=True
        ),
        "control_plane": ControlPlaneResource(config_file=config_file),
    }


def cluster_resources(config_file: str = "") -> dict[str, Any]:
    return {
        "warehouse": WarehouseResource(config_file=config_file),
        "archive_store": ArchiveStoreResource(
            config_file=config_file, credentials="default_chain", create_missing_keys=False
        ),
        "control_plane": ControlPlaneResource(config_file=config_file),
    }


def resources_for(settings: Settings, config_file: str = "") -> dict[str, Any]:
    if settings.deployment == "cluster":
        return cluster_resources(config_file)
    return local_resources(config_file)
