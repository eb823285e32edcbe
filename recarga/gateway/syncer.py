"""Group commit on a thread of its own (the gateway's `sync_thread` option): the loop commits
each batch without waiting for the disk, and this thread makes the commits durable with one
fsync for as many as have returned meanwhile.

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
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from recarga.gateway.store import Store

log = logging.getLogger("recarga.gateway")


@dataclass(slots=True)
class Job:
    """One committed batch, and what the loop does once it is durable (`release`)."""

    release: Any
    messages: int = 0  # inbound messages it acknowledges: the backlog counts these


class Syncer:
    """wake(): called from this thread after a sync (the loop waits on a socket). failed():
    called from this thread when a sync fails; it must not return (the service exits for a
    clean restart). Only the loop thread calls the other methods."""

    def __init__(self, store: Store, wake: Callable[[], None], failed: Callable[[], None]) -> None:
        self.store, self.wake, self.failed = store, wake, failed
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()  # C: no Condition per job
        self._done: deque[Job] = deque()  # appended by this thread, popped by the loop
        self._submitted = 0  # jobs handed over (the loop's count)
        self._synced = 0  # jobs given back (this thread's count)
        self._thread: threading.Thread | None = None
        self.backlog = 0  # inbound messages of batches committed and not yet given back

    def start(self) -> None:
        if self._thread is None and self.store.deferred_sync:
            self._thread = threading.Thread(target=self._run, name="wal-sync", daemon=True)
            self._thread.start()

    def submit(self, job: Job) -> None:
        """A batch whose commit has returned."""
        self.start()
        self.backlog += job.messages
        self._submitted += 1
        if self._thread is None:
            self._done.append(job)  # durable already
            self._synced += 1
        else:
            self._queue.put(job)

    def done(self) -> list[Job]:
        """The batches made durable since the last call, in the order they were committed."""
        jobs = []
        try:
            while True:
                jobs.append(self._done.popleft())
        except IndexError:
            pass
        for j in jobs:
            self.backlog -= j.messages
        return jobs

    def idle(self) -> bool:
        """Nothing handed over waits for a sync."""
        return self._synced == self._submitted

    def stop(self, timeout: float = 10.0) -> None:
        """Sync what was handed over, then end the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        stopping = False
        while not stopping:
            job = self._queue.get()
            jobs = [] if job is None else [job]
            stopping = job is None
            try:  # everything committed before the sync begins: it covers them all
                while True:
                    more = self._queue.get_nowait()
                    if more is None:
                        stopping = True
                    else:
                        jobs.append(more)
            except queue.Empty:
                pass
            if not jobs:
                continue
            try:
                self.store.sync()
            except OSError:
                log.critical("fsync of the database's WAL failed; exiting for a clean restart", exc_info=True)
                self.failed()
                return
            self._done.extend(jobs)
            self._synced += len(jobs)
            self.wake()
