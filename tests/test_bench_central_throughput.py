"""bench/central_throughput.py runs end to end (--quick: one short run with 1 and with 2
central instances on a real broker) and ends with its result line. Only the line's shape is
checked, never the figures."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
LAST_LINE = re.compile(r"^central throughput: \d+ req/s with 1 instance, \d+ req/s with 2 "
                       r"\(ratio (?:\d+\.\d{2}|inf)\)$")


def test_quick_bench_ends_with_the_result_line(tmp_path: Path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "central_throughput.py"), "--quick",
                           "--dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    lines = proc.stdout.strip().splitlines()
    assert lines and LAST_LINE.match(lines[-1]), output[-3000:]
    assert list(tmp_path.iterdir()) == []  # its work directory is removed
