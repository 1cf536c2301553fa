"""The same SQL layer on PostgreSQL: the runtime with its local store and ledger on a real
PostgreSQL server, across a restart; and two runtime PROCESSES consuming over REST from one
wallet in a shared ledger never overdraw it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from stigg_sidecar_sdk.generated.stigg.sidecar import v1 as pb

from byoc_platform.auth import KeyStore
from byoc_platform.catalog import ChangePage, Customer, Grant
from byoc_platform.control_plane.store import Store as ControlPlaneStore
from byoc_platform.events import UsageEvent
from byoc_platform.settings import Settings
from enforcement.counters import UsageCounters
from enforcement.credits import CreditService
from enforcement.ledger import Ledger
from enforcement.state import LocalState
from enforcement.store import Store, StoreInUse, integer_columns
from enforcement.sync import InboundSync
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
        # Deduplicated events count once: each claim's outcome was read from rowcount, -1 on
        # PostgreSQL, so no event was ever counted there (F60).
        now_ms = int(time.time() * 1000)
        events = [
            UsageEvent(
                customerId="c-basic",
                eventName="api_call",
                idempotencyKey=f"pg-{i}",
                timestamp=now_ms,
            )
            for i in range(3)
        ]
        counters = runtime.component.counters
        assert counters.apply_events("development", events) == 3
        assert counters.apply_events("development", events) == 0  # a redelivery
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
            assert answer.entitlement.current_usage == 15
            assert runtime.component.sync.syncs["development"].status.cursor == cursor
            with runtime.http() as http:
                check = http.get(
                    "/api/v1/customers/c-basic/entitlements/check", params={"currencyId": "credits"}
                ).json()["data"]
            assert check["usageLimit"] == 5
    finally:
        control_plane.start()


SERVE = [sys.executable, "-m", "byoc_platform", "serve", "--role", "enforcement"]


def serve_env(data_dir: Path, port: int, store_url: str, ledger_url: str) -> dict[str, str]:
    """The environment of a `byoc serve` process on these databases (no Kafka, no warehouse)."""
    return {
        **os.environ,
        "BYOC_DATA_DIR": str(data_dir),
        "BYOC_PORTS__API": str(port),
        "BYOC_PORTS__GRPC": str(free_port()),
        "BYOC_ENFORCEMENT__DATABASE_URL": store_url,
        "BYOC_LEDGER__DATABASE_URL": ledger_url,
        "BYOC_ENFORCEMENT__CONSUME_USAGE": "false",
        "BYOC_ENFORCEMENT__REBUILD_FROM_WAREHOUSE": "false",
        "BYOC_LOG_LEVEL": "WARNING",
    }


def serve(
    data_dir: Path, cp: ControlPlaneProcess, store_url: str, ledger_url: str
) -> tuple[subprocess.Popen[bytes], str, str]:
    key = KeyStore(data_dir / "auth" / "api_keys.json").create("development")
    port = free_port()
    env = serve_env(data_dir, port, store_url, ledger_url)
    env["BYOC_CONTROL_PLANE__API_URL"] = f"{cp.url}/graphql"
    env["BYOC_CONTROL_PLANE__API_KEY"] = CP_KEY
    log = (data_dir / "serve.log").open("ab")
    proc = subprocess.Popen(
        SERVE,
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


def test_a_change_postgresql_cannot_store_does_not_stall_the_sync(
    pg: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL text cannot hold NUL. A synced grant whose displayName, or an entity whose
    id, held one raised a DataError before the cursor moved: the page was replayed, and
    failed, on every sync, so no later change of the environment ever arrived."""
    url = fresh_database(pg)
    feed = ControlPlaneStore(tmp_path / "control-plane.db")
    feed.upsert(
        "development",
        Grant(
            id="g-nul",
            customerId="c1",
            currencyId="credits",
            amount=10,
            displayName="promo\x00",
            effectiveAt="2025-01-01T00:00:00Z",
            createdAt="2025-01-01T00:00:00Z",
        ),
    )
    feed.upsert("development", Customer(id="c-\x00"))
    feed.upsert("development", Customer(id="c-after"))

    class Client:  # the control plane's own store behind its client's one call
        async def changes(self, env: str, after: int, limit: int) -> ChangePage:
            return feed.changes(env, after, limit)

    settings = Settings(
        data_dir=tmp_path, ledger={"database_url": url}, enforcement={"database_url": url}
    )
    store, state = Store(url), LocalState()
    credits = CreditService(settings, UsageCounters(store, state))
    credits.open(writer_process=False)
    try:
        sync = InboundSync(
            "development",
            Client(),
            store,
            state,
            page_size=500,
            stale_after_s=60,
            on_grant=credits.apply_grant_change,
        )
        asyncio.run(sync.sync_once())
        assert store.cursor("development")[0] == 3
        assert "c-after" in state.env("development").customers
        assert "displayName must not contain a NUL character" in caplog.text
        assert "its id holds a NUL character" in caplog.text
    finally:
        credits.close()
        store.close()


def test_the_local_store_holds_64_bit_cursors_and_widens_an_older_store(pg: str) -> None:
    """The change feed's cursor is any integer; the store's columns were 32-bit on
    PostgreSQL (SQLite's are 64-bit), so a cursor past 2^31 - 1 stalled the sync there, and
    window bounds in epoch seconds would have in 2038. A store created before is widened."""
    url = fresh_database(pg)
    Store(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:  # the columns as an older version created them
        for table, column in [("enf_sync_state", "cursor"), ("enf_entities", "seq")]:
            conn.execute(text(f'ALTER TABLE {table} ALTER COLUMN "{column}" TYPE INTEGER'))
    store = Store(url)
    try:
        store.mark_synced("development", 2**31 + 5)
        assert store.cursor("development")[0] == 2**31 + 5
        with engine.connect() as conn:
            assert [c for c in integer_columns(conn) if c[0].startswith("enf_")] == []
    finally:
        store.close()
        engine.dispose()


def test_a_second_instance_on_one_local_store_is_refused_at_start(pg: str, tmp_path: Path) -> None:
    """Each instance's counters live in its memory, fed by its own consumer: two instances on
    one store added up each other's writes (a SET from one and a DELTA from the other left
    the sum of both for the next start), and moved each other's sync cursor back."""
    url = fresh_database(pg)
    first = Store(url)
    try:
        with pytest.raises(StoreInUse, match="each instance needs a store of its own"):
            Store(url)
        serve = subprocess.run(
            SERVE,
            cwd=REPO,
            env=serve_env(tmp_path, free_port(), url, fresh_database(pg)),
            capture_output=True,
            text=True,
            timeout=120,
        )
        output = serve.stdout + serve.stderr
        assert serve.returncode == 1, output
        assert "cannot start the runtime API" in output
        assert "each instance needs a store of its own" in output
        assert "Traceback" not in output
        first.mark_synced("development", 7)
    finally:
        first.close()
    again = Store(url)  # the lock went with the first one
    try:
        assert again.cursor("development")[0] == 7
    finally:
        again.close()
