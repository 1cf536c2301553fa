import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
# the shared stream fixture's loader lives beside its data; flink_parity lives here
sys.path[:0] = [str(HERE.parents[1] / "fixtures" / "stream"), str(HERE)]

from flink_parity import SINK_TABLES, load_edge_partitions, read_rows, run_job  # noqa: E402
from stream_fixtures import load_partitions, run_engine  # noqa: E402


@pytest.fixture(scope="session")
def flink_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The job's sink files for the shared fixture: ONE job run (~30-60 s) for every test."""
    out = tmp_path_factory.mktemp("flink-out")
    run_job(out)
    return out


@pytest.fixture(scope="session")
def flink_rows(flink_output: Path) -> dict[str, list[dict[str, Any]]]:
    return {table: read_rows(flink_output / table) for table in SINK_TABLES}


@pytest.fixture(scope="session")
def python_rows() -> dict[str, list[dict[str, Any]]]:
    """The pure engine over the same records, early-firing snapshots along the way."""
    partitions = load_partitions()
    edge = load_edge_partitions()
    assert not partitions.keys() & edge.keys()
    return run_engine({**partitions, **edge}, drain_every=3)
