"""Group commit in a thread of its own: the loop decides, this thread makes it durable.

The loop hands each batch's engine Results over and goes on reading and deciding; this
thread writes everything handed over since its last commit in one transaction, then gives
the batches back, in order, for the loop to publish their replies and acknowledge their
messages. So an fsync no longer stops the loop, and batches group themselves: what arrives
during one commit goes into the next, with no timer. Nothing a batch says is published
before it is on disk; the engine runs ahead of the disk only in memory, and a failed
commit ends the process before anything of that batch or a later one is released.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from .engine import Result
from .store import Store

log = logging.getLogger("recarga.gateway")


@dataclass(slots=True)
class Job:
    """One batch: what to write, and what the loop does once it is written (`release`)."""

    results: list[Result]
    texts: dict[int, str]  # JSON text of reply dicts by id(), as published
    release: Any = None
    messages: int = 0  # inbound messages it acknowledges: the backlog counts these
    prune_before: float | None = None  # forget request ids answered before this (epoch s)


@dataclass
class Committer:
    """store: written only from this thread while it runs. wake(): called from this thread
    after a commit (the loop waits on a socket). failed(): called from this thread when a
    commit fails; it must not return (the service exits for a clean restart)."""

    store: Store
    wake: Callable[[], None]
    failed: Callable[[], None]
    _queue: deque[Job] = field(default_factory=deque)
    _done: deque[Job] = field(default_factory=deque)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _busy: bool = False
    _stopping: bool = False
    _thread: threading.Thread | None = None
    backlog: int = 0  # inbound messages handed over and not yet given back

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        if self._thread is None:
            self.start()
        with self._cond:
            self._queue.append(job)
            self.backlog += job.messages
            self._cond.notify()

    def done(self) -> list[Job]:
        """The batches written since the last call, in the order they were handed over."""
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
        """Write what was handed over, then end the thread."""
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
                jobs = list(self._queue)
                self._queue.clear()
                self._busy = True
            try:
                self.store.commit_all([r for j in jobs for r in j.results],
                                      {k: v for j in jobs for k, v in j.texts.items()})
                for j in jobs:
                    if j.prune_before is not None:
                        self.store.prune_requests(j.prune_before)
            except sqlite3.Error:
                log.critical("database write failed; exiting for a clean restart", exc_info=True)
                self.failed()
                return
            with self._cond:
                self._done.extend(jobs)
                self._busy = False
            self.wake()
