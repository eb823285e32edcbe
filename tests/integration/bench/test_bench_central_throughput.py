"""bench/central_throughput.py runs end to end (--quick: one short run with 1 and with 2
central instances on a real broker) and ends with its result line. Only the line's shape is
checked, never the figures."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from benchrun import run_bench

pytestmark = pytest.mark.integration

LAST_LINE = re.compile(r"^central throughput: \d+ req/s with 1 instance, \d+ req/s with 2 "
                       r"\(ratio (?:\d+\.\d{2}|inf)\)$")


def test_quick_bench_ends_with_the_result_line(tmp_path: Path):
    lines = run_bench("central_throughput.py", "--quick", "--dir", str(tmp_path))
    assert LAST_LINE.match(lines[-1]), lines[-5:]
    assert list(tmp_path.iterdir()) == []  # its work directory is removed
