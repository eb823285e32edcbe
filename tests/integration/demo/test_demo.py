"""The demo end to end: `python -m demo --fast` as a user runs it (real Mosquitto, real gateway
process, the whole Berlin register, virtual boards running the firmware on the MicroPython unix
port; then three bridged regions and central with an overflow), then proof that it stopped
everything it started, the boards' micropython processes, every broker, gateway and central."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

from harness import ROOT
from recarga.core.broker_dir import CONF_NAME

TIMEOUT_S = 150  # the fast demo takes about 35 s (15 s without the boards)

# What a reader must see: every step of the reservation lifecycle, and the protocol's answers.
KEY_EVENTS = [
    "tick 0.5 s, TLS trusting the demo's CA alone",
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

# What the virtual-board act must show: the boards' own serial lines (prefixed by the board's
# name), the slot LEDs as the virtual boards read them, the gateway's log about the boards.
BOARD_EVENTS = [
    "car ev6-1        │  [I] car: battery low: soc 12 %, asking for a charging point",
    "car ev6-1        │  [I] car: slot reserved: station ",
    "car ev6-1        │  [I] car: confirmed r",
    "car ev6-1        │  [I] car: checked in at station ",
    "car ev6-1        │  [I] car: charging: soc",
    "car ev6-1        │  [I] car: charged: soc",
    "completed, driving on",
    "car mini-1       │  [I] car: reservation r",
    "expired: battery fine, driving on",
    "car leaf-1       │  [I] car: no capacity",
    "│  [I] station: cmd applied, slot 1 reserved",
    "│  [I] station: slot 1 occupied",
    "◉  slot 1 LED: blue (reserved)",
    "◉  slot 1 LED: red (occupied)",
    "◉  slot 1 LED: green (free)",
    "◉  status LED: blinking 5 Hz",
    "gateway log      │  car ev6-1 rid ev6-1-",
    "gateway log      │  reservation r",
    "⇠  pot1 turned down to",
    "⇠  btn1 pressed",
    "✓ every board ran on one boot, without a traceback or MemoryError",
    "✓ every board connected over TLS, the demo's CA pinned, the broker's certificate checked for localhost",
]


# The regions act (demo/regions.py), with or without boards: the messages between gateways and
# central as the taps print them, the answers, and the databases' checks.
REGION_EVENTS = [
    "(TLS only, certificate from the demo's CA",
    "bridged to central (Mosquitto's bridge as bridge-west",
    "[overflow] enabled",
    ("central's view from the regions' summaries: west 2 stations online, 0 slots free; mitte 2 stations "
     "online, 4 slots free"),
    "gateway west     -> central  overflow? ovf:",
    "central          -> gateway mitte hold? ovf:",
    "gateway mitte    -> central  held r",
    "central          -> gateway west answer ovf:",
    "gateway mitte    -> central  hold event: r",
    "✓ mitte's database: id3-w confirmed on r",
    "✓ mitte's database: id3-w checked_in on r",
    "✓ central's database: the hold for id3-w in mitte is checked_in",
    "bridge west      -> gateway west link to central down",
    ("car zoe-w        <- gateway west error no_capacity: every slot within reach is taken; "
     "the earliest frees up at"),
    "overflow: overflow_unavailable",
    "✓ zoe-w was told no_capacity with overflow_unavailable after",
]
BOARD_REGION_EVENTS = [
    "car id3-w        │  [I] car: overflow: slot held in region mitte, handing over to its broker 127.0.0.1:",
    "car id3-w        │  [I] car: confirmed r",
    "car id3-w        │  [I] car: checked in at station ",
    "✓ the car board in west was answered with a slot in mitte",
]
SCRIPTED_REGION_EVENTS = [
    "car id3-w        <- gateway west reserved r",
    "in region mitte (its broker 127.0.0.1:",
    "car id3-w        <- gateway mitte confirmed r",
    "car id3-w        <- gateway mitte checked_in r",
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


def _started(out: str) -> tuple[list[tuple[int, str]], list[tuple[str, int]]]:
    """(pid, program) of what the demo says it started, and every broker's address."""
    # the boards' pids as each one booted, and as listed when they were stopped
    board_pids = re.findall(r"micropython pid (\d+), firmware/", out)
    for listed in re.findall(r"micropython pids ([\d, ]+)", out):
        board_pids += re.findall(r"\d+", listed)
    pids: list[tuple[int, str]] = [(int(p), "micropython") for p in dict.fromkeys(board_pids)]
    brokers = re.findall(r"mosquitto pid (\d+) on ([\d.]+):(\d+)", out)
    pids += [(int(pid), "mosquitto") for pid, _, _ in brokers]
    # the region's gateway, then the three regions' gateways and central (the regions act)
    pids += [(int(pid), "recarga.gateway.cli") for pid in re.findall(r"gateway +pid (\d+)", out)]
    pids += [(int(pid), "recarga.central.cli") for pid in re.findall(r"recarga-central run, pid (\d+)", out)]
    return pids, [(host, int(port)) for _, host, port in brokers]


def assert_tls_only(run_dir: Path, out: str) -> None:
    """The region's broker has one listener, TLS, with the demo's CA; the gateway trusts that CA."""
    line = next(x for x in out.splitlines() if x.startswith("  broker   mosquitto pid "))
    port = int(re.search(r" on 127\.0\.0\.1:(\d+) ", line).group(1))
    ca = run_dir / "tls" / "ca.crt"
    assert f"(TLS only, certificate from the demo's CA {ca} for localhost and 127.0.0.1)" in line, line
    conf = (run_dir / "broker" / CONF_NAME).read_text().splitlines()
    assert [x for x in conf if x.startswith("listener ")] == [f"listener {port} 127.0.0.1"], conf
    assert f"cafile {ca}" in conf and any(x.startswith("certfile ") for x in conf), conf
    assert f"tls_ca = {json.dumps(str(ca))}" in (run_dir / "gateway" / "gateway.toml").read_text()


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


@pytest.mark.needs_micropython
def test_fast_demo_shows_the_lifecycle_and_cleans_up(tmp_path):
    code, out = run_demo("--fast", "--dir", str(tmp_path / "demo"))
    pids, broker = _started(out)
    try:
        assert code == 0, out
        missing = [e for e in KEY_EVENTS + BOARD_EVENTS if e not in out]
        assert not missing, f"missing in the demo's output: {missing}\n{out}"
        assert_tls_only(tmp_path / "demo", out)
        boards = out.split("── Boards 0", 1)[1].split("── 0 ·", 1)[0]
        # every board's connect line (to its virtual Wi-Fi's proxy port): TLS, the server name checked
        for who in ("station 1017746", "station 1017480", "car ev6-1", "car mini-1", "car leaf-1"):
            assert re.search(rf"^\+ *[\d.]+s  {who} +│  \[I\] mqtt: connecting to 127\.0\.0\.1 \d+ over TLS, "
                             r"server name localhost$", boards, re.MULTILINE), (who, boards)

        # the car board's answer names a station board and slot; that slot's LED (read from the
        # station board) turns blue, red when its button is pressed, green when released
        answer = re.search(r"car ev6-1 +│  \[I\] car: slot reserved: station (\d+) slot (\d), .* UTC, "
                           r"wait \d+ min, charge \d+ min, [\d.]+ EUR, hold until [\d:]+ UTC \((r\w+) held\)$",
                           boards, re.MULTILINE)
        assert answer, boards
        sid, slot, rid = answer.groups()
        act = boards.split("── Boards 1", 1)[1]  # after the boot (whose LEDs all show green)
        led = [m.group(1) for m in re.finditer(rf"^\+ *[\d.]+s  station {sid} +◉  slot {slot} LED: (\w+)",
                                               act, re.MULTILINE)]
        assert led[:3] == ["blue", "red", "green"], (led, boards)
        for state in ("confirmed", "checked in", "completed"):  # the gateway's log, in order
            assert f"gateway log      │  reservation {rid} (car ev6-1, {sid} slot {slot}) {state}" in boards
        assert boards.index(f"reservation {rid} (car ev6-1, {sid} slot {slot}) checked in") < boards.index(
            f"car: unplugged: {rid} completed, driving on")
        # the database agrees, step by step
        for state in ("confirmed", "checked_in", "completed"):
            assert f"✓ the gateway's database: {rid} {state} (ev6-1 at {sid} slot {slot})" in boards
        # mini-1's hold lapses: the LED of its slot goes back to green, and leaf-1 gets that slot
        expired = re.search(r"\[I\] car: reservation (r\w+) expired: battery fine, driving on", boards)
        assert expired and f"✓ the gateway's database: {expired.group(1)} expired (mini-1 at 1017480 slot 1)" in boards
        after = boards[expired.end():]
        assert re.search(r"station 1017480  ◉  slot 1 LED: green \(free\)", after), boards
        assert "car leaf-1       │  [I] car: slot reserved: station 1017480 slot 1" in after, boards
        # every board was switched off by pid, and both stations went offline for the gateway
        assert re.search(r"stopping the 5 virtual boards by pid: micropython pids \d+, \d+, \d+, \d+, \d+;", boards)
        assert "gateway log      │  station 1017746 offline" in boards
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

        # the regions act: the car board in full west is sent to mitte, hands over, confirms,
        # checks in; with central's broker gone, west answers at once
        regions = out.split("── Regions 0", 1)[1]
        assert not [e for e in REGION_EVENTS + BOARD_REGION_EVENTS if e not in regions], regions
        port = re.search(r"region mitte, broker 127\.0\.0\.1:(\d+)", regions).group(1)
        assert f"car id3-w        │  [I] car: handing over to region mitte: broker 127.0.0.1:{port}" in regions
        assert f"car id3-w        │  [I] mqtt: connecting to 127.0.0.1 {port} over TLS, server name localhost" in regions
        assert regions.index("car: handing over to region mitte") < regions.index("car: confirmed r")

        # nothing it started is left: every pid gone (boards, brokers, gateways, central), every port closed
        assert sorted(name for _, name in pids) == sorted(
            ["micropython"] * 6 + ["mosquitto"] * 5 + ["recarga.gateway.cli"] * 4 + ["recarga.central.cli"]), out
        assert not [p for p in pids if _alive(*p)], pids
        assert len(broker) == 5 and not [b for b in broker if _accepts(*b)], f"{broker}: some still accept connections"
    finally:
        for pid, name in pids:
            if _alive(pid, name):
                os.kill(pid, signal.SIGKILL)


def test_no_boards_skips_the_virtual_board_act(tmp_path):
    code, out = run_demo("--fast", "--no-boards", "--dir", str(tmp_path / "demo"))
    pids, brokers = _started(out)
    try:
        assert code == 0, out
        assert "── Boards" not in out and "micropython" not in out, out
        assert not [e for e in KEY_EVENTS + REGION_EVENTS + SCRIPTED_REGION_EVENTS if e not in out], out
        assert_tls_only(tmp_path / "demo", out)
        assert not (tmp_path / "demo" / "boards").exists() and not (tmp_path / "demo" / "regions" / "boards").exists()
        assert not [p for p in pids if _alive(*p)], pids
        assert not [b for b in brokers if _accepts(*b)], brokers
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
