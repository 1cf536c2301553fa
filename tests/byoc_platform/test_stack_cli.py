"""`byoc up / status / down` as a user runs them: real processes, real data, restarts."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from byoc_platform import clients
from byoc_platform.settings import Settings
from byoc_platform.stack.processes import is_running, start_ticks
from tests.stack_fixtures import settings_env, test_settings

BYOC = [sys.executable, "-m", "byoc_platform"]


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYOC_")}
    env.update(settings_env(settings))
    return env


def _status(settings: Settings) -> tuple[int, dict]:
    result = subprocess.run(
        [*BYOC, "status", "--json"], env=_env(settings), capture_output=True, text=True, timeout=60
    )
    data = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.returncode, data


def _health(settings: Settings) -> dict[str, str]:
    return {row["component"]: row["health"] for row in _status(settings)[1].get("components", [])}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


class Up:
    """A `byoc up` running in the background."""

    def __init__(self, settings: Settings, *args: str) -> None:
        self.settings = settings
        self.log = open(settings.data_dir.parent / f"up-{uuid.uuid4().hex[:6]}.log", "w+")  # noqa: SIM115
        self.process = subprocess.Popen(
            [*BYOC, "up", *args], env=_env(settings), stdout=self.log, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def wait_healthy(self, names: set[str], timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"byoc up exited:\n{self.output()}"
            health = _health(self.settings)
            if set(health) >= names and all(health[n] == "healthy" for n in names):
                return
            time.sleep(1)
        raise AssertionError(f"stack not healthy in {timeout}s: {health}\n{self.output()}")

    def down(self) -> None:
        result = subprocess.run(
            [*BYOC, "down"], env=_env(self.settings), capture_output=True, text=True, timeout=180
        )
        assert result.returncode == 0, result.stderr
        self.process.wait(60)
        self.log.close()


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    yield test_settings(tmp_path / "data")


ALL = {"kms", "s3", "kafka", "warehouse", "control-plane", "api", "stream", "dagster"}


def test_up_status_kill_down_up_keeps_data(settings: Settings) -> None:
    up = Up(settings)
    up.wait_healthy(ALL)
    code, status = _status(settings)
    assert code == 0 and status["supervisor_pid"] == up.process.pid
    stack = json.loads(settings.stack_file.read_text())
    assert set(stack["endpoints"]) == ALL and stack["api_key"].startswith("byoc_")
    # The key file holds only hashes.
    assert stack["api_key"] not in settings.api_keys_file.read_text()

    # Data written before `down`: a Kafka message and a ClickHouse row.
    marker = uuid.uuid4().hex
    producer = Producer(clients.producer_config(settings))
    producer.produce(settings.kafka.events_topic, key=b"persist", value=marker.encode())
    assert producer.flush(30) == 0
    ch = clients.clickhouse(settings)
    ch.insert(
        f"{settings.clickhouse.database}.late_hours",
        [["persist-env", dt.datetime(2026, 1, 1, 5, tzinfo=dt.UTC), dt.datetime.now(dt.UTC)]],
        column_names=["environment", "hour", "recorded_at"],
    )

    # SIGKILL of a child: the supervisor restarts it and status shows the restart.
    kafka_pid = stack["components"]["kafka"]["pid"]
    os.kill(kafka_pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = {r["component"]: r for r in _status(settings)[1]["components"]}
        if rows["kafka"]["restarts"] == 1 and rows["kafka"]["health"] == "healthy":
            break
        time.sleep(0.5)
    assert rows["kafka"]["restarts"] == 1 and rows["kafka"]["pid"] != kafka_pid
    assert "kafka exited with code -9; restarting" in up.output()
    assert "kafka restarted (restart 1)" in up.output()

    pids = [c["pid"] for c in json.loads(settings.stack_file.read_text())["components"].values()]
    up.down()
    assert not any(_alive(pid) for pid in pids), "byoc down left a child process"
    assert _status(settings)[0] == 1  # everything down now

    up = Up(settings)
    up.wait_healthy({"kms", "s3", "kafka", "warehouse"}, timeout=240)
    consumer = Consumer(clients.consumer_config(settings, f"persist-{marker}"))
    consumer.subscribe([settings.kafka.events_topic])
    found = False
    deadline = time.monotonic() + 60
    while not found and time.monotonic() < deadline:
        found = any(
            m.value() == marker.encode() for m in consumer.consume(100, timeout=1) if not m.error()
        )
    consumer.close()
    rows = (
        clients.clickhouse(settings)
        .query(
            f"SELECT count() FROM {settings.clickhouse.database}.late_hours "
            "WHERE environment = 'persist-env'"
        )
        .result_rows
    )
    up.wait_healthy(ALL)
    up.down()
    assert found, "a Kafka message written before down is gone after up"
    assert rows == [(1,)], "a ClickHouse row written before down is gone after up"


def test_no_restart_leaves_a_killed_component_down(settings: Settings) -> None:
    up = Up(settings, "--only", "kms", "--only", "s3", "--no-restart")
    try:
        up.wait_healthy({"kms", "s3"}, timeout=90)
        s3_pid = json.loads(settings.stack_file.read_text())["components"]["s3"]["pid"]
        os.kill(s3_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _health(settings).get("s3") != "down" and time.monotonic() < deadline:
            time.sleep(0.3)
        code, _ = _status(settings)
        assert _health(settings) == {"kms": "healthy", "s3": "down"}
        assert code == 1
        assert "s3 exited with code -9; not restarting" in up.output()
        # Ctrl-C stops the stack as `byoc down` does.
        kms_pid = json.loads(settings.stack_file.read_text())["components"]["kms"]["pid"]
        up.process.send_signal(signal.SIGINT)
        assert up.process.wait(60) == 0
        assert not _alive(kms_pid)
        assert "stack stopped" in up.output()
    finally:
        if up.process.poll() is None:
            up.down()


def test_port_in_use_names_the_component(settings: Settings) -> None:
    with socket.socket() as blocker:
        blocker.bind((settings.host, settings.ports.kms))
        blocker.listen()
        result = subprocess.run(
            [*BYOC, "up", "--only", "kms"],
            env=_env(settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert f"kms: port already in use on 127.0.0.1: kms {settings.ports.kms}" in message


def test_child_failing_at_start_stops_the_rest_and_names_its_log(settings: Settings) -> None:
    # The warehouse cannot open a data directory that is a file.
    settings.data_dir.mkdir(parents=True)
    (settings.data_dir / "warehouse").write_text("not a directory")
    result = subprocess.run(
        [*BYOC, "up", "--only", "kms", "--only", "warehouse"],
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert "stack failed to start: warehouse:" in message
    stack = json.loads(settings.stack_file.read_text())
    assert stack["supervisor_pid"] is None
    assert all(c["pid"] is None for c in stack["components"].values())


def test_missing_binary_is_a_clear_error() -> None:
    from byoc_platform.stack.components import find_binary

    with pytest.raises(FileNotFoundError, match=r"no-such-binary.*make install"):
        find_binary("no-such-binary")


def test_down_never_signals_a_process_that_reused_a_recorded_pid(settings: Settings) -> None:
    # A stack.json outlives its processes (SIGKILL, reboot); their PIDs are handed out again.
    strangers = [subprocess.Popen(["sleep", "300"], start_new_session=True) for _ in range(2)]
    try:
        ticks = [start_ticks(p.pid) for p in strangers]
        assert all(t is not None for t in ticks)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.stack_file.write_text(
            json.dumps(
                {
                    "supervisor_pid": strangers[0].pid,
                    "supervisor_start": ticks[0] - 1,  # the recorded supervisor started earlier
                    "components": {
                        "api": {"pid": strangers[1].pid, "pid_start": ticks[1] - 1, "ports": {}}
                    },
                }
            )
        )
        down = subprocess.run(
            [*BYOC, "down"], env=_env(settings), capture_output=True, text=True, timeout=60
        )
        assert down.returncode == 0, down.stderr
        assert "no stack is running (stale state of supervisor pid" in down.stdout + down.stderr
        code, status = _status(settings)
        assert code == 1 and status["supervisor_pid"] is None
        assert [row["pid"] for row in status["components"]] == [None]
        assert all(p.poll() is None for p in strangers), "byoc down signalled a stranger"
    finally:
        for stranger in strangers:
            stranger.kill()
            stranger.wait(10)


def test_is_running_compares_the_recorded_start_time() -> None:
    me = os.getpid()
    assert is_running(me) and is_running(me, start_ticks(me))
    assert not is_running(me, (start_ticks(me) or 0) + 1)
    assert not is_running(None) and not is_running("123") and not is_running(-1)
    done = subprocess.Popen(["true"])
    done.wait(10)
    assert not is_running(done.pid)


def test_status_probes_the_ports_the_stack_was_started_with(settings: Settings) -> None:
    # Started with port overrides; asked without them (another shell): the probe must still
    # reach the stack's port, not the default one.
    up = Up(settings, "--only", "kms")
    try:
        up.wait_healthy({"kms"}, timeout=120)
        bare = {k: v for k, v in os.environ.items() if not k.startswith("BYOC_")}
        status = subprocess.run(
            [*BYOC, "status", "--json", "--data-dir", str(settings.data_dir)],
            env=bare,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stdout + status.stderr
        [row] = json.loads(status.stdout)["components"]
        assert row["health"] == "healthy" and row["ports"] == {"kms": settings.ports.kms}
    finally:
        up.down()
