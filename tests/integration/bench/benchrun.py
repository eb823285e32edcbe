"""Runs a bench/ script as a subprocess for the bench smoke tests (test_bench_*.py)."""
from __future__ import annotations

import subprocess
import sys

from harness import ROOT


def run_bench(script: str, *args: str, timeout: float = 240) -> list[str]:
    """bench/<script> with `args`; asserts it exits 0 and returns its stdout lines (at least one)."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    lines = proc.stdout.strip().splitlines()
    assert lines, output
    return lines
