"""The car config limits (firmware/car/car_config.py: at most 8 regions, 32 route points and
16 battery curve points) on the virtual board (real MicroPython, -X heapsize=96k) against a
real Mosquitto over TLS: a config that uses every maximum at once boots, connects and answers
`status`; one over a limit halts with one clear serial line (the safe halt state, no crash
loop). Beyond the limits the heap at boot is too fragmented to compile the big modules
(docs/firmware.md, "Memory")."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.car_board import car_config, pot_for, region_broker, virtual_board

pytestmark = pytest.mark.integration

REGIONS, POINTS, CURVE = 8, 32, 16


def maxed(port: int, regions: int = REGIONS, points: int = POINTS, curve: int = CURVE,
          ca_file: Path | None = None) -> dict:
    """A car config with every count, and the longest names and texts, at its maximum; with
    `ca_file` pinned (TLS, which the running car pays for with its TLS context)."""
    name = [f"r{i}" + "x" * 30 for i in range(regions)]  # 32 characters, the most an id has
    cfg = car_config("car-a", name[0], port, speed_kmh=30, regions=[
        {"name": n, "host": "127.0.0.1", "port": port,
         "bounds": [52.33, 13.08, 52.68, 13.77] if i == 0 else [10.0 + i, 20.0, 10.5 + i, 21.0]}
        for i, n in enumerate(name)], points=[(52.5 + j / 1000, 13.4 + j / 1000) for j in range(points)],
        ca_file=ca_file)
    cfg["battery"]["curve"] = [[300 + j * 103 / (curve - 1), j / (curve - 1)] for j in range(curve)]
    cfg["battery"]["samples"] = 31
    cfg["model"]["name"] = "M" * 64
    cfg["wifi"] = {"ssid": "S" * 32, "password": "P" * 64}
    return cfg


def test_a_car_at_every_maximum_at_once_boots_connects_and_answers_status(tmp_path):
    cfg = maxed(0)
    home = cfg["region"]
    broker = region_broker(tmp_path / "broker", home, ["car-a"])
    board = None
    try:
        board = virtual_board(tmp_path / "vb", maxed(broker.port, ca_file=broker.ca_file))
        board.set_pot("pot1", pot_for(0.6))
        board.start()
        board.wait_serial("mqtt: connected", timeout=20)
        assert board.wait_serial("car: region", timeout=1, since=0).endswith(home)
        mark = board.mark()
        board.write_serial("status\r")
        status = board.wait_serial("car-a: ", timeout=5, since=mark)
        assert "soc" in status and "online" in status, status
        assert board.boots == 1 and "MemoryError" not in board.serial_text()
    finally:
        if board is not None:
            board.stop()
        broker.stop()


@pytest.mark.parametrize("over,line", [
    ((REGIONS + 1, POINTS, CURVE), f"config error: regions length must be at most {REGIONS}, got {REGIONS + 1}"),
    ((REGIONS, POINTS + 1, CURVE), f"config error: route.points length must be at most {POINTS}, got {POINTS + 1}"),
    ((REGIONS, POINTS, CURVE + 1),
     f"config error: battery.curve length must be at most {CURVE}, got {CURVE + 1}"),
])
def test_a_car_over_a_limit_halts_with_one_clear_line(tmp_path, over, line):
    board = virtual_board(tmp_path / "vb", maxed(1883, *over))  # halts before any connect
    try:
        board.start()
        board.wait_serial(line, timeout=15, since=0)
        time.sleep(1.5)
        assert board.running and board.boots == 1  # halted: not crashed, not rebooting
        assert board.led("led1") is False  # the status LED off
        assert line in board.serial_lines() and "Traceback" not in board.serial_text()
    finally:
        board.stop()
