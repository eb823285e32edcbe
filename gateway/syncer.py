"""Group commit: the loop commits each batch without waiting for the disk, and this thread
makes the commits durable with one fsync for as many as have returned meanwhile.

With a Store opened with deferred_sync, a commit only writes to the WAL (SQLite's
synchronous NORMAL); Store.sync() fsyncs the WAL, which is what FULL does inside each commit.
The loop commits a batch, hands it here and goes on reading and deciding; this thread calls
sync() and gives back every batch committed before it began, in order, for the loop to
publish their replies and acknowledge their messages. So nothing a batch says is published
before it is on disk, an fsync never stops the loop, and batches group themselves: those
committed during one fsync are covered by the next, with no timer. The thread needs the GIL
only around each fsync (the SQL stays on the loop's thread: run there it never waits for the
GIL, which a commit in another thread did for every row). A failed fsync ends the process
before anything it should have covered is released. With a store that syncs in each commit
(or synchronous NORMAL), batches are given back at once and no thread runs.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .store import Store

log = logging.getLogger("recarga.gateway")


@dataclass(slots=True)
class Job:
    """One committed batch, and what the loop does once it is durable (`release`)."""

    release: Any
    messages: int = 0  # inbound messages it acknowledges: the backlog counts these


@dataclass
class Syncer:
    """wake(): called from this thread after a sync (the loop waits on a socket). failed():
    called from this thread when a sync fails; it must not return (the service exits for a
    clean restart)."""

    store: Store
    wake: Callable[[], None]
    failed: Callable[[], None]
    _queue: deque[Job] = field(default_factory=deque)
    _done: deque[Job] = field(default_factory=deque)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _busy: bool = False
    _stopping: bool = False
    _thread: threading.Thread | None = None
    backlog: int = 0  # inbound messages of batches committed and not yet given back

    def start(self) -> None:
        if self._thread is None and self.store.deferred_sync:
            self._thread = threading.Thread(target=self._run, name="wal-sync", daemon=True)
            self._thread.start()

    def submit(self, job: Job) -> None:
        """A batch whose commit has returned."""
        self.start()
        with self._cond:
            self.backlog += job.messages
            if self._thread is None:
                self._done.append(job)  # durable already
                return
            self._queue.append(job)
            self._cond.notify()

    def done(self) -> list[Job]:
        """The batches made durable since the last call, in the order they were committed."""
        with self._cond:
            jobs = list(self._done)
            self._done.clear()
            for j in jobs:
                self.backlog -= j.messages
        return jobs

    def idle(self) -> bool:
        with self._cond:
            return not (self._queue or self._busy)

    def stop(self, timeout: float = 10.0) -> None:
        """Sync what was handed over, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                jobs = list(self._queue)  # committed before the sync begins: it covers them
                self._queue.clear()
                self._busy = True
            try:
                self.store.sync()
            except OSError:
                log.critical("fsync of the database's WAL failed; exiting for a clean restart", exc_info=True)
                self.failed()
                return
            with self._cond:
                self._done.extend(jobs)
                self._busy = False
            self.wake()
