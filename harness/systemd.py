"""systemd's own checks of the deployment units (`systemd-analyze verify` and `security`), and a
stand-in for systemd's notification socket to watch a Type=notify service's READY=1 and
watchdog pets."""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

from harness.wait import wait_until

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def verify(unit: Path) -> tuple[int, str]:
    """`systemd-analyze verify` of one unit file: its exit status and output."""
    if SYSTEMD_ANALYZE is None:
        raise FileNotFoundError("systemd-analyze not installed (Debian package 'systemd'; scripts/setup installs it)")
    done = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)
    return done.returncode, done.stdout + done.stderr


def about(unit: Path, output: str) -> list[str]:
    """Lines of systemd-analyze output about this unit (not about other units on the machine)."""
    return [line for line in output.splitlines() if unit.name in line or str(unit) in line]


EXPOSURE_LINE = re.compile(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?) ")


def exposure(unit: Path) -> float:
    """The overall exposure level `systemd-analyze security --offline=yes` gives the unit file
    (0 = locked down, 10 = unprotected), as it prints it."""
    if SYSTEMD_ANALYZE is None:
        raise FileNotFoundError("systemd-analyze not installed (Debian package 'systemd'; scripts/setup installs it)")
    done = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=60, check=False)
    found = [float(m[2]) for m in EXPOSURE_LINE.finditer(done.stdout) if m[1] == unit.name]
    if done.returncode != 0 or len(found) != 1:
        raise ValueError(f"no exposure level for {unit.name} from systemd-analyze security "
                         f"(exit {done.returncode}): {done.stdout[-2000:]}{done.stderr}")
    return found[0]


class NotifySocket:
    """A unix datagram socket in systemd's place: a service started with environment()
    (NOTIFY_SOCKET, and WATCHDOG_USEC for a watchdog) sends its sd_notify datagrams here. A
    thread keeps each datagram's fields with its arrival time (time.monotonic()); close() ends it.
    """

    def __init__(self) -> None:
        # a short directory of its own: a socket path has at most 107 bytes
        self._dir = Path(tempfile.mkdtemp(prefix="notify-"))
        self.path = self._dir / "notify"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.1)
        self._cond = threading.Condition()
        self._received: list[tuple[float, dict[str, str]]] = []
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read, name="notify-socket", daemon=True)
        self._reader.start()

    def environment(self, watchdog_s: float | None = None) -> dict[str, str]:
        """What systemd sets for a Type=notify service (with WatchdogSec=watchdog_s)."""
        env = {"NOTIFY_SOCKET": str(self.path)}
        if watchdog_s is not None:
            env["WATCHDOG_USEC"] = str(round(watchdog_s * 1e6))
        return env

    def _read(self) -> None:
        while not self._closing.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.partition("=")[::2] for line in data.decode().splitlines() if line)
            with self._cond:
                self._received.append((time.monotonic(), fields))
                self._cond.notify_all()

    def received(self) -> list[tuple[float, dict[str, str]]]:
        """Every datagram so far: (arrival time, its fields), in order."""
        with self._cond:
            return list(self._received)

    def times(self, field: str, value: str | None = None) -> list[float]:
        """Arrival times of the datagrams that carry `field` (with this value, if given)."""
        return [t for t, f in self.received() if field in f and (value is None or f[field] == value)]

    def wait_for(self, field: str, value: str | None = None, timeout: float = 20.0, count: int = 1,
                 alive: Callable[[], object] | None = None) -> float:
        """Until `count` datagrams carry `field` (=value); the last one's arrival time."""
        def got() -> float | None:
            t = [when for when, f in self._received if field in f and (value is None or f[field] == value)]
            return t[count - 1] if len(t) >= count else None
        return wait_until(got, timeout, f"{count} x {field}{'=' + value if value is not None else ''} on "
                          f"{self.path}", alive, cond=self._cond)

    def close(self) -> None:
        self._closing.set()
        self._reader.join(5)
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
