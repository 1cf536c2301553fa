"""The same SQL layer on PostgreSQL: the runtime with its local store and ledger on a real
PostgreSQL server, across a restart; and two runtime PROCESSES consuming over REST from one
wallet in a shared ledger never overdraw it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from stigg_sidecar_sdk.generated.stigg.sidecar import v1 as pb

from byoc_platform.auth import KeyStore
from enforcement.ledger import Ledger
from tests.enforcement.harness import (
    CP_KEY,
    REPO,
    ControlPlaneProcess,
    free_port,
    make_settings,
    running,
    wait_until,
)
from tests.enforcement.test_sidecar_checks import call
from tests.fixtures_postgres import fresh_database, postgres_server


@pytest.fixture(scope="module")
def pg() -> Iterator[str]:
    with postgres_server() as url:
        yield url


def test_runtime_state_on_postgres_survives_a_restart(
    pg: str, control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    store_url, ledger_url = fresh_database(pg), fresh_database(pg)

    def settings():  # type: ignore[no-untyped-def]
        s = make_settings(tmp_path / "rt", control_plane.url, database_url=store_url)
        s.ledger.database_url = ledger_url
        return s

    with running(settings()) as runtime:
        runtime.sync_now()
        assert runtime.component.store.dialect == "postgresql"
        used = call(
            runtime,
            lambda s: s.report_usage(
                pb.ReportUsageRequest(customer_id="c-basic", feature_id="f-calls", value=12)
            ),
        )
        assert used.current_usage == 12
        with runtime.http() as http:
            granted = http.post(
                "/api/v1/credits/grants",
                json={
                    "amount": 5,
                    "currencyId": "credits",
                    "customerId": "c-basic",
                    "displayName": "pg",
                    "grantType": "PAID",
                },
            )
            assert granted.status_code == 200
        cursor = runtime.component.sync.syncs["development"].status.cursor
    control_plane.stop()
    try:
        with running(settings()) as runtime:
            answer = call(
                runtime,
                lambda s: s.get_metered_entitlement(
                    pb.GetMeteredEntitlementRequest(customer_id="c-basic", feature_id="f-calls")
                ),
            )
            assert answer.has_access is True and answer.is_fallback is True
            assert answer.entitlement.current_usage == 12
            assert runtime.component.sync.syncs["development"].status.cursor == cursor
            with runtime.http() as http:
                check = http.get(
                    "/api/v1/customers/c-basic/entitlements/check", params={"currencyId": "credits"}
                ).json()["data"]
            assert check["usageLimit"] == 5
    finally:
        control_plane.start()


def serve(
    data_dir: Path, cp: ControlPlaneProcess, store_url: str, ledger_url: str
) -> tuple[subprocess.Popen[bytes], str, str]:
    key = KeyStore(data_dir / "auth" / "api_keys.json").create("development")
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "BYOC_DATA_DIR": str(data_dir),
            "BYOC_PORTS__API": str(port),
            "BYOC_PORTS__GRPC": str(free_port()),
            "BYOC_CONTROL_PLANE__API_URL": f"{cp.url}/graphql",
            "BYOC_CONTROL_PLANE__API_KEY": CP_KEY,
            "BYOC_ENFORCEMENT__DATABASE_URL": store_url,
            "BYOC_LEDGER__DATABASE_URL": ledger_url,
            "BYOC_ENFORCEMENT__CONSUME_USAGE": "false",
            "BYOC_ENFORCEMENT__REBUILD_FROM_WAREHOUSE": "false",
            "BYOC_LOG_LEVEL": "WARNING",
        }
    )
    log = (data_dir / "serve.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "byoc_platform", "serve", "--role", "enforcement"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout=90)
    return proc, url, key


def test_two_runtime_processes_never_overdraw_one_wallet(
    pg: str, control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    ledger_url = fresh_database(pg)
    procs = []
    try:
        a = serve(tmp_path / "a", control_plane, fresh_database(pg), ledger_url)
        procs.append(a[0])
        b = serve(tmp_path / "b", control_plane, fresh_database(pg), ledger_url)
        procs.append(b[0])
        wallet = 600
        with httpx.Client(base_url=a[1], headers={"X-API-KEY": a[2]}) as http:
            assert (
                http.post(
                    "/api/v1/credits/grants",
                    json={
                        "amount": wallet + 2,  # + one warm-up consumption per process
                        "currencyId": "credits",
                        "customerId": "c-nosub",
                        "displayName": "shared",
                        "grantType": "PAID",
                    },
                ).status_code
                == 200
            )
        # Warm-up: each process's first consumption starts its ledger writer; without it one
        # process could drain the wallet before the other has started.
        for _, url, key in (a, b):
            warm = httpx.post(
                f"{url}/api/v1/credits/consumption",
                headers={"X-API-KEY": key},
                json={
                    "amount": 1,
                    "currencyId": "credits",
                    "customerId": "c-nosub",
                    "idempotencyKey": uuid.uuid4().hex,
                },
                timeout=60,
            )
            assert warm.status_code == 200, warm.text
        ok: list[str] = []
        refusals: list[str] = []
        lock = threading.Lock()
        start = threading.Barrier(32)  # both processes spend from the first request on

        def worker(url: str, key: str) -> None:
            with httpx.Client(base_url=url, headers={"X-API-KEY": key}, timeout=60) as http:
                start.wait()
                while True:
                    resp = http.post(
                        "/api/v1/credits/consumption",
                        json={
                            "amount": 1,
                            "currencyId": "credits",
                            "customerId": "c-nosub",
                            "idempotencyKey": uuid.uuid4().hex,
                        },
                    )
                    if resp.status_code != 200:
                        with lock:
                            refusals.append(resp.json()["error"]["code"])
                        return
                    with lock:
                        ok.append(url)

        threads = [
            threading.Thread(target=worker, args=(url, key))
            for _, url, key in (a, b)
            for _ in range(16)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert set(refusals) == {"INSUFFICIENT_CREDITS"}  # (a failed assert in a thread is lost)
        assert len(ok) == wallet  # exactly the wallet: no overdraft, nothing lost
        assert set(ok) == {a[1], b[1]}  # both processes did consume
        ledger = Ledger.from_url(ledger_url)
        try:
            balance = ledger.balance("development", "c-nosub", "credits")
            assert balance.available == 0 and balance.consumed == wallet + 2
            ledger.check_invariants()
        finally:
            ledger.close()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
