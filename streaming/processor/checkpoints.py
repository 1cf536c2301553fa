"""Per-partition checkpoints of the stream processor in one local SQLite (WAL) database.

The checkpoint is the source of truth for where a partition resumes: its engine state (watermark,
open windows, dedup clock), its next offset and its dedup entries are written in ONE transaction,
only after the rows they cover are durable in ClickHouse (see streaming/processor/__init__.py).
Kafka committed offsets are advisory (monitoring) and written after the checkpoint.

Why SQLite under ``<data_dir>/stream/``: the embedded processor runs on one machine; every
instance on it opens the same file, so a partition that moves to another instance on a
rebalance restores the state its previous owner checkpointed. WAL lets readers (health, tests)
look while a writer commits; ``synchronous=NORMAL`` is enough because losing the newest
checkpoints to a power cut only makes the processor replay further back, and every write
downstream of a checkpoint is idempotent (tokens, ReplacingMergeTree keys).

Dedup entries are stored as append-only *segments*: one blob per checkpoint holding that
checkpoint's new claims, tagged with its newest ``first_seen``. A segment is deleted once the
receive clock has moved a full window past its newest entry, so the table holds at most the live
window plus one checkpoint interval (bounded by the TTL, proven by the dedup-window test);
restoring loads all segments and the engine drops the few entries already past the window.
A key claimed again after it expired appears in a newer segment with a newer first_seen; the
engine keeps the newest when loading.

Fencing: claiming a partition records this instance as its owner; every later write checks it,
so a processor that lost a partition (kicked from the group while still running) cannot
overwrite the checkpoint of the new owner. Before a flush is written, its offset ranges are
recorded as the partitions' pending *intent* (with the flush's key, which names all its
partitions), so a replay cuts the same flush again and produces byte-identical inserts with the
same dedup tokens.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from streaming.engine import Checkpoint, DedupEntry

_SCHEMA = """
CREATE TABLE IF NOT EXISTS partitions (
    stream TEXT NOT NULL,
    partition INTEGER NOT NULL,
    owner TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    next_offset INTEGER,
    state BLOB,
    pending_first INTEGER,
    pending_last INTEGER,
    pending_job TEXT,
    checkpointed_at REAL,
    PRIMARY KEY (stream, partition)
);
CREATE TABLE IF NOT EXISTS dedup_segments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    partition INTEGER NOT NULL,
    newest_first_seen INTEGER NOT NULL,
    entries INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS dedup_segments_by_age
    ON dedup_segments (stream, partition, newest_first_seen);
"""

_encode_entries = msgspec.msgpack.Encoder().encode
_decode_entries = msgspec.msgpack.Decoder(list[tuple[str, str, str, int]]).decode


@dataclass(frozen=True)
class Pending:
    """An intent: the offset range of a partition inside one flush, and that flush's key."""

    first: int
    last: int
    job: str  # every (partition, range) of the flush; see warehouse_sink.job_key


@dataclass(frozen=True)
class Restored:
    """What a partition's new owner resumes from."""

    partition: int
    epoch: int
    next_offset: int | None  # None: never checkpointed, start at the beginning of the log
    state: bytes | None
    dedup: list[DedupEntry]
    pending: Pending | None  # the flush that may be half written when the owner stopped


@dataclass(frozen=True)
class StoreStats:
    partitions: int
    segments: int
    entries: int
    oldest_first_seen: int | None


class CheckpointStore:
    """Checkpoints of one stream (consumer group + topic) in a shared SQLite file."""

    def __init__(self, path: Path, stream: str, owner: str, timeout_s: float = 30.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.stream = stream
        self.owner = owner
        # One connection shared by the consumer thread (claims) and the writer thread
        # (intents, commits), serialised by a lock; other instances wait on SQLite's lock.
        self._db = sqlite3.connect(
            path, timeout=timeout_s, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        self._use_wal(timeout_s)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(partitions)")}
        if "pending_job" not in columns:  # files written before flush-level intents
            self._db.execute("ALTER TABLE partitions ADD COLUMN pending_job TEXT")

    def _use_wal(self, timeout_s: float) -> None:
        """WAL is a property of the file: set it once. Changing the journal mode does not wait
        on SQLite's busy handler, so two instances opening a new file at once retry here."""
        deadline = time.monotonic() + timeout_s
        while self._db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ transactions
    def _transaction(self) -> _Tx:
        return _Tx(self._db, self._lock)

    def claim(self, partition: int) -> Restored:
        """Become the owner of ``partition`` and read what to resume from."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT epoch, next_offset, state, pending_first, pending_last, pending_job "
                "FROM partitions "
                "WHERE stream = ? AND partition = ?",
                (self.stream, partition),
            ).fetchone()
            if row is None:
                epoch, next_offset, state, pending = 1, None, None, None
                db.execute(
                    "INSERT INTO partitions (stream, partition, owner, epoch) VALUES (?, ?, ?, ?)",
                    (self.stream, partition, self.owner, epoch),
                )
            else:
                epoch = row[0] + 1
                next_offset, state = row[1], row[2]
                pending = Pending(row[3], row[4], row[5]) if row[3] is not None else None
                db.execute(
                    "UPDATE partitions SET owner = ?, epoch = ? WHERE stream = ? AND partition = ?",
                    (self.owner, epoch, self.stream, partition),
                )
            dedup: list[DedupEntry] = []
            for (data,) in db.execute(
                "SELECT data FROM dedup_segments WHERE stream = ? AND partition = ? ORDER BY id",
                (self.stream, partition),
            ):
                dedup.extend(_decode_entries(data))
        return Restored(partition, epoch, next_offset, state, dedup, pending)

    def record_intent(self, ranges: dict[int, tuple[int, int]], job: str) -> set[int]:
        """Record the offset ranges of flush ``job`` about to be written; returns the partitions
        another instance owns now (nothing is recorded for them)."""
        fenced: set[int] = set()
        with self._transaction() as db:
            for partition, (first, last) in ranges.items():
                updated = db.execute(
                    "UPDATE partitions SET pending_first = ?, pending_last = ?, pending_job = ? "
                    "WHERE stream = ? AND partition = ? AND owner = ?",
                    (first, last, job, self.stream, partition, self.owner),
                ).rowcount
                if not updated:
                    fenced.add(partition)
        return fenced

    def commit(self, checkpoints: Iterable[Checkpoint]) -> set[int]:
        """Store checkpoints (state, next offset, dedup changes) atomically; clears intents.

        Returns the partitions that another instance owns now (their checkpoints are not
        stored)."""
        fenced: set[int] = set()
        now = time.time()
        with self._transaction() as db:
            for cp in checkpoints:
                updated = db.execute(
                    "UPDATE partitions SET next_offset = ?, state = ?, pending_first = NULL, "
                    "pending_last = NULL, pending_job = NULL, checkpointed_at = ? "
                    "WHERE stream = ? AND partition = ? AND owner = ?",
                    (cp.next_offset, cp.state, now, self.stream, cp.partition, self.owner),
                ).rowcount
                if not updated:
                    fenced.add(cp.partition)
                    continue
                if cp.dedup_added:
                    db.execute(
                        "INSERT INTO dedup_segments "
                        "(stream, partition, newest_first_seen, entries, data) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (
                            self.stream,
                            cp.partition,
                            max(entry[3] for entry in cp.dedup_added),
                            len(cp.dedup_added),
                            _encode_entries(cp.dedup_added),
                        ),
                    )
                if cp.dedup_evict_through is not None:
                    db.execute(
                        "DELETE FROM dedup_segments WHERE stream = ? AND partition = ? "
                        "AND newest_first_seen <= ?",
                        (self.stream, cp.partition, cp.dedup_evict_through),
                    )
        return fenced

    # ------------------------------------------------------------------ inspection
    def next_offsets(self) -> dict[int, int | None]:
        with self._lock:
            rows = self._db.execute(
                "SELECT partition, next_offset FROM partitions WHERE stream = ?", (self.stream,)
            ).fetchall()
        return dict(rows)

    def stats(self) -> StoreStats:
        with self._lock:
            partitions = self._db.execute(
                "SELECT count(*) FROM partitions WHERE stream = ?", (self.stream,)
            ).fetchone()[0]
            segments, entries, oldest = self._db.execute(
                "SELECT count(*), coalesce(sum(entries), 0), min(newest_first_seen) "
                "FROM dedup_segments WHERE stream = ?",
                (self.stream,),
            ).fetchone()
        return StoreStats(partitions, segments, entries, oldest)


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) under the store's thread lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db = db
        self._lock = lock

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        return self._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._lock.release()


def stream_name(group: str, topic: str) -> str:
    """The key of one consumer group's processing of one topic in the checkpoint file."""
    return f"{group}/{topic}"
