"""End to end: the unmodified firmware on virtual boards, a real Mosquitto (auth + ACL) and the
real gateway process.

One region "berlin" for the whole module (booting seven boards once keeps it fast):

- Mosquitto with a broker user per device (each board logs in as itself, with its own
  password from its own config.json) and the gateway user, its one listener TLS (a CA of its
  own: the boards pin it in config.json and check the server name, the gateway verifies it);
- the gateway (`python -m recarga.gateway.cli run`) with a small JSON station file: the two virtual
  stations' ids at Alexanderplatz and Gendarmenmarkt, two 22 kW slots each;
  `hold_s` 3 and `grace_s` 4, so that a car that never arrives expires in seconds (the cars
  confirm at once, so grace is what counts; a car 1-2 km away has minutes of driving added
  to its deadline, one parked at the station does not);
- two station boards (boards/station wiring: rgb1/btn1, rgb2/btn2, led1) and three car boards
  (boards/car: pot1, led1), all `micropython -X heapsize=96k` (the VirtualBoard default),
  plus two boards with a bad config.json (a car and a station) that must halt quietly.

The tests run in file order and share the region: happy path, no-show, broker restart, bad
config, and the MemoryError / traceback scan over every board's serial output at the end
(and after each test). Every wait is bounded; a failure prints the last serial lines of
every board and the end of the gateway's log.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

import pytest

from harness import ROOT
from harness.broker import Broker
from harness.services import GatewayProcess
from harness.wait import wait_until
from recarga.core.model import SlotMeta, StationMeta
from recarga.devices.provision import pinned_ca

CAR_DIR = ROOT / "boards" / "car"
STATION_DIR = ROOT / "boards" / "station"
FIRMWARE = ROOT / "firmware"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.needs_micropython,
    pytest.mark.skipif(not (ROOT / "boards" / "virtual" / "board.py").exists(), reason="no virtual board"),
]

REGION = "berlin"
AC22 = SlotMeta(22.0, False)
# Berlin-Mitte (the car board's default route passes both)
STATIONS = [
    StationMeta("st-alex", 52.52190, 13.41320, (AC22, AC22), operator="Recarga test",
                price_per_kwh=0.45, name="Alexanderplatz"),
    StationMeta("st-gendarmen", 52.51373, 13.39276, (AC22, AC22), operator="Recarga test",
                price_per_kwh=0.45, name="Gendarmenmarkt"),
]
# Each car stands still (route speed 0) at one point: car-1 at Hackescher Markt (about 1 km
# from Alexanderplatz), car-2 right at Gendarmenmarkt (no driving time: its no-show deadline is
# grace_s after it is told), car-3 at Brandenburger Tor (1-2 km from either station).
CARS = {
    "car-1": (52.52250, 13.40200),
    "car-2": (52.51373, 13.39276),
    "car-3": (52.51627, 13.37770),
}
HOLD_S, GRACE_S = 3, 4

GREEN, BLUE, RED, OFF = (0, 1, 0), (0, 0, 1), (1, 0, 0), (0, 0, 0)
COLOUR = {GREEN: "green (free)", BLUE: "blue (reserved)", RED: "red (occupied)", OFF: "off"}

# The car board's battery: pack volts = pin volts x divider, soc from the curve (config.json).
_CAR_DEFAULT = json.loads((CAR_DIR / "config.json").read_text())
_CURVE = _CAR_DEFAULT["battery"]["curve"]
_DIVIDER = _CAR_DEFAULT["battery"]["divider"]


def pot_for(soc: float) -> float:
    """The pot1 position (SIG = position x 3.3 V) that reads as `soc`."""
    for (v0, s0), (v1, s1) in pairwise(_CURVE):
        if s0 <= soc <= s1:
            return (v0 + (soc - s0) / (s1 - s0) * (v1 - v0)) / _DIVIDER / 3.3
    raise ValueError(soc)


FINE, LOW = pot_for(0.60), pot_for(0.12)


def _virtual_board():
    from boards.virtual.board import VirtualBoard

    return VirtualBoard


# ---------------------------------------------------------------- the region


class Region:
    """Broker, gateway and boards; `close()` stops every one of them by pid."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.passwords = {"gateway": "gw-e2e-pw", **{c: f"{c}-e2e-pw" for c in CARS},
                          **{s.id: f"{s.id}-e2e-pw" for s in STATIONS}}
        self.broker: Broker | None = None
        self.gw: GatewayProcess | None = None
        self.cars: dict[str, object] = {}
        self.stations: dict[str, object] = {}
        self.bad: dict[str, tuple[object, str, float]] = {}  # name: (board, expected line, started)
        self.pressed: set[tuple[str, int]] = set()

    # -- start / stop

    def start(self) -> Region:
        self.broker = Broker.launch(self.tmp / "broker", region=REGION, cars=list(CARS),
                                    stations=[s.id for s in STATIONS], passwords=self.passwords, tls=True)
        self.gw = GatewayProcess(self.tmp / "gw", REGION, self.broker.port, "gateway",
                                 self.passwords["gateway"], STATIONS, hold_s=HOLD_S, grace_s=GRACE_S,
                                 tick_s=0.2, tls_ca=self.broker.ca_file)
        self.gw.start().wait_connected()
        jobs: list[tuple[str, str, Callable[[], object]]] = []
        for s in STATIONS:
            jobs.append(("station", s.id, lambda s=s: self._board(STATION_DIR, s.id, self._station_cfg(s.id))))
        for car, pos in CARS.items():
            jobs.append(("car", car, lambda car=car, pos=pos: self._board(CAR_DIR, car, self._car_cfg(car, pos))))
        bad_station = self._station_cfg("st-bad")
        bad_station["broker"]["port"] = str(self.broker.port)
        bad_car = self._car_cfg("car-bad", CARS["car-1"])
        bad_car["thresholds"] = {"ask_below": 0.3, "clear_above": 0.2}
        bad = {"bad-station": (STATION_DIR, bad_station, "config error: broker.port must be an integer"),
               "bad-car": (CAR_DIR, bad_car, "config error: thresholds.clear_above must be above thresholds.ask_below")}
        for name, (d, cfg, _) in bad.items():
            jobs.append(("bad", name, lambda d=d, name=name, cfg=cfg: self._board(d, name, cfg)))
        errors = []
        with ThreadPoolExecutor(len(jobs)) as ex:
            futures = [(kind, name, ex.submit(fn)) for kind, name, fn in jobs]
            for kind, name, fut in futures:
                try:
                    board = fut.result()
                except Exception as e:  # noqa: BLE001 - the others are kept, so that close() stops them
                    errors.append(f"{name}: {e}")
                    continue
                if kind == "station":
                    self.stations[name] = board
                elif kind == "car":
                    self.cars[name] = board
                else:
                    self.bad[name] = (board, bad[name][2], time.monotonic())
        if errors:
            self.fail("boards did not boot: " + "; ".join(errors))
        for b in self.boards():
            self.expect(b, "mqtt: connected", 20)
        # the gateway knows both stations online with a status before anyone asks
        self.wait(lambda: all(f"station {s.id} online" in self.gw.log_text() for s in STATIONS), 10,
                  "the gateway seeing both stations online")
        return self

    def _board(self, board_dir: Path, name: str, cfg: dict):
        path = self.tmp / f"{name}.json"
        path.write_text(json.dumps(cfg, indent=1))
        kind = board_dir.name
        files = {"": FIRMWARE / kind, "lib": FIRMWARE / "lib", "config.json": path}
        board = _virtual_board()(board_dir / "diagram.json", files, name=name, heapsize="96k")
        if kind == "car":
            board.set_pot("pot1", FINE)  # before boot: the battery is fine
        try:
            board.start()
        except BaseException:
            board.stop()
            raise
        return board

    def _common(self, dev: str, base: dict) -> dict:
        cfg = json.loads(json.dumps(base))
        cfg.update(id=dev, region=REGION, log="info")
        cfg["broker"].update(host="127.0.0.1", port=self.broker.port, user=dev,
                             password=self.passwords.get(dev, "none"), keepalive=30,
                             ca=pinned_ca(self.broker.ca_file), server_name=self.broker.server_name)
        return cfg

    def _station_cfg(self, sid: str) -> dict:
        return self._common(sid, json.loads((STATION_DIR / "config.json").read_text()))

    def _car_cfg(self, car: str, pos: tuple[float, float]) -> dict:
        cfg = self._common(car, _CAR_DEFAULT)
        cfg["route"] = {"speed_kmh": 0, "loop": True, "points": [list(pos)]}
        cfg["regions"] = [{"name": REGION, "host": "127.0.0.1", "port": self.broker.port,
                           "bounds": [52.33, 13.08, 52.68, 13.77]}]
        return cfg

    def boards(self) -> list:
        return [*self.stations.values(), *self.cars.values()]

    def all_boards(self) -> list:
        return [*self.boards(), *(b for b, _, _ in self.bad.values())]

    def close(self) -> None:
        for b in self.all_boards():
            b.stop()
        if self.gw is not None:
            self.gw.stop()
        if self.broker is not None:
            self.broker.stop()

    # -- diagnostics and bounded waits

    def diag(self, lines: int = 12) -> str:
        out = []
        for b in self.all_boards():
            tail = "\n    ".join(b.serial_lines()[-lines:])
            out.append(f"--- {b.name} (pid {b.pid}, boots {b.boots}), last serial lines:\n    {tail}")
        for sid, b in self.stations.items():
            out.append(f"--- {sid} LEDs: rgb1 {b.rgb('rgb1')} rgb2 {b.rgb('rgb2')} led1 {b.led('led1')}")
        if self.gw is not None:
            log = "\n    ".join(self.gw.log_text().splitlines()[-25:])
            out.append(f"--- gateway log (last 25 lines):\n    {log}")
        return "\n".join(out)

    def fail(self, what: str) -> None:
        raise AssertionError(f"{what}\n{self.diag()}")

    def wait(self, pred: Callable[[], object], timeout: float, what: str | Callable[[], str], every: float = 0.1):
        """wait_until, failing with the diagnostics."""
        try:
            return wait_until(pred, timeout, what, every=every)
        except TimeoutError as e:
            self.fail(str(e))

    def expect(self, board, text: str, timeout: float, since: int | None = None) -> str:
        try:
            return board.wait_serial(text, timeout=timeout, since=since)
        except TimeoutError:
            self.fail(f"{board.name}: no serial line with {text!r} within {timeout} s")

    def expect_rgb(self, sid: str, slot: int, colour: tuple, timeout: float) -> None:
        b = self.stations[sid]
        try:
            b.wait_rgb(f"rgb{slot}", colour, timeout=timeout)
        except TimeoutError:
            self.fail(f"{sid} slot {slot}: LED not {COLOUR[colour]} within {timeout} s "
                      f"(it is {COLOUR.get(b.rgb(f'rgb{slot}'), b.rgb(f'rgb{slot}'))})")

    # -- the gateway's view

    def reservations(self, *args: str) -> list[dict]:
        return self.gw.reservations(*args)

    def reservation(self, rid: str) -> dict | None:
        return next((r for r in self.reservations() if r["id"] == rid), None)

    def wait_state(self, rid: str, state: str, timeout: float) -> dict:
        return self.wait(lambda: (r := self.reservation(rid)) is not None and r["state"] == state and r,
                         timeout, lambda: f"reservation {rid} in state {state!r} in the gateway's database "
                                          f"(now {self.reservation(rid)})", every=0.2)

    # -- inputs

    def press(self, sid: str, slot: int) -> None:
        self.pressed.add((sid, slot))
        self.stations[sid].press(f"btn{slot}")

    def release(self, sid: str, slot: int) -> None:
        self.pressed.discard((sid, slot))
        self.stations[sid].release(f"btn{slot}")

    def ask(self, car: str) -> tuple[str, str, int, str]:
        """Lower the car's pot; wait for its readable answer line. (line, station, slot, res id)"""
        b = self.cars[car]
        mark = b.mark()
        b.set_pot("pot1", LOW)
        self.expect(b, "battery low: soc", 5, since=mark)
        return self.answer(car, mark)

    def answer(self, car: str, since: int) -> tuple[str, str, int, str]:
        """The car's next readable answer line after line `since`: (line, station, slot, id)."""
        line = self.expect(self.cars[car], "slot reserved: station ", 15, since=since)
        m = re.search(r"slot reserved: station (\S+) slot (\d+), .* \((r\w+) held\)$", line)
        if not m:
            self.fail(f"{car}: unexpected answer line {line!r}")
        return line, m.group(1), int(m.group(2)), m.group(3)

    def views_agree(self) -> list[str]:
        """Where the station LEDs and the gateway's active reservations disagree (empty: agree).
        A pressed slot is red; else blue if the gateway holds a waiting (held/confirmed)
        reservation on it, else green; a checked-in reservation needs its slot pressed."""
        active = self.reservations("--active")
        problems = []
        for sid, b in self.stations.items():
            for slot in (1, 2):
                here = [r for r in active if r["station"] == sid and r["slot"] == slot]
                waiting = [r for r in here if r["state"] in ("held", "confirmed")]
                pressed = (sid, slot) in self.pressed
                want = RED if pressed else BLUE if waiting else GREEN
                got = b.rgb(f"rgb{slot}")
                if got != want:
                    problems.append(f"{sid} slot {slot}: LED {COLOUR.get(got, got)}, gateway says "
                                    f"{COLOUR[want]} ({[(r['id'], r['state']) for r in here]})")
                for r in here:
                    if r["state"] == "checked_in" and not pressed:
                        problems.append(f"{sid} slot {slot}: {r['id']} checked in but nobody there")
                    if r["state"] in ("held", "confirmed") and pressed and not any(
                            x["state"] == "checked_in" for x in here):
                        problems.append(f"{sid} slot {slot}: occupied, but {r['id']} is not checked in")
        return problems

    def wait_views_agree(self, timeout: float) -> None:
        last: list[str] = []

        def agree() -> bool:
            last[:] = self.views_agree()
            return not last

        self.wait(agree, timeout, lambda: f"LEDs and the gateway's view agreeing (they disagree: {last})", every=0.2)

    def no_memory_errors(self) -> None:
        for b in self.all_boards():
            text = b.serial_text()
            for bad in ("MemoryError", "Traceback", "memory allocation failed"):
                if bad in text:
                    i = text.index(bad)
                    self.fail(f"{b.name}: {bad!r} on the serial port:\n{text[max(0, i - 1500):i + 500]}")
            if b.error:
                self.fail(f"{b.name}: {b.error}")


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    r = Region(tmp_path_factory.mktemp("e2e"))
    try:
        r.start()
        yield r
    finally:
        r.close()


@pytest.fixture(autouse=True)
def _memory_checked_after_each_test(request):
    yield
    if "region" in request.fixturenames:
        request.getfixturevalue("region").no_memory_errors()


# ---------------------------------------------------------------- tests


def test_every_link_is_tls_with_the_ca_pinned(region):
    broker = region.broker
    assert broker.ca_file is not None, "the broker has no TLS listener"
    conf = broker.conf_path.read_text().splitlines()
    listeners = [line for line in conf if line.startswith("listener ")]
    assert listeners == [f"listener {broker.port} {broker.host}"], listeners  # no plain one beside it
    assert f"cafile {broker.ca_file.resolve()}" in conf and any(line.startswith("certfile ") for line in conf)
    assert f"tls_ca = {json.dumps(str(broker.ca_file))}" in region.gw.config.read_text()
    for b in region.boards():
        connects = [line for line in b.serial_lines() if "mqtt: connecting to" in line]
        assert connects and all(line.endswith(f"over TLS, server name {broker.server_name}") for line in connects), \
            f"{b.name}: {connects}"



def test_low_battery_gets_a_slot_led_reserved_check_in_and_unplug(region):
    car = region.cars["car-1"]
    time.sleep(0.3)
    assert not car.led("led1"), "car-1's status LED should be off while driving with a fine battery"
    line, sid, slot, rid = region.ask("car-1")
    assert " km, ETA " in line and " UTC, wait " in line and " EUR, hold until " in line, line
    assert sid in region.stations, line
    region.expect_rgb(sid, slot, BLUE, 5)
    r = region.wait_state(rid, "confirmed", 5)  # the car confirmed the held slot
    assert (r["car"], r["station"], r["slot"]) == ("car-1", sid, slot)
    try:
        car.wait_led("led1", True, timeout=2)  # steady on: slot held, heading there
    except TimeoutError:
        region.fail("car-1: status LED not on while heading")

    # the car arrives: the slot's occupancy button checks it in
    mark = car.mark()
    region.press(sid, slot)
    region.expect_rgb(sid, slot, RED, 1)
    region.wait_state(rid, "checked_in", 5)
    region.expect(car, f"checked in at station {sid} slot {slot}", 5, since=mark)
    # unplugged: the slot is free again, the reservation completed, the car drives on
    region.release(sid, slot)
    region.expect_rgb(sid, slot, GREEN, 5)
    region.wait_state(rid, "completed", 5)
    region.expect(car, f"unplugged: {rid} completed, driving on", 5, since=mark)
    car.set_pot("pot1", FINE)
    region.wait_views_agree(5)


def test_a_car_that_never_arrives_expires_and_the_led_turns_free(region):
    car = region.cars["car-2"]
    line, sid, slot, rid = region.ask("car-2")
    assert sid == "st-gendarmen", f"car-2 stands at Gendarmenmarkt, was sent elsewhere: {line}"
    region.expect_rgb(sid, slot, BLUE, 5)
    r = region.wait_state(rid, "confirmed", HOLD_S + 2)  # confirmed within hold_s: grace counts now
    assert r["deadline"] - r["created"] <= GRACE_S + 1, r  # no driving time: the no-show deadline is grace
    # still low when told: the car asks again at once (and may get the same slot back)
    mark = car.mark()
    t0 = time.monotonic()
    region.wait_state(rid, "expired", GRACE_S + 8)
    region.expect(car, f"reservation {rid} expired: asking again", 5, since=mark)
    car.set_pot("pot1", FINE)  # charged elsewhere meanwhile (the filtered reading lags the re-ask)
    _, sid2, slot2, rid2 = region.answer("car-2", mark)
    assert rid2 != rid
    region.expect_rgb(sid2, slot2, BLUE, 5)
    # the expired slot was released (green), even if the new reservation took it again
    seen = [v for _, v in region.stations[sid].changes(f"rgb{slot}", since=t0)]
    assert GREEN in seen, f"{sid} slot {slot} never showed free after {rid} expired: {seen}"
    # the car never arrives at the new one either; its battery is fine now: it stops asking
    mark = car.mark()
    region.wait_state(rid2, "expired", GRACE_S + 8)
    region.expect(car, f"reservation {rid2} expired: battery fine, driving on", 5, since=mark)
    region.expect_rgb(sid2, slot2, GREEN, 3)
    if (sid2, slot2) != (sid, slot):
        region.expect_rgb(sid, slot, GREEN, 1)
    time.sleep(1.0)  # and it does not ask again
    assert not [l for l in car.serial_lines(mark) if "slot reserved" in l], car.serial_lines(mark)
    assert not [r for r in region.reservations("--active") if r["car"] == "car-2"]
    region.wait_views_agree(3)


def test_broker_restart_boards_reconnect_and_views_agree(region):
    # two reservations across the restart: car-3 arrives while the broker is down, car-1 not
    car = region.cars["car-3"]
    _, sid, slot, rid = region.ask("car-3")
    region.expect_rgb(sid, slot, BLUE, 5)
    region.wait_state(rid, "confirmed", 5)
    _, sid1, slot1, rid1 = region.ask("car-1")  # a new low episode for car-1
    region.expect_rgb(sid1, slot1, BLUE, 5)
    region.wait_state(rid1, "confirmed", 5)
    region.wait_views_agree(5)
    marks = {b.name: b.mark() for b in region.boards()}

    region.broker.stop()
    for b in region.boards():
        region.expect(b, "mqtt: connection lost", 10, since=marks[b.name])
    region.press(sid, slot)  # car-3 plugs in now: the slot shows occupied at once, offline
    region.expect_rgb(sid, slot, RED, 1)
    region.expect_rgb(sid1, slot1, BLUE, 0.1)
    time.sleep(1.0)
    region.broker.start()  # the same port and persistence directory (Broker.restart's halves)
    up = time.monotonic()
    for b in region.boards():  # each within its capped backoff (30 s cap)
        region.expect(b, "mqtt: connected", max(0.1, 30 - (time.monotonic() - up)), since=marks[b.name])
    took = time.monotonic() - up
    delays = [int(x) for b in region.boards() for x in re.findall(
        r"(?:next attempt|reconnect) in (\d+) ms", "\n".join(b.serial_lines(marks[b.name])))]
    assert delays and max(delays) <= 30000, delays
    assert took <= max(delays) / 1000 + 3, f"reconnected {took:.1f} s after the broker came back; delays {delays}"
    for sid_, b in region.stations.items():
        try:
            b.wait_led("led1", True, timeout=3)  # steady on: gateway reachable again
        except TimeoutError:
            region.fail(f"{sid_}: status LED not back on after the reconnect")
    # the press made while the broker was down reached the gateway; the other one still holds
    region.wait_state(rid, "checked_in", 10)
    assert region.reservation(rid1)["state"] == "confirmed", region.reservation(rid1)
    region.wait_views_agree(10)
    print(f"all {len(region.boards())} boards reconnected {took:.1f} s after the broker came back "
          f"(backoff delays drawn: {sorted(delays)} ms)")
    # and the region works as before: unplugging completes it, the LED turns green
    region.release(sid, slot)
    region.expect_rgb(sid, slot, GREEN, 5)
    region.wait_state(rid, "completed", 10)
    # car-3 heard of its check-in (if it was back before the gateway) and of the end
    region.expect(car, f"unplugged: {rid} completed, driving on", 5, since=marks["car-3"])
    for c in ("car-1", "car-3"):
        region.cars[c].set_pot("pot1", FINE)
    region.wait_views_agree(5)


def test_bad_config_one_clear_line_and_no_crash_loop(region):
    for name, (board, message, started) in region.bad.items():
        region.expect(board, message, 10, since=0)
        left = started + 3.0 - time.monotonic()
        if left > 0:
            time.sleep(left)  # a few seconds: long enough for a reboot loop to show
        lines = board.serial_lines()
        errors = [l for l in lines if "config error" in l]
        assert board.running and board.boots == 1, f"{name}: pid {board.pid}, boots {board.boots}\n{lines}"
        assert errors == [message], f"{name}: {lines}"
        assert sum("boot" in l for l in lines) <= 1, f"{name}: repeated boot output {lines}"
        assert not any("mqtt:" in l or "wifi:" in l for l in lines), f"{name}: went on after the error {lines}"
        assert not board.led("led1"), f"{name}: status LED left on in the halt state"
        if name == "bad-station":
            assert board.rgb("rgb1") == OFF and board.rgb("rgb2") == OFF, name


def test_no_board_ran_out_of_memory(region):
    region.no_memory_errors()
    for b in region.all_boards():
        assert b.running and b.boots == 1, f"{b.name}: boots {b.boots}, running {b.running}"
