"""Blocking ledger calls off the event loop, with as little per-call work on the loop as
possible.

``loop.run_in_executor`` costs the loop thread a concurrent.futures.Future, two locks and a
future chain per call; profiled under 64 concurrent consumers it was a quarter of the loop's
time. Here a call is one asyncio future plus one ``SimpleQueue.put``; long-lived worker threads
(enough of them for the ledger's group committer to batch concurrent calls) answer through
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

_STOP = object()


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Workers:
    def __init__(self, count: int, name: str) -> None:
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            loop, future, fn, args = item
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # handed to the awaiting coroutine
                result, error = None, exc
            # RuntimeError: the loop closed meanwhile, nobody waits any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future, result, error)

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((loop, future, fn, args))
        return future

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(_STOP)


class LoopMailbox:
    """Results computed on other threads, delivered to the futures of ONE event loop with one
    ``call_soon_threadsafe`` per burst: a committer finishing a batch of 60 operations wakes
    the loop once, not 60 times (each wake-up is a self-pipe write and a loop iteration)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0  # the loop's thread

    def future(self) -> tuple[asyncio.Future[Any], Callable[[Any, BaseException | None], None]]:
        """A future of the running loop, and the callback (for any thread) that resolves it."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._thread = threading.get_ident()
        elif self._loop is not loop:
            raise RuntimeError("a LoopMailbox serves one event loop")
        future = loop.create_future()
        loop_thread = self._thread

        def deliver(result: Any, error: BaseException | None) -> None:
            with self._lock:
                self._items.append((future, result, error))
                if self._scheduled:
                    return
                self._scheduled = True
            if threading.get_ident() == loop_thread:
                loop.call_soon(self._drain)  # no self-pipe write from the loop's own thread
                return
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(self._drain)

        return future, deliver

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._scheduled = False
        for future, result, error in items:
            _resolve(future, result, error)
