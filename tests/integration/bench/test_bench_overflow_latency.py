"""bench/overflow_latency.py runs end to end (--quick: one short run over real bridges) and
ends with its result line. Only the line's shape is checked, never the figures."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from benchrun import run_bench

pytestmark = pytest.mark.integration

LAST_LINE = re.compile(r"^overflow p99: \d+\.\d ms \(local p99 \d+\.\d ms, ratio (?:\d+\.\d{2}|inf)\)$")


def test_quick_bench_ends_with_the_result_line(tmp_path: Path):
    lines = run_bench("overflow_latency.py", "--quick", "--dir", str(tmp_path))
    assert LAST_LINE.match(lines[-1]), lines[-5:]
    assert list(tmp_path.iterdir()) == []  # its work directory is removed
