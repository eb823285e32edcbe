"""The station firmware (firmware/station + firmware/lib, unmodified) on the virtual board
(boards/virtual: MicroPython unix port, 96 KB heap, emulated machine/network wired by a
Wokwi diagram) against a real Mosquitto with auth and ACL over TLS (the station pins the
broker's CA, as provisioning writes it), observed as the gateway user."""
from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest

from harness.broker import MONITOR_USER, PASSWORDS, REGION, Broker, monitor_acl
from harness.clients import connect_client
from harness.micropython import LIB, ROOT, STATION, umqtt_available, virtual_board
from harness.wait import wait_until
from recarga.core.protocol import device as D
from recarga.devices.provision import pinned_ca

VIRTUAL = ROOT / "boards" / "virtual" / "board.py"
DIAGRAM = ROOT / "boards" / "station" / "diagram.json"  # the station board's wiring (docs/firmware.md)
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not VIRTUAL.exists() or not DIAGRAM.exists(), reason="boards/virtual or boards/station missing"),
    pytest.mark.skipif(not umqtt_available(), reason="umqtt.simple not vendored: run scripts/fetch_umqtt.py"),
]

SID = "st-1"
STATUS = D.station_topic(REGION, SID, "status")
ONLINE = D.station_topic(REGION, SID, "online")
CMD = D.station_topic(REGION, SID, "cmd")
GREEN, BLUE, RED, YELLOW, OFF = (0, 1, 0), (0, 0, 1), (1, 0, 0), (1, 1, 0), (0, 0, 0)


def station_config(b: Broker, **changes) -> dict:
    cfg = {
        "kind": "station", "id": SID, "region": REGION,
        "wifi": {"ssid": "recarga", "password": "wifi-secret"},
        "broker": {"host": b.host, "port": b.port, "user": SID,
                   "password": b.password(SID), "keepalive": 30,
                   **({"ca": pinned_ca(b.ca_file), "server_name": b.server_name} if b.ca_file else {})},
        "log": "debug",
        "pins": {"status_led": 2},
        "slots": [{"red": 25, "green": 26, "blue": 27, "sensor": 13},
                  {"red": 16, "green": 17, "blue": 18, "sensor": 19}],
        "heartbeat_s": 60,
        "debounce_ms": 50,
    }
    cfg.update(changes)
    return cfg


@pytest.fixture
def broker(tmp_path):
    """The suite's region broker (tests/conftest.py's), its listener TLS, plus a MONITOR_USER
    that may read the region (a client id is bound to its user: a second `gateway` would
    take the gateway fixture's connection over)."""
    b = Broker.launch(tmp_path / "broker", tls=True, passwords={**PASSWORDS, MONITOR_USER: "monitor-pw"},
                      extra_acl=monitor_acl(REGION))
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def station(broker, tmp_path):
    """station(config=dict | str | None, **config changes) -> a started VirtualBoard."""
    VirtualBoard = virtual_board().VirtualBoard

    boards = []

    def start(config: dict | str | None = ..., **changes) -> VirtualBoard:
        files = {"": STATION, "lib": LIB}
        if config is not None:
            if config is ...:
                config = station_config(broker, **changes)
            path = tmp_path / f"config-{len(boards)}.json"
            path.write_text(config if isinstance(config, str) else json.dumps(config))
            files["config.json"] = path
        board = VirtualBoard(DIAGRAM, files, name=f"station{len(boards)}")
        boards.append(board)
        board.start()
        return board

    try:
        yield start
    finally:
        for b in boards:
            b.stop()


@pytest.fixture
def gateway(broker, mqtt_client):
    """A paho client as the gateway user, subscribed to the station's status and online."""
    gw = mqtt_client("gateway")
    gw.subscribe(STATUS)
    gw.subscribe(ONLINE)
    return gw


def statuses(client) -> list[list[str]]:
    """Every status received, validated by the gateway's own parser (the contract)."""
    return [D.parse_station_status(m.payload) for m in client.messages(STATUS)]


def wait_status(client, slots: list[str], timeout: float = 5.0, after: int = 0) -> int:
    """Wait for a status equal to `slots` among those received from index `after`; its index."""
    def found() -> int | None:  # the index + 1 (0 is falsy)
        got = statuses(client)
        return next((i + 1 for i in range(after, len(got)) if got[i] == slots), None)
    return client.wait(found, timeout, lambda: f"status {slots} (got {statuses(client)[after:]})") - 1


def onlines(client) -> list[bool]:
    return [D.parse_online(m.payload) for m in client.messages(ONLINE)]


def retained_status(broker: Broker) -> list[str]:
    """What a subscriber arriving now gets: the retained status."""
    late = connect_client(broker, MONITOR_USER)
    try:
        late.subscribe(STATUS)
        msg = late.expect(STATUS)
        assert msg.retain
        return D.parse_station_status(msg.payload)
    finally:
        late.close()


def led_steady_on(board, seconds: float = 1.0) -> bool:
    t0 = time.monotonic()
    time.sleep(seconds)
    return board.led("led1") and not board.changes("led1", since=t0)


# ---------------------------------------------------------------- tests

def test_boot_publishes_online_and_retained_status_then_heartbeats(station, gateway, broker):
    board = station(heartbeat_s=5)
    board.wait_serial("mqtt: connected", timeout=10)
    first = wait_status(gateway, ["free", "free"])
    assert onlines(gateway)[:1] == [True]
    assert board.rgb("rgb1") == GREEN and board.rgb("rgb2") == GREEN
    board.wait_led("led1", True)
    assert led_steady_on(board)
    assert retained_status(broker) == ["free", "free"]
    # heartbeat: the same status again after heartbeat_s
    t0 = time.monotonic()
    wait_status(gateway, ["free", "free"], timeout=8, after=first + 1)
    assert 4.0 < time.monotonic() - t0 + 1.0  # not sent twice at once
    assert sum("station: boot" in l for l in board.serial_lines()) == 1


def test_occupancy_shows_at_once_and_is_reported(station, gateway):
    board = station()
    board.wait_serial("mqtt: connected", timeout=10)
    wait_status(gateway, ["free", "free"])
    t0 = time.monotonic()
    board.press("btn1")
    board.wait_rgb("rgb1", RED, timeout=2)
    assert time.monotonic() - t0 < 0.5  # 50 ms debounce + a loop pass
    wait_status(gateway, ["occupied", "free"], timeout=2)
    board.release("btn1")
    board.wait_rgb("rgb1", GREEN, timeout=2)
    wait_status(gateway, ["free", "free"], after=1)
    board.hold("btn2", 0.02)  # a 20 ms bounce is not a car
    time.sleep(0.3)
    assert board.rgb("rgb2") == GREEN
    assert statuses(gateway)[-1] == ["free", "free"]


def test_reserve_release_and_bad_commands(station, gateway):
    board = station()
    board.wait_serial("mqtt: connected", timeout=10)
    wait_status(gateway, ["free", "free"])
    gw = gateway
    gw.publish(CMD, json.dumps(D.station_cmd("reserve", 2, "r1", 1795000720)))
    board.wait_rgb("rgb2", BLUE, timeout=2)
    wait_status(gw, ["free", "reserved"])
    # a reservation that arrives while the slot is occupied shows once it is freed
    board.press("btn1")
    board.wait_rgb("rgb1", RED, timeout=2)
    gw.publish(CMD, json.dumps(D.station_cmd("reserve", 1, "r2", 1795000720)))
    board.wait_serial("cmd applied, slot 1 occupied", timeout=2)
    assert board.rgb("rgb1") == RED
    board.release("btn1")
    board.wait_rgb("rgb1", BLUE, timeout=2)
    wait_status(gw, ["reserved", "reserved"])
    before = len(statuses(gw))
    gw.publish(CMD, json.dumps(D.station_cmd("release", 1)))
    board.wait_rgb("rgb1", GREEN, timeout=2)
    n = wait_status(gw, ["free", "reserved"], after=before) + 1
    # bad commands: one log line each, nothing changes, nothing crashes
    mark = board.mark()
    for bad in ("not json", '{"v":1,"cmd":"reserve","slot":5}', '{"v":2,"cmd":"release","slot":2}',
                '{"v":1,"cmd":"explode","slot":1}', "[1,2]"):
        gw.publish(CMD, bad)
    board.wait_until(lambda: sum("cmd ignored" in l for l in board.serial_lines(mark)) == 5, 3,
                     "five 'cmd ignored' lines")
    lines = [l for l in board.serial_lines(mark) if "cmd ignored" in l]
    assert lines[0] == "[W] station: cmd ignored: bad cmd: not JSON"
    assert lines[1] == "[W] station: cmd ignored: bad cmd: unknown slot 5 (this station has 2)"
    time.sleep(0.3)
    assert len(statuses(gw)) == n
    assert board.rgb("rgb1") == GREEN and board.rgb("rgb2") == BLUE
    assert board.running and board.boots == 1


def test_broker_outage_blinks_keeps_leds_live_and_republishes_after_restart(station, gateway, broker):
    board = station()
    board.wait_serial("mqtt: connected", timeout=10)
    wait_status(gateway, ["free", "free"])
    gateway.publish(CMD, json.dumps(D.station_cmd("reserve", 1, "r1", 1795000720)))
    wait_status(gateway, ["reserved", "free"])
    mark = board.mark()
    broker.stop()
    board.wait_serial("mqtt: connection lost", timeout=5, since=mark)
    hz = board.blink_hz("led1", 2.0)
    assert 1.5 <= hz <= 2.5, hz
    # occupancy still shows at once while the gateway is unreachable
    board.press("btn2")
    board.wait_rgb("rgb2", RED, timeout=1)
    board.press("btn1")
    board.wait_rgb("rgb1", RED, timeout=1)
    board.release("btn1")
    board.wait_rgb("rgb1", BLUE, timeout=1)  # the reserved flag survived the outage
    time.sleep(1.0)
    broker.start()
    t0 = time.monotonic()
    # the reconnect comes within the backoff: its delays doubled from 0.5 s, < 8 s by now
    board.wait_serial("mqtt: connected", timeout=20, since=mark)
    took = time.monotonic() - t0
    assert board.wait_led("led1", True, timeout=2)
    assert led_steady_on(board)
    # the latest state was published again after the reconnect (retained)
    wait_until(lambda: retained_status(broker) == ["reserved", "occupied"], 5,
               lambda: f"the retained status republished (it is {retained_status(broker)})", every=0.1)
    delays = [int(x) for x in re.findall(r"(?:next attempt|reconnect) in (\d+) ms", "\n".join(board.serial_lines(mark)))]
    assert delays and all(d < 30000 for d in delays)
    assert took < max(delays) / 1000 + 3, (took, delays)


def test_leds_and_occupancy_stay_live_while_a_connect_waits_on_a_silent_broker(station, gateway, broker):
    """The broker frozen (SIGSTOP): TCP still connects (the kernel's backlog) but no CONNACK
    comes, so every connect attempt waits its full timeout (5 s). During that wait a button
    press shows at once and the status LED keeps blinking; the status goes out once the
    broker answers again."""
    board = station()
    board.wait_serial("mqtt: connected", timeout=10)
    wait_status(gateway, ["free", "free"])
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        mark = board.mark()
        board.wifi(False)  # cut the open connection; the session reconnects through the proxy
        board.wifi(True)
        board.wait_serial("mqtt: connecting to", timeout=10, since=mark)
        t0 = time.monotonic()
        waiting = board.mark()
        time.sleep(0.3)
        board.press("btn2")
        board.wait_rgb("rgb2", RED, timeout=0.3)
        hz = board.blink_hz("led1", 2.0)
        assert 1.5 <= hz <= 2.5, hz
        # all of that happened inside one connect attempt, which then timed out (bounded)
        assert time.monotonic() - t0 < 4.5
        board.wait_serial("mqtt: connect failed: OSError 110", timeout=5, since=waiting)
        assert not any("connect failed" in ln for ln in board.serial_lines(waiting)[:-1])
        assert time.monotonic() - t0 < 5 + 1.5
    finally:
        os.kill(broker.pid, signal.SIGCONT)
    board.wait_serial("mqtt: connected", timeout=30, since=mark)
    wait_status(gateway, ["free", "occupied"], timeout=5)
    board.wait_led("led1", True, timeout=2)


def test_wifi_outage_fires_the_last_will_and_recovers(station, gateway, broker):
    board = station()
    board.wait_serial("mqtt: connected", timeout=10)
    wait_status(gateway, ["free", "free"])
    mark = board.mark()
    board.wifi(False)
    gateway.wait(lambda: onlines(gateway)[-1:] == [False], 5, lambda: f"the Last Will (onlines {onlines(gateway)})")
    # 3 s, not 1.5: at 2 Hz a short window counts 3 edges +- 1 by phase and load jitter
    assert 1.5 <= board.blink_hz("led1", 3.0) <= 2.7
    board.press("btn1")
    board.wait_rgb("rgb1", RED, timeout=1)
    board.wifi(True)
    board.wait_serial("mqtt: connected", timeout=20, since=mark)
    wait_status(gateway, ["occupied", "free"], timeout=5)
    assert onlines(gateway)[-1] is True
    board.wait_led("led1", True, timeout=2)


def test_out_of_service_survives_a_reboot(station, gateway, broker):
    board = station()
    board.wait_serial("mqtt: connected", timeout=10)
    gateway.publish(CMD, json.dumps(D.station_cmd("out_of_service", 1)))
    board.wait_rgb("rgb1", YELLOW, timeout=2)
    wait_status(gateway, ["out_of_service", "free"])
    board.press("btn1")  # a car on a broken slot: still out of service
    time.sleep(0.3)
    assert board.rgb("rgb1") == YELLOW
    board.release("btn1")
    board.reset()
    assert board.boots == 2
    board.wait_rgb("rgb1", YELLOW, timeout=5)  # before any network
    board.wait_serial("mqtt: connected", timeout=10)
    assert retained_status(broker) == ["out_of_service", "free"]
    gateway.publish(CMD, json.dumps(D.station_cmd("in_service", 1)))
    board.wait_rgb("rgb1", GREEN, timeout=2)
    wait_status(gateway, ["free", "free"])


@pytest.mark.parametrize("config, message", [
    (dict(broker={"host": "127.0.0.1", "port": "1883", "user": SID, "password": "x"}),
     "config error: broker.port must be an integer"),
    (dict(slots=[{"red": 25, "green": 26, "blue": 27, "sensor": 25}]),
     "config error: slots.1.sensor uses GPIO 25, already used by slots.1.red"),
    (dict(kind="car"), "config error: kind must be 'station' for this firmware, got 'car'"),
    ("{ not json", "config error: config.json is not valid JSON"),
    (None, "config error: config.json not found"),
])
def test_bad_config_one_clear_line_and_a_quiet_halt(station, broker, config, message):
    if isinstance(config, dict):
        config = station_config(broker, **config)
    board = station(config)
    board.wait_serial(message, timeout=10)
    time.sleep(2.0)
    assert board.running and board.boots == 1  # no crash, no reboot loop
    lines = board.serial_lines()
    assert lines == ["[I] station: boot", message], lines
    assert board.rgb("rgb1") == OFF and board.rgb("rgb2") == OFF and not board.led("led1")


def test_heap_stays_small_under_traffic(station, gateway):
    """100 commands and occupancy changes with the 96 KB heap: no MemoryError, and the free
    heap the firmware reports after each status stays well above zero."""
    board = station()
    board.wait_serial("mqtt: connected", timeout=10)
    wait_status(gateway, ["free", "free"])
    for k in range(100):
        cmd = ("reserve", "release", "out_of_service", "in_service")[k % 4]
        gateway.publish(CMD, json.dumps(D.station_cmd(cmd, 1 + k % 2)))
        if k % 10 == 0:
            board.press("btn2") if k % 20 == 0 else board.release("btn2")
        time.sleep(0.01)
    board.release("btn2")
    gateway.publish(CMD, json.dumps(D.station_cmd("in_service", 1)))
    gateway.publish(CMD, json.dumps(D.station_cmd("in_service", 2)))
    gateway.publish(CMD, json.dumps(D.station_cmd("release", 1)))
    gateway.publish(CMD, json.dumps(D.station_cmd("release", 2)))
    wait_status(gateway, ["free", "free"], after=1, timeout=10)
    text = board.serial_text()
    assert "MemoryError" not in text and "Traceback" not in text
    free = [int(x) for x in re.findall(r"heap free (\d+)", text)]
    assert len(free) > 10
    print(f"station heap: boot (emulation) {board.boot_heap} B used; free after status min "
          f"{min(free)} B, max {max(free)} B over {len(free)} statuses")
    assert min(free) > 16 * 1024
