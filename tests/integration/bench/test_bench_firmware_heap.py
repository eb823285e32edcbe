"""bench/firmware_heap.py runs end to end with a small message count and prints its result line.

Only the shape of the output is checked, never the figures (the goals are the bench's to
report, not this test's).
"""
from __future__ import annotations

import re

import pytest
from benchrun import run_bench

pytestmark = [pytest.mark.integration, pytest.mark.needs_micropython]

LAST_LINE = re.compile(
    r"^firmware heap peak: car (-?\d+\.\d) KB, station (-?\d+\.\d) KB; "
    r"drift after 50 messages: car (-?\d+\.\d) KB, station (-?\d+\.\d) KB$")


def test_small_bench_exits_0_and_ends_with_the_result_line():
    lines = run_bench("firmware_heap.py", "--messages", "50", "--runs", "1", timeout=120)
    assert LAST_LINE.match(lines[-1]), lines[-1]
    assert lines[-2].startswith("goal (peak <= 48 KB, drift <= 1 KB): "), lines[-2]
