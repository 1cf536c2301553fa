"""The engine's rows in a real ClickHouse (chdb): FINAL keeps exactly the engine's final state.

Every early-fired snapshot is inserted, as the processor would; ReplacingMergeTree(version)
must then read back the newest version per key, i.e. the final window rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from stream_fixtures import final_late_hours, final_minutes, load_partitions, run_engine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory: pytest.TempPathFactory):
    rows = run_engine(load_partitions(), drain_every=5)
    work = tmp_path_factory.mktemp("chdb")
    (work / "rows.json").write_text(json.dumps(rows))
    proc = subprocess.run(
        [
            sys.executable,
            str(HERE / "chdb_roundtrip.py"),
            str(work / "data"),
            str(work / "rows.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return rows, json.loads(proc.stdout.splitlines()[-1])


def test_final_reads_back_the_newest_snapshot_per_key(roundtrip) -> None:
    rows, stored = roundtrip
    expected = final_minutes(rows["usage_minute"])
    assert len(rows["usage_minute"]) > len(expected)  # snapshots were superseded
    got = {
        (env, cust, res, name, dkey, minute, metric, late): (
            count,
            s,
            lo,
            hi,
            first,
            last,
            v,
            labels,
        )
        for (
            env,
            cust,
            res,
            name,
            dkey,
            minute,
            metric,
            late,
            count,
            s,
            lo,
            hi,
            first,
            last,
            v,
            labels,
        ) in stored["usage_minute"]
    }
    assert got.keys() == expected.keys()
    for key, row in expected.items():
        assert got[key] == (
            row["count"],
            row["sum"],
            row["min"],
            row["max"],
            row["first_event_time"],
            row["last_event_time"],
            row["version"],
            row["labels"],
        ), key


def test_events_and_late_hours_round_trip(roundtrip) -> None:
    rows, stored = roundtrip
    expected = {
        (r["environment"], r["customer_id"], r["idempotency_key"]): (
            r["event_time"],
            r["ingest_time"],
            r["labels"],
            r["values"],
            r["dimensions"],
        )
        for r in rows["usage_events"]
    }
    got = {
        (e, c, k): (t, i, labels, values, dims)
        for e, c, k, t, i, labels, values, dims in stored["usage_events"]
    }
    assert got == expected
    assert {(e, h): t for e, h, t in stored["late_hours"]} == final_late_hours(rows["late_hours"])
