"""bench/replay_speed.py as a user runs it, at a size that takes seconds: its lines and its errors."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
from benchrun import run_bench

from harness import ROOT

LAST = re.compile(r"^replay of 1,200 sessions over 12 stations: median \d+\.\d s per policy \(goal 60 s\)$")


def test_replay_speed_times_every_run_and_prints_the_result_last():
    lines = run_bench("replay_speed.py", "--sessions", "1200", "--stations", "12", "--days", "4",
                      "--runs", "2", "--all-policies", "--jobs", "1", timeout=120)
    assert LAST.match(lines[-1]), lines[-1]
    assert re.match(r"^replay \S+sessions\.csv: 1200 sessions$", lines[1]), lines[1]  # no row skipped
    runs = [line for line in lines if line.startswith("run ")]
    assert len(runs) == 2 and all(" 1200 cars" in line for line in runs), runs
    assert any(line.startswith("sweep of the 4 policies on 1 worker process(es): ") for line in lines)


@pytest.mark.parametrize("args, message", [
    (("--sessions", "0"), "argument --sessions: must be at least 1, got 0"),
    (("--runs", "two"), "argument --runs: not a whole number: 'two'"),
])
def test_bad_arguments_give_one_line_and_exit_2(args, message):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "replay_speed.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 2
    assert proc.stderr == f"bench/replay_speed.py: {message}\n"
    assert proc.stdout == ""
