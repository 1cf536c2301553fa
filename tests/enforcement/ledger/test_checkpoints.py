"""WAL checkpoints beside the ledger writer (enforcement/ledger/checkpoints.py): with commits
that never checkpoint, the thread and the writer's catch-ups keep the WAL bounded and copied
into the database; without the thread, the writer checkpoints by itself."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from enforcement.ledger.checkpoints import FALLBACK_BATCHES, WalCheckpoints

PAGE = 4096


def writer_connection(path: Path) -> sqlite3.Connection:
    """A connection whose commits never checkpoint, as the ledger writer's."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v BLOB)")
    return conn


def write_batches(conn: sqlite3.Connection, checkpoints: WalCheckpoints | None, n: int) -> None:
    for batch in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO t VALUES (?, ?)",
            [(os.urandom(16).hex(), os.urandom(300)) for _ in range(20)],
        )
        conn.execute("COMMIT")
        if checkpoints is not None:
            checkpoints.after_batch()
        if batch % 50 == 0:
            time.sleep(0.005)  # let the thread run now and then, as between real batches


def wal_pages(path: Path) -> float:
    return os.path.getsize(f"{path}-wal") / PAGE


def test_the_wal_stays_bounded_and_reaches_the_database(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    conn = writer_connection(path)
    checkpoints = WalCheckpoints(str(path), interval_s=0.005, catch_up_frames=300)
    checkpoints.start()
    try:
        write_batches(conn, checkpoints, 1500)  # ~30,000 rows, several thousand WAL frames
    finally:
        checkpoints.stop()
    assert checkpoints.catch_ups > 0
    # Restarted from its start again and again: far smaller than everything written.
    assert wal_pages(path) < 3000
    conn.close()
    # The database file holds what was committed (read without the WAL).
    reader = sqlite3.connect(path)
    assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 30_000
    reader.close()


def test_without_the_thread_the_writer_checkpoints_by_itself(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    conn = writer_connection(path)
    checkpoints = WalCheckpoints(str(path), catch_up_frames=10**9)  # never started
    try:
        write_batches(conn, checkpoints, FALLBACK_BATCHES * 20)
    finally:
        checkpoints.stop()
    assert checkpoints.catch_ups >= 15
    assert wal_pages(path) < FALLBACK_BATCHES * 40  # about one fallback interval of frames
    conn.close()


def test_commits_alone_would_grow_the_wal(tmp_path: Path) -> None:
    """The control: the same writes without WalCheckpoints grow the WAL without end."""
    path = tmp_path / "l.db"
    conn = writer_connection(path)
    write_batches(conn, None, 600)
    assert wal_pages(path) > 3000
    conn.close()
