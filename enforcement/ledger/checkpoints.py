"""WAL checkpoints of the ledger writer's SQLite database, off the commits' path.

Why: SQLite checkpoints inside the commit that takes the WAL past 1,000 pages. Under the
writer's stream of group commits (~3 pages per consumption) that was every ~30th batch and
took 3-10 ms: 20 % of the writer's time went to batches over 3 ms and a batch's p99 was
7.5 ms (bench: 10-consumption batches in a loop, docs/benchmarks-enforcement.md). Here the
writer's connection never checkpoints (``wal_autocheckpoint=0``); a thread copies the WAL
into the database every ``interval_s`` (PASSIVE: it never blocks the writer, and SQLite runs
it without the GIL), and once the WAL holds ``catch_up_frames`` the writer, between two
batches, finishes that copy itself: a checkpoint that has caught up lets the next commit
restart the WAL from its start, so the file stays bounded (~35 MB). Measured: 3-4 % of the
time in batches over 3 ms, batch p99 ~2 ms, no more CPU.

If the thread stops for any reason, the writer checkpoints every ``FALLBACK_BATCHES``
batches itself, as SQLite would have.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger(__name__)

FALLBACK_BATCHES = 30


class WalCheckpoints:
    def __init__(
        self, database: str, *, interval_s: float = 0.02, catch_up_frames: int = 8000
    ) -> None:
        self.database = database
        self.interval_s = interval_s
        self.catch_up_frames = catch_up_frames
        self.frames = 0  # in the WAL at the thread's last pass
        self.catch_ups = 0
        self._batches = 0  # since the writer's last catch-up
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoints", daemon=True)
        # The writer's own checkpoints: never wait for the thread's (busy: try again later).
        self._own = sqlite3.connect(database, timeout=0, isolation_level=None)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        conn = sqlite3.connect(self.database, timeout=30, isolation_level=None)
        try:
            while not self._stop.wait(self.interval_s):
                try:
                    _, self.frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    log.warning("WAL checkpoint of %s failed: %s", self.database, exc)
        except Exception:
            log.exception("WAL checkpoint thread of %s stopped", self.database)
        finally:
            conn.close()

    def after_batch(self) -> None:
        """Between two batches, on the writer's thread: finish the copy when the WAL is long
        (or, without the thread, every FALLBACK_BATCHES batches)."""
        self._batches += 1
        if self.frames < self.catch_up_frames and (
            self._thread.is_alive() or self._batches < FALLBACK_BATCHES
        ):
            return
        try:
            busy, frames, copied = self._own.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.OperationalError:  # the thread holds the checkpoint lock: next batch
            return
        if not busy and frames == copied:
            self.frames, self._batches = 0, 0
            self.catch_ups += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._own.close()
