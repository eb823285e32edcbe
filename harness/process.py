"""The harness's one handle on a child process: started from argv, stopped by its pid.

Every program the tests, the benchmarks and the demo start (Mosquitto, the gateway and
central, mosquitto_sub, MicroPython) is a `ChildProcess` or a subclass. It runs in its own
session, so a Ctrl-C in the terminal reaches only the parent, which stops its children in
order. Its output goes to a log file, appended across restarts, or (log=None) into memory
line by line for callers that wait on single lines. stop() sends SIGTERM to its pid, then
SIGKILL, and is safe to call in any state, so a `finally:` can always call it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Self, TypeVar

from harness.wait import wait_until

T = TypeVar("T")


class ProcessExited(subprocess.SubprocessError):
    """A child process ended while it was being waited for; the message ends with its output."""


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Stop a child we started, by its pid: SIGTERM, then SIGKILL after `timeout` s; reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


class ChildProcess:
    """`argv` as a child process; its stdout and stderr to `log`, or kept in memory (log=None).

    start() again after stop() or kill() is a restart: same argv, output appended.
    """

    def __init__(self, who: str, argv: Sequence[str | Path], log: Path | None = None, *,
                 cwd: Path | str | None = None, env: Mapping[str, str] | None = None, stdin: bool = False):
        self.who = who  # names it in errors: "gateway a", "mosquitto test"
        self.argv = [str(a) for a in argv]
        self.log = Path(log) if log is not None else None
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.stdin = stdin  # a pipe that write() feeds, else /dev/null
        self.proc: subprocess.Popen | None = None
        self._out: IO[bytes] | None = None
        self._lines: list[str] = []  # output kept in memory
        self._cond = threading.Condition()  # notified for each line kept
        self._reader: threading.Thread | None = None
        self._eof = True  # all the output of the last start has been read

    # ------------------------------------------------------------ state

    @property
    def pid(self) -> int | None:
        """The pid of the last start (kept after it ended); None before the first start."""
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    # ------------------------------------------------------------ start and stop

    def start(self) -> Self:
        if self.running:
            raise RuntimeError(f"{self.who} (pid {self.pid}) is already running")
        self._finish_output()
        common = {"cwd": self.cwd, "env": self.env, "stdin": subprocess.PIPE if self.stdin else subprocess.DEVNULL,
                  "stderr": subprocess.STDOUT, "start_new_session": True}
        if self.log is not None:
            self._out = open(self.log, "ab")  # noqa: SIM115 (open while the process runs)
            try:
                self.proc = subprocess.Popen(self.argv, stdout=self._out, **common)
            except BaseException:
                self._finish_output()
                raise
        else:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True, encoding="utf-8",
                                         errors="replace", bufsize=1, **common)
            self._eof = False
            self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True,
                                            name=f"output of {self.who}")
            self._reader.start()
        return self

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._cond:
                self._lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def write(self, line: str) -> None:
        """A line to its stdin (started with stdin=True)."""
        assert self.proc is not None and self.proc.stdin is not None, f"{self.who}: no stdin to write to"
        data = line + "\n"
        self.proc.stdin.write(data if self.log is None else data.encode())
        self.proc.stdin.flush()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to its pid, SIGKILL if it has not exited after `timeout` s. Idempotent."""
        if self.proc is not None:
            stop_process(self.proc, timeout)
        self._finish_output(timeout)

    def kill(self) -> None:
        """SIGKILL to its pid: no clean shutdown, as in a crash or a power cut."""
        if self.running:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self._finish_output()

    def _finish_output(self, timeout: float = 5.0) -> None:
        if self.proc is not None and self.proc.stdin is not None and self.proc.poll() is not None:
            with contextlib.suppress(BrokenPipeError):  # what it was sent last, it never read
                self.proc.stdin.close()
        if self._reader is not None:
            self._reader.join(timeout)
            if not self._reader.is_alive() and self.proc is not None and self.proc.stdout is not None:
                self.proc.stdout.close()
            self._reader = None
        if self._out is not None:
            self._out.close()
            self._out = None

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ output

    def log_text(self) -> str:
        """Everything it printed (every start's)."""
        if self.log is None:
            with self._cond:
                return "".join(line + "\n" for line in self._lines)
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def lines(self, start: int = 0) -> list[str]:
        """Its output lines from line `start` on."""
        if self.log is None:
            with self._cond:
                return self._lines[start:]
        return self.log_text().splitlines()[start:]

    def alive(self) -> None:
        """Raise ProcessExited, with the end of its output, once it has ended (and all its
        output has been read)."""
        if self.proc is None or self.proc.poll() is None:
            return
        with self._cond:
            if not self._eof:
                return
        tail = "\n".join(self.log_text().splitlines()[-15:])
        raise ProcessExited(f"{self.who} exited with status {self.proc.returncode}; its log ends:\n{tail}")

    def wait_lines(self, pred: Callable[[list[str]], T], timeout: float, what: str) -> T:
        """pred(its output lines so far)'s first truthy value; TimeoutError after `timeout` s,
        ProcessExited as soon as it has ended without pred() coming true."""
        if self.log is None:
            return wait_until(lambda: pred(self._lines), timeout, f"{self.who}: {what}", self.alive,
                              cond=self._cond)
        return wait_until(lambda: pred(self.lines()), timeout, f"{self.who}: {what}", self.alive)

    def wait_log(self, text: str, timeout: float = 20.0, count: int = 1) -> None:
        """Until `text` stands `count` times in its output; ProcessExited if it ends first."""
        wait_until(lambda: self.log_text().count(text) >= count, timeout, f"{self.who}: {text!r} in its log",
                   self.alive, cond=self._cond if self.log is None else None)
