"""bench/gateway_load.py runs end to end with tiny parameters and prints its result line.

Only the shape of the output is checked, never the figures (they depend on the machine).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from benchrun import run_bench

pytestmark = pytest.mark.integration

LAST_LINE = re.compile(
    r"^gateway/echo throughput ratio: (?:\d+\.\d{2}|nan|inf) "
    r"\(gateway (?:\d+|nan|inf) req/s, echo (?:\d+|nan|inf) req/s, "
    r"p99 gateway (?:\d+\.\d|nan|inf) ms, echo (?:\d+\.\d|nan|inf) ms\)$")


def test_tiny_bench_exits_0_and_ends_with_the_result_line(tmp_path: Path):
    lines = run_bench("gateway_load.py", "--cars", "20", "--stations", "20", "--seconds", "1", "--quick",
                      "--dir", str(tmp_path))
    assert LAST_LINE.match(lines[-1]), lines[-1]
    assert "half the echo throughput" in lines[-2], lines[-2]
    # its work dir (broker directory, databases, logs) is removed at the end
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())
