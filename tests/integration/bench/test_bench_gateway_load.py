"""bench/gateway_load.py runs end to end with tiny parameters and prints its result lines:
the throughput ratio by default, both responders' open-loop latency with --rate.

Only the shape of the output is checked, never the figures (they depend on the machine).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from benchrun import run_bench

pytestmark = pytest.mark.integration

TINY = ("--cars", "20", "--stations", "20", "--seconds", "1", "--quick")

LAST_LINE = re.compile(
    r"^gateway/echo throughput ratio: (?:\d+\.\d{2}|nan|inf) "
    r"\(gateway (?:\d+|nan|inf) req/s, echo (?:\d+|nan|inf) req/s, "
    r"p99 gateway (?:\d+\.\d|nan|inf) ms, echo (?:\d+\.\d|nan|inf) ms\)$")

RATE_LINE = re.compile(
    r"^open loop at 200 req/s \(--rate\): gateway p50 \d+\.\d ms, p99 \d+\.\d ms; "
    r"echo p50 \d+\.\d ms, p99 \d+\.\d ms$")


def test_tiny_bench_exits_0_and_ends_with_the_result_line(tmp_path: Path):
    lines = run_bench("gateway_load.py", *TINY, "--dir", str(tmp_path))
    assert LAST_LINE.match(lines[-1]), lines[-1]
    assert "half the echo throughput" in lines[-2], lines[-2]
    # its work dir (broker directory, databases, logs) is removed at the end
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())


def test_rate_mode_measures_both_responders_open_loop_only(tmp_path: Path):
    lines = run_bench("gateway_load.py", *TINY, "--rate", "200", "--dir", str(tmp_path))
    assert RATE_LINE.match(lines[-1]), lines[-1]
    runs = [line.split()[:2] for line in lines if line.startswith("  ") and " run 1/1: " in line]
    assert runs == [["echo", "open"], ["gateway", "open"]], lines
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())
