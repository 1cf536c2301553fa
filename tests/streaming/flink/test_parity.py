"""The Flink SQL job and the pure Python engine give identical rows on the shared fixture.

One job invocation (a local MiniCluster, spawned with the Flink environment's own Python)
processes every partition file of tests/fixtures/stream; the pure engine processes the same
records, early-firing snapshots along the way. Compared: the deduplicated events, the final
usage_minute state (highest version per key, as ReplacingMergeTree keeps it) and late_hours.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from stream_fixtures import (
    FIXTURE_DIR,
    final_late_hours,
    final_minutes,
    load_partitions,
    run_engine,
)

ROOT = Path(__file__).resolve().parents[3]
FLINK_DIR = ROOT / "streaming" / "flink"
FLINK_PYTHON = FLINK_DIR / ".venv" / "bin" / "python"
JAVA_HOME = "/usr/lib/jvm/java-17-openjdk-amd64"

pytestmark = pytest.mark.slow


def _read_rows(directory: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for part in sorted(directory.iterdir()):
        if part.name.startswith("."):  # in-progress part files: must not exist after the job
            raise AssertionError(f"uncommitted sink file {part}")
        rows += [json.loads(line) for line in part.read_text().splitlines()]
    return rows


@pytest.fixture(scope="module")
def flink_rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    if not FLINK_PYTHON.exists():
        pytest.fail(f"Flink environment missing: run {FLINK_DIR / 'setup_env.sh'} (make setup)")
    out = tmp_path_factory.mktemp("flink-out")
    env = {**os.environ, "JAVA_HOME": os.environ.get("JAVA_HOME", JAVA_HOME)}
    env.pop("PYTHONPATH", None)  # the job must not see the main environment's packages
    cmd = [
        str(FLINK_PYTHON),
        str(FLINK_DIR / "usage_job.py"),
        "--source",
        "file",
        "--input",
        str(FIXTURE_DIR),
        "--output-dir",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-20000:])
        pytest.fail(f"Flink job exited {proc.returncode}")
    return {
        table: _read_rows(out / table) for table in ("usage_events", "usage_minute", "late_hours")
    }


@pytest.fixture(scope="module")
def python_rows() -> dict[str, list[dict[str, Any]]]:
    return run_engine(load_partitions(), drain_every=3)


def _by_event_key(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    keyed = {(r["environment"], r["customer_id"], r["idempotency_key"]): r for r in rows}
    assert len(keyed) == len(rows), "an event was written twice"
    return keyed


def test_deduplicated_events_are_identical(flink_rows, python_rows) -> None:
    flink = _by_event_key(flink_rows["usage_events"])
    python = _by_event_key(python_rows["usage_events"])
    assert flink.keys() == python.keys()
    differing = [k for k in python if python[k] != flink[k]]
    assert not differing, (differing[:3], [(python[k], flink[k]) for k in differing[:2]])


def test_usage_minute_final_state_is_identical(flink_rows, python_rows) -> None:
    flink = final_minutes(flink_rows["usage_minute"])
    # Flink emits each row once (final windows, late rows): no key twice
    assert len(flink) == len(flink_rows["usage_minute"])
    python = final_minutes(python_rows["usage_minute"])
    assert flink.keys() == python.keys(), (
        sorted(set(python) - set(flink))[:5],
        sorted(set(flink) - set(python))[:5],
    )
    differing = [k for k in python if python[k] != flink[k]]
    assert not differing, [(python[k], flink[k]) for k in differing[:3]]


def test_late_hours_are_identical(flink_rows, python_rows) -> None:
    flink = final_late_hours(flink_rows["late_hours"])
    assert flink == final_late_hours(python_rows["late_hours"])


def test_fixture_exercises_every_case(python_rows) -> None:
    """Guards the fixture itself: parity over a trivial fixture would prove little."""
    minutes = final_minutes(python_rows["usage_minute"]).values()
    events = python_rows["usage_events"]
    records = sum(len(b.events) for recs in load_partitions().values() for _, b in recs)
    assert records - len(events) >= 50  # duplicates were dropped
    late = [m for m in minutes if m["late_key"]]
    assert len({m["late_key"] for m in late}) >= 50
    assert len({(m["environment"], m["minute"] // 3_600_000) for m in late}) >= 3  # hours
    assert {m["metric"] for m in minutes} >= {"", "tokens", "units", "cost", "big", "tiny"}
    assert {e["resource_id"] for e in events} >= {"", "ws-1", "doc-9"}
    assert len({m["dimensions_key"] for m in minutes}) >= 6
    assert any(m["count"] > 1 and m["metric"] == "" and not m["late_key"] for m in minutes)
    tricky = next(e for e in events if e["idempotency_key"] == "b-1")
    assert tricky["labels"]["region"] == 'eu "west", 1: {x}'
    assert tricky["labels"]["flag"] == "true" and tricky["values"]["tiny"] == 1e-07
