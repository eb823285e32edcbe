"""What the gateway and central tell systemd, for their Type=notify units (sd_notify protocol):
READY=1 once the service serves, STATUS= lines an operator sees in `systemctl status`,
STOPPING=1 when it shuts down, and WATCHDOG=1 pets at half of WATCHDOG_USEC.

The pets come from the loop that does the work (pet() on each pass, the pass never waiting
longer than until_pet()), never from a thread of their own: a loop that hangs stops them and
systemd restarts the service (WatchdogSec=). Outside systemd (no NOTIFY_SOCKET) every call does
nothing. The datagrams go out through the sdnotify package.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping

from sdnotify import SystemdNotifier

log = logging.getLogger("recarga.service_manager")


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between pets: half of WATCHDOG_USEC, as sd_watchdog_enabled(3) reads it; None
    when systemd watches no process, or another one (WATCHDOG_PID names it)."""
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner and owner.strip() != str(pid):
        return None
    value = int(usec) if usec.isdigit() else 0
    if value <= 0:
        log.warning("WATCHDOG_USEC=%r is not a positive number of microseconds; sending no watchdog pets", usec)
        return None
    return value / 2e6


class ServiceManager:
    """The notifications of one service process. ServiceManager() alone sends nothing (a
    service outside systemd, or in a test); from_environment() reads what systemd set."""

    def __init__(self, notifier: SystemdNotifier | None = None, watchdog_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._notifier = notifier
        self.watchdog_s = watchdog_s if notifier is not None else None
        self._clock = clock
        self._next_pet = -math.inf
        self._failed = False  # a send failed: said once in the log
        self.is_ready = False

    @classmethod
    def from_environment(cls, clock: Callable[[], float] = time.monotonic) -> ServiceManager:
        """Notifications to NOTIFY_SOCKET, pets as WATCHDOG_USEC asks; nothing when unset."""
        if not os.environ.get("NOTIFY_SOCKET"):
            return cls()
        try:
            notifier = SystemdNotifier(debug=True)  # debug: errors are raised, and logged here
        except OSError as e:
            log.warning("cannot reach the service manager at NOTIFY_SOCKET=%s (%s); not notifying it",
                        os.environ["NOTIFY_SOCKET"], e)
            return cls()
        return cls(notifier, watchdog_interval(os.environ, os.getpid()), clock)

    def _send(self, *fields: str) -> None:
        if self._notifier is None:
            return
        try:
            self._notifier.notify("\n".join(fields))
        except OSError as e:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify the service manager (%s); its watchdog may restart us", e)

    def ready(self, status: str) -> None:
        """READY=1 the first time (start-up is over), with a STATUS= line; later just the status."""
        if self.is_ready:
            self.status(status)
            return
        self.is_ready = True
        self._send("READY=1", f"STATUS={status}")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def stopping(self) -> None:
        self._send("STOPPING=1", "STATUS=stopping")

    def pet(self) -> None:
        """WATCHDOG=1 if the last pet is half a watchdog period old (cheap to call every pass)."""
        if self.watchdog_s is None:
            return
        now = self._clock()
        if now >= self._next_pet:
            self._next_pet = now + self.watchdog_s
            self._send("WATCHDOG=1")

    def until_pet(self) -> float:
        """Seconds until the next pet is due: the longest the loop may wait (inf: no watchdog)."""
        if self.watchdog_s is None:
            return math.inf
        return max(0.0, self._next_pet - self._clock())
