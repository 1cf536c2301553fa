"""The Flink job's output on the shared fixture, and the comparisons with the Python engine.

Shared by test_parity.py (the job's own sink files) and test_clickhouse_ingest.py (the same rows
after ClickHouse's ingestion views), so both hold the job to one definition of "identical".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from edge_records import EDGE_DIR
from stream_fixtures import FIXTURE_DIR, final_late_hours, final_minutes, partition_files

from byoc_platform.events import EventBatch, decode_batch

ROOT = Path(__file__).resolve().parents[3]
FLINK_DIR = ROOT / "streaming" / "flink"
FLINK_PYTHON = FLINK_DIR / ".venv" / "bin" / "python"
JAVA_HOME = "/usr/lib/jvm/java-17-openjdk-amd64"
SINK_TABLES = ("usage_events", "usage_minute", "late_hours")

Row = dict[str, Any]


def edge_values() -> dict[int, list[bytes]]:
    """The edge partitions' record values (edge_records.py: raw records the runtime API never
    writes, run with the shared fixture, whose other readers need EventBatches only)."""
    return {p: path.read_bytes().split(b"\n")[:-1] for p, path in partition_files(EDGE_DIR).items()}


def dead_lettered(value: bytes) -> bool:
    """What streaming/processor/processor.py skips as "not an EventBatch"."""
    try:
        decode_batch(value)
    except (msgspec.DecodeError, msgspec.ValidationError, TypeError):
        return True
    return False


def load_edge_partitions() -> dict[int, list[tuple[int, EventBatch]]]:
    """The edge partitions as the processor hands them to the engine: dead-lettered records
    are skipped (their offsets only taken, which changes no row)."""
    return {
        p: [(offset, decode_batch(v)) for offset, v in enumerate(values) if not dead_lettered(v)]
        for p, values in edge_values().items()
    }


def run_job(out: Path) -> None:
    """One job invocation (a local MiniCluster) over every partition file of the fixture and
    of the edge partitions."""
    if not FLINK_PYTHON.exists():
        pytest.fail(f"Flink environment missing: run {FLINK_DIR / 'setup_env.sh'} (make setup)")
    env = {**os.environ, "JAVA_HOME": os.environ.get("JAVA_HOME", JAVA_HOME)}
    env.pop("PYTHONPATH", None)  # the job must not see the main environment's packages
    cmd = [
        str(FLINK_PYTHON),
        str(FLINK_DIR / "usage_job.py"),
        "--source",
        "file",
        "--input",
        str(FIXTURE_DIR),
        str(EDGE_DIR),
        "--output-dir",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-20000:])
        pytest.fail(f"Flink job exited {proc.returncode}")


def part_files(directory: Path) -> list[Path]:
    """The committed part files of one sink table (in-progress ones must not remain)."""
    parts = sorted(directory.iterdir())
    hidden = [p for p in parts if p.name.startswith(".")]
    assert not hidden, f"uncommitted sink files {hidden}"
    return parts


def read_rows(directory: Path) -> list[Row]:
    """One JSON row per "\n"-terminated line. Not str.splitlines(): Flink writes U+2028,
    U+2029 and U+0085 unescaped inside JSON strings, and splitlines() splits on them."""
    return [
        json.loads(line)
        for part in part_files(directory)
        for line in part.read_text(encoding="utf-8").split("\n")
        if line
    ]


TIME_COLUMNS = ("event_time", "ingest_time", "minute", "first_event_time", "last_event_time")
TIME_COLUMNS += ("hour", "recorded_at")


def before_1970(row: Row) -> bool:
    """A row with a time the warehouse's DateTime columns cannot hold (only the edge
    partition's raw records have such times: ingestion refuses event times before 2025)."""
    return any(row.get(column, 0) < 0 for column in TIME_COLUMNS)


def _by_event_key(rows: list[Row]) -> dict[tuple[str, str, str], Row]:
    keyed = {(r["environment"], r["customer_id"], r["idempotency_key"]): r for r in rows}
    assert len(keyed) == len(rows), "an event was written twice"
    return keyed


def assert_events_identical(actual: list[Row], python: list[Row]) -> None:
    got, want = _by_event_key(actual), _by_event_key(python)
    assert got.keys() == want.keys()
    differing = [k for k in want if want[k] != got[k]]
    assert not differing, (differing[:3], [(want[k], got[k]) for k in differing[:2]])


def assert_minutes_identical(actual: list[Row], python: list[Row]) -> None:
    """The final usage_minute state (highest version per key) is the Python engine's; the
    actual rows hold each key once (Flink emits final windows and late rows only)."""
    got = final_minutes(actual)
    assert len(got) == len(actual)
    want = final_minutes(python)
    assert got.keys() == want.keys(), (
        sorted(set(want) - set(got))[:5],
        sorted(set(got) - set(want))[:5],
    )
    differing = [k for k in want if want[k] != got[k]]
    assert not differing, [(want[k], got[k]) for k in differing[:3]]


def assert_late_hours_identical(actual: Iterable[Row], python: Iterable[Row]) -> None:
    assert final_late_hours(actual) == final_late_hours(python)
