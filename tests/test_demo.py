"""The demo end to end: `python -m demo --fast` as a user runs it (real Mosquitto, real gateway
process, the whole Berlin register), then proof that it stopped everything it started."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 120  # the fast demo takes about 10 s

# What a reader must see: every step of the reservation lifecycle, and the protocol's answers.
KEY_EVENTS = [
    "<- gateway  reserved r",
    "<- gateway  confirmed r",
    "<- gateway  checked_in r",
    "<- gateway  completed r",
    "<- gateway  expired r",
    "<- gateway  faulted r",
    "went out of service; new offer r",
    "<- gateway  cancelled r",
    "<- gateway  error out_of_range (field soc)",
    "<- gateway  error unknown_station",
    "<- gateway  error no_capacity",
    "<- gateway  reserve slot",
    "<- gateway  release slot",
    "✓ same answer for the repeated rid",
    "✓ each of the 2 free slots went to exactly one car at once",
    "✓ no slot carries two overlapping reservations",
]


def _alive(pid: int, name: str) -> bool:
    """Whether `pid` is still a running process called `name` (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return name.encode() in cmdline and stat.split(")", 1)[1].split()[0] != "Z"


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _started(out: str) -> tuple[list[tuple[int, str]], tuple[str, int] | None]:
    """(pid, program) of what the demo says it started, and the broker's address."""
    pids: list[tuple[int, str]] = []
    broker = re.search(r"mosquitto pid (\d+) on ([\d.]+):(\d+)", out)
    if broker:
        pids.append((int(broker.group(1)), "mosquitto"))
    gateway = re.search(r"gateway  pid (\d+)", out)
    if gateway:
        pids.append((int(gateway.group(1)), "gateway.cli"))
    return pids, (broker.group(2), int(broker.group(3))) if broker else None


def run_demo(*args: str) -> tuple[int, str]:
    proc = subprocess.Popen([sys.executable, "-m", "demo", *args], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the demo stops what it started, then exits
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        for pid, name in _started(out)[0]:  # whatever it could not stop, by its pid
            if _alive(pid, name):
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"python -m demo {' '.join(args)} did not finish within {TIMEOUT_S} s:\n{out}")
    return proc.returncode, out


def test_fast_demo_shows_the_lifecycle_and_cleans_up(tmp_path):
    code, out = run_demo("--fast", "--dir", str(tmp_path / "demo"))
    pids, broker = _started(out)
    try:
        assert code == 0, out
        missing = [e for e in KEY_EVENTS if e not in out]
        assert not missing, f"missing in the demo's output: {missing}\n{out}"
        assert re.search(r"Checks: (\d+) of \1 as docs/protocol.md says\.", out), out

        # the repeated request id got a reply identical to the first one, word for word
        rid = re.search(r"✓ same answer for the repeated rid (\S+):", out).group(1)
        replies = [line.split("<- gateway", 1)[1] for line in out.splitlines()
                   if "<- gateway  reserved" in line and line.endswith(f"[rid {rid}]")]
        assert len(replies) == 2 and replies[0] == replies[1], replies

        # the summary comes from the gateway's database, with every final state the demo shows
        summary = out.split("── Summary", 1)[1]
        states = re.search(r"by final state: (.*)", summary).group(1)
        for state in ("completed", "expired", "cancelled", "faulted", "confirmed"):
            assert state in states, states
        assert (tmp_path / "demo" / "gateway" / "gateway.db").exists()
        assert "connected to" in (tmp_path / "demo" / "gateway" / "gateway.log").read_text()

        # nothing it started is left: both pids gone, the broker's port closed
        assert [name for _, name in pids] == ["mosquitto", "gateway.cli"], out
        assert not [p for p in pids if _alive(*p)], pids
        assert broker is not None and not _accepts(*broker), f"{broker} still accepts connections"
    finally:
        for pid, name in pids:
            if _alive(pid, name):
                os.kill(pid, signal.SIGKILL)


def test_refuses_to_clear_a_directory_that_is_not_its_own(tmp_path):
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    code, out = run_demo("--fast", "--dir", str(tmp_path))
    assert code == 1, out
    assert "is not a demo run directory" in out
    assert precious.read_text() == "keep me"
    assert "mosquitto pid" not in out  # it gave up before starting anything
