"""Inbound sync: the control plane's entities into the local store and the in-memory snapshot.

The first pull after an empty cursor (0) is the snapshot: the feed from the beginning, which
holds every live entity. Then the loop polls the change feed from the stored cursor. Each page
is persisted with its new cursor in ONE transaction, then applied to memory, so a crash between
the two replays the page on restart, and replaying is harmless (upserts and deletes by id).
While the control plane is unreachable, nothing changes locally: checks keep being answered
from the last state, and answers are marked fallback once the last successful sync is older
than ``enforcement.stale_after_s`` (or the latest attempt failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from byoc_platform.catalog import Change
from byoc_platform.control_plane.client import (
    AsyncControlPlaneClient,
    ControlPlaneError,
)
from enforcement.state import LocalState
from enforcement.store import Store

log = logging.getLogger(__name__)


def storable(change: Change) -> bool:
    """Whether the local store can hold the change: PostgreSQL text cannot hold NUL, and one
    change it refuses would be replayed on every sync, stalling every later change."""
    if "\x00" not in change.id:
        return True
    log.error(
        "change %s (%s %r) skipped: its id holds a NUL character",
        change.seq,
        change.kind,
        change.id,
    )
    return False


GrantSink = Callable[[str, Change], None]


class SyncStatus:
    """Freshness of one environment's local state."""

    def __init__(self, stale_after_s: float) -> None:
        self.stale_after_s = stale_after_s
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.cursor = 0
        self.changes_applied = 0

    def is_stale(self, now: float | None = None) -> bool:
        if self.last_error is not None or self.last_success is None:
            return True
        now = time.time() if now is None else now
        return now - self.last_success > self.stale_after_s


class InboundSync:
    def __init__(
        self,
        environment: str,
        client: AsyncControlPlaneClient,
        store: Store,
        state: LocalState,
        *,
        page_size: int,
        stale_after_s: float,
        on_grant: GrantSink | None = None,
    ) -> None:
        self.environment = environment
        self.client = client
        self.store = store
        self.state = state
        self.page_size = page_size
        self.on_grant = on_grant
        self.status = SyncStatus(stale_after_s)
        self._lock = asyncio.Lock()

    def restore(self) -> None:
        """Resume from the stored cursor (entities themselves are loaded by the component)."""
        cursor, last_success = self.store.cursor(self.environment)
        self.status.cursor = cursor
        self.status.last_success = last_success

    async def sync_once(self) -> int:
        """Pull every change after the cursor; returns how many were applied."""
        async with self._lock:
            applied = 0
            try:
                while True:
                    page = await self.client.changes(
                        self.environment, self.status.cursor, self.page_size
                    )
                    changes = [
                        c for c in page.changes if c.environment == self.environment and storable(c)
                    ]
                    await asyncio.to_thread(self._persist, changes, page.cursor)
                    self._apply(changes)
                    applied += len(changes)
                    self.status.cursor = max(self.status.cursor, page.cursor)
                    if not page.hasMore:
                        break
            except ControlPlaneError as exc:
                if self.status.last_error is None:
                    log.warning(
                        "control plane unreachable; answering from local state: %s",
                        exc,
                        extra={"fields": {"environment": self.environment}},
                    )
                self.status.last_error = str(exc)
                raise
            if self.status.last_error is not None:
                log.info(
                    "control plane reachable again; synced",
                    extra={
                        "fields": {"environment": self.environment, "cursor": self.status.cursor}
                    },
                )
            self.status.last_error = None
            self.status.last_success = time.time()
            self.status.changes_applied += applied
            return applied

    def _persist(self, changes: list[Change], cursor: int) -> None:
        # Grants reach the ledger BEFORE the cursor moves past them: a crash in between
        # replays the page, and the ledger records a grant id only once.
        if self.on_grant is not None:
            for change in changes:
                if change.kind == "grant":
                    self.on_grant(self.environment, change)
        rows = [(c.seq, c.kind, c.op, c.id, c.data) for c in changes]
        if rows:
            self.store.apply_changes(self.environment, rows, max(cursor, self.status.cursor))
        else:
            self.store.mark_synced(self.environment, max(cursor, self.status.cursor))

    def _apply(self, changes: list[Change]) -> None:
        now = time.time()
        for change in changes:
            try:
                self.state.apply(
                    self.environment, change.kind, change.op, change.id, change.data, now
                )
            except Exception:
                log.exception(
                    "change %s (%s %s) could not be applied", change.seq, change.kind, change.id
                )
                continue


class SyncRunner:
    """One asyncio task that keeps every served environment in sync."""

    def __init__(
        self,
        make: Callable[[str], InboundSync],
        environments: Callable[[], set[str]],
        interval_s: float,
    ) -> None:
        self.make = make
        self.environments = environments
        self.interval_s = interval_s
        self.syncs: dict[str, InboundSync] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def get(self, environment: str) -> InboundSync:
        sync = self.syncs.get(environment)
        if sync is None:
            sync = self.syncs[environment] = self.make(environment)
            sync.restore()
        return sync

    async def sync_all(self) -> None:
        for environment in sorted(self.environments()):
            try:
                await self.get(environment).sync_once()
            except ControlPlaneError:
                pass  # logged once per outage by sync_once
            except Exception:
                log.exception("sync of %s failed", environment)
                self.get(environment).status.last_error = "sync failed"

    def trigger(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self.sync_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval_s)
            self._wake.clear()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="enforcement-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
