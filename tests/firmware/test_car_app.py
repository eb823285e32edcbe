"""The car app (firmware/car/car_app.py + firmware/lib) on the real MicroPython unix port with a
96 KB heap, against a real Mosquitto (auth + ACL) and the real gateway process.

Two ways to run the board: "hosted" (car_boot.boot with small stand-ins for the hardware objects,
defined in the driver script: an ADC whose reading the test sets through a control file, an
LED, a WLAN that is always up; stdin is the serial console) and on the virtual board
(boards/virtual: the unmodified firmware booted from its flash directory, emulated machine /
network, a pot on GPIO 34 and an LED on GPIO 2). The sockets, umqtt.simple, the broker and
the gateway are the real thing in both.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brokers import Broker, MqttClient, connect_client
from gateway import protocol as P
from gateway.model import SlotMeta, StationMeta
from gateway_proc import GatewayProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
CAR = ROOT / "firmware" / "car"
LIB = ROOT / "firmware" / "lib"
UMQTT = ROOT / "boards" / "virtual" / "vendor"  # umqtt/simple.py (frozen into ESP32 builds)

CURVE = [[300, 0.0], [345, 0.1], [360, 0.3], [372, 0.5], [388, 0.8], [403, 1.0]]
DIVIDER = 130.0
AC22 = SlotMeta(22.0, False)


def uv_for(soc: float) -> int:
    """The pin microvolts that give `soc` through CURVE and DIVIDER."""
    for (v0, s0), (v1, s1) in zip(CURVE, CURVE[1:]):
        if s0 <= soc <= s1:
            return round((v0 + (soc - s0) / (s1 - s0) * (v1 - v0)) / DIVIDER * 1e6)
    raise ValueError(soc)


def car_config(car: str, region: str, port: int, *, regions: list[dict] | None = None,
               points=((52.521, 13.401),), speed_kmh=0, telemetry_s=5) -> dict:
    return {
        "kind": "car", "id": car, "region": region,
        "wifi": {"ssid": "recarga", "password": "pw"},
        "broker": {"host": "127.0.0.1", "port": port, "user": car, "password": f"{car}-pw", "keepalive": 10},
        "log": "info",
        "pins": {"battery_adc": 34, "status_led": 2},
        "battery": {"divider": DIVIDER, "samples": 3, "curve": CURVE},
        "thresholds": {"ask_below": 0.20, "clear_above": 0.25},
        "model": {"name": "Volkswagen ID.3 58 kWh", "battery_kwh": 58.0, "consumption_kwh_100km": 16.6,
                  "max_ac_kw": 11.0, "max_dc_kw": 100.0, "target_soc": 0.8},
        "route": {"speed_kmh": speed_kmh, "loop": True, "points": [list(p) for p in points]},
        "regions": regions or [{"name": region, "host": "127.0.0.1", "port": port,
                                "bounds": [52.33, 13.08, 52.68, 13.77]}],
        "telemetry_s": telemetry_s,
    }


DRIVER = r"""
import sys, time, gc
import car_boot

CTRL = sys.argv[2]

class Adc:
    uv = 0
    def read_uv(self):
        return self.uv

class Led:
    level = 0
    def value(self, v=None):
        if v is None:
            return self.level
        if v != self.level:
            self.level = v

class Wlan:
    def active(self, on=None):
        return True
    def connect(self, ssid, password):
        pass
    def disconnect(self):
        pass
    def isconnected(self):
        return True

def control(adc, app):
    # the test's knobs: "uv <n>" sets the ADC; "cmd <line>" is a serial command line
    try:
        f = open(CTRL)
        lines = f.read().split("\n")
        f.close()
    except OSError:
        return 0
    for ln in lines:
        if ln.startswith("uv "):
            adc.uv = int(ln[3:])
    return len(lines)

adc = Adc()
control(adc, None)
led = Led()
app = car_boot.boot(sys.argv[1], (adc, led, Wlan(), "t%d" % (time.ticks_ms() % 1000)))
gc.collect()
peak = 0
last_ctrl = time.ticks_ms()
while True:
    now = time.ticks_ms()
    if time.ticks_diff(now, last_ctrl) >= 100:
        last_ctrl = now
        control(adc, app)
        a = gc.mem_alloc()
        if a > peak:
            peak = a
            print("heap peak", peak)
    app.step(now)
    time.sleep_ms(20)
"""


class HostedCar:
    """The car app in a micropython child process; stdin is its serial input."""

    def __init__(self, root: Path, cfg: dict, soc: float):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "config.json"
        self.config.write_text(json.dumps(cfg))
        self.ctrl = root / "ctrl"
        self.set_soc(soc)
        (root / "driver.py").write_text(DRIVER)
        self.out_path = root / "serial.txt"
        self.proc: subprocess.Popen | None = None

    def set_soc(self, soc: float) -> None:
        tmp = self.ctrl.with_suffix(".tmp")
        tmp.write_text(f"uv {uv_for(soc)}\n")
        tmp.replace(self.ctrl)

    def start(self) -> "HostedCar":
        env = dict(os.environ, MICROPYPATH=f".frozen:{CAR}:{LIB}:{UMQTT}")
        self._out = open(self.out_path, "wb")
        self.proc = subprocess.Popen([str(MICROPYTHON), "-X", "heapsize=96k", str(self.root / "driver.py"),
                                      str(self.config), str(self.ctrl)], stdin=subprocess.PIPE,
                                     stdout=self._out, stderr=subprocess.STDOUT, env=env, cwd=self.root)
        return self

    def serial(self) -> str:
        return self.out_path.read_text(errors="replace")

    def write(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def wait_for(self, text: str, timeout: float = 20, after: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.serial()
            i = out.find(text, after)
            if i >= 0:
                return out[i:out.find("\n", i)]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not on the car's serial within {timeout}s:\n{self.serial()[-4000:]}")

    def heap_peak(self) -> int:
        peaks = [int(line.split()[-1]) for line in self.serial().splitlines() if line.startswith("heap peak")]
        return max(peaks) if peaks else 0

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.proc and self.proc.stdin:
            self.proc.stdin.close()
        if getattr(self, "_out", None):
            self._out.close()


class World:
    """Regions (broker + gateway + paho station clients) and hosted cars; all stopped at the end."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.brokers: list[Broker] = []
        self.gateways: list[GatewayProcess] = []
        self.clients: list[MqttClient] = []
        self.cars: list[HostedCar] = []

    def region(self, name: str, cars: list[str], stations: list[StationMeta]) -> tuple[Broker, GatewayProcess]:
        passwords = {"gateway": "gw-pw", **{c: f"{c}-pw" for c in cars}, **{s.id: f"{s.id}-pw" for s in stations}}
        b = Broker.launch(self.tmp / name / "broker", region=name, cars=cars, stations=[s.id for s in stations],
                          passwords=passwords)
        self.brokers.append(b)
        for s in stations:
            c = connect_client(b, s.id)
            self.clients.append(c)
            c.subscribe(P.station_topic(name, s.id, "cmd"))
            c.publish(P.station_topic(name, s.id, "online"), P.online_message(True), retain=True)
            c.publish(P.station_topic(name, s.id, "status"), P.encode(P.station_status(["free"] * len(s.slots))),
                      retain=True)
        gw = GatewayProcess(self.tmp / name / "gw", name, b.port, "gateway", "gw-pw", stations, hold_s=60, grace_s=300)
        self.gateways.append(gw)
        gw.start().wait_connected()
        return b, gw

    def client(self, broker: Broker, user: str) -> MqttClient:
        c = connect_client(broker, user)
        self.clients.append(c)
        return c

    def station(self, sid: str) -> MqttClient:
        return next(c for c in self.clients if c.username == sid)

    def car(self, cfg: dict, soc: float) -> HostedCar:
        car = HostedCar(self.tmp / cfg["id"], cfg, soc)
        self.cars.append(car)
        return car.start()

    def close(self) -> None:
        for car in self.cars:
            car.stop()
        for c in self.clients:
            c.close()
        for gw in self.gateways:
            gw.stop()
        for b in self.brokers:
            b.stop()


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.close()


def reservations(gw: GatewayProcess) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "reservations", "--config", str(gw.config), "--json"],
                         capture_output=True, text=True, timeout=30, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def wait_until(pred, timeout: float = 15, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout}s")


def test_low_battery_asks_gets_a_slot_charges_and_completes(world):
    stations = [StationMeta("st-1", 52.52, 13.40, (AC22, AC22), operator="op", price_per_kwh=0.45)]
    broker, gw = world.region("north", ["car-a"], stations)
    monitor = world.client(broker, "gateway")  # may read car telemetry
    monitor.subscribe(P.car_filter("north", "telemetry"))
    car = world.car(car_config("car-a", "north", broker.port), soc=0.6)
    car.wait_for("mqtt: connected")
    time.sleep(1.0)
    assert "slot reserved" not in car.serial()

    car.set_soc(0.15)  # lower the pot: the car asks
    line = car.wait_for("slot reserved: station st-1 slot ")
    assert " km, ETA " in line and " UTC, wait " in line and " EUR, hold until " in line
    [r] = wait_until(lambda: [r for r in reservations(gw) if r["state"] == "confirmed"], what="confirmed")
    assert r["car"] == "car-a" and r["station"] == "st-1"
    st = world.station("st-1")
    cmd = json.loads(st.expect(P.station_topic("north", "st-1", "cmd")).payload)
    assert cmd["cmd"] == "reserve" and cmd["reservation"] == r["id"]

    # plug in: the station reports the slot occupied -> checked_in -> waiting, then charging
    slots = ["free", "free"]
    slots[r["slot"] - 1] = "occupied"
    st.publish(P.station_topic("north", "st-1", "status"), P.encode(P.station_status(slots)), retain=True)
    car.wait_for("checked in at station st-1")
    car.set_soc(0.3)
    car.wait_for("charging: soc")
    car.set_soc(0.82)
    car.wait_for("charged: soc")
    st.publish(P.station_topic("north", "st-1", "status"), P.encode(P.station_status(["free", "free"])), retain=True)
    car.wait_for("completed, driving on")
    assert wait_until(lambda: [r for r in reservations(gw) if r["state"] == "completed"], what="completed")

    # every message the car sent passed the gateway's validators (the gateway would have
    # replied with an error otherwise); telemetry is checked here
    def states():
        out = []
        for m in monitor.messages(P.car_topic("north", "car-a", "telemetry")):
            t = P.parse_car_telemetry(m.payload)
            if not out or out[-1] != t["state"]:
                out.append(t["state"])
        return out
    wait_until(lambda: states()[-1:] == ["driving"], what="telemetry driving")
    assert states() == ["driving", "low", "heading", "waiting", "charging", "done", "driving"]
    assert "request refused" not in car.serial() and "Traceback" not in car.serial()
    assert car.heap_peak() < 96 * 1024
    print("car heap peak", car.heap_peak())


def test_region_hand_over_on_serial_position(world):
    north_st = [StationMeta("st-n", 52.52, 13.40, (AC22,), operator="op")]
    south_st = [StationMeta("st-s", 51.05, 13.74, (AC22,), operator="op")]
    bn, gwn = world.region("north", ["car-a"], north_st)
    bs, gws = world.region("south", ["car-a"], south_st)
    regions = [{"name": "north", "host": "127.0.0.1", "port": bn.port, "bounds": [52.0, 13.0, 53.0, 14.0]},
               {"name": "south", "host": "127.0.0.1", "port": bs.port, "bounds": [50.5, 13.0, 51.5, 14.5]}]
    car = world.car(car_config("car-a", "north", bn.port, regions=regions), soc=0.6)
    car.wait_for("mqtt: connected")
    n = len(car.serial())
    car.write("pos 51.06 13.75")
    line = car.wait_for("left region north", after=n)
    assert "now in region south" in line and f"127.0.0.1:{bs.port}" in line
    car.wait_for("mqtt: connected", after=n)
    car.set_soc(0.12)
    line = car.wait_for("slot reserved: station st-s slot 1")
    assert wait_until(lambda: reservations(gws), what="south reservation")
    assert reservations(gwn) == []
    car.write("soc?")
    assert car.wait_for("soc: 0.1").startswith("soc: 0.1")


# ---------------------------------------------------------------- on the virtual board

BOARD_DIAGRAM = ROOT / "boards" / "car" / "diagram.json"
# The car board of docs/firmware.md, for when boards/car/diagram.json is not there (yet):
# pot1's wiper on GPIO 34, led1 (through r1) on GPIO 2.
FALLBACK_DIAGRAM = {
    "version": 1, "author": "recarga tests", "editor": "wokwi",
    "parts": [
        {"type": "board-esp32-devkit-c-v4", "id": "esp", "top": 0, "left": 0, "attrs": {}},
        {"type": "wokwi-potentiometer", "id": "pot1", "top": 0, "left": 200, "attrs": {}},
        {"type": "wokwi-led", "id": "led1", "top": 100, "left": 200, "attrs": {"color": "red"}},
        {"type": "wokwi-resistor", "id": "r1", "top": 100, "left": 150, "attrs": {"value": "220"}},
    ],
    "connections": [
        ["esp:TX", "$serialMonitor:RX", "", []], ["esp:RX", "$serialMonitor:TX", "", []],
        ["pot1:VCC", "esp:3V3", "red", []], ["pot1:GND", "esp:GND.1", "black", []],
        ["pot1:SIG", "esp:34", "green", []],
        ["esp:2", "r1:1", "green", []], ["r1:2", "led1:A", "green", []], ["led1:C", "esp:GND.2", "black", []],
    ],
}


def pot_for(soc: float) -> float:
    """The pot position (SIG = position x 3.3 V) that gives `soc`."""
    return uv_for(soc) / 3.3e6


def virtual_board(tmp: Path, cfg: dict):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from boards.virtual.board import VirtualBoard

    diagram = BOARD_DIAGRAM
    if not diagram.exists():
        diagram = tmp / "diagram.json"
        diagram.write_text(json.dumps(FALLBACK_DIAGRAM))
    (tmp / "config.json").write_text(json.dumps(cfg))
    return VirtualBoard(diagram, {"": CAR, "lib": LIB, "config.json": tmp / "config.json"}, name=cfg["id"])


def test_on_the_virtual_board_lowering_the_pot_gets_a_slot(world, tmp_path):
    stations = [StationMeta("st-1", 52.52, 13.40, (AC22, AC22), operator="op", price_per_kwh=0.45)]
    broker, gw = world.region("north", ["car-a"], stations)
    board = virtual_board(tmp_path, car_config("car-a", "north", broker.port))
    try:
        board.set_pot("pot1", pot_for(0.6))  # before power-on: the battery is fine at boot
        board.start()
        board.wait_serial("mqtt: connected", timeout=15)
        time.sleep(0.5)
        assert not board.led("led1") and not board.changes("led1")[1:]  # off: driving, fine
        board.set_pot("pot1", pot_for(0.15))
        board.wait_serial("battery low: soc 15 %", timeout=5)
        line = board.wait_serial("slot reserved: station st-1 slot ", timeout=15)
        assert " km, ETA " in line and " UTC, wait " in line and " EUR, hold until " in line
        [r] = wait_until(lambda: [r for r in reservations(gw) if r["state"] == "confirmed"], what="confirmed")
        assert r["car"] == "car-a"
        board.wait_led("led1", True, timeout=5)
        assert board.blink_hz("led1", 1.0) == 0 and board.led("led1")  # steady on: heading
        board.write_serial("status\r")
        status = board.wait_serial("car-a: heading", timeout=5)
        used = int(status.split("heap ")[1].split()[0])
        print("virtual board: boot heap", board.boot_heap, "bytes; in use while heading", used, "bytes")
        assert used < 96 * 1024
        assert "Traceback" not in board.serial_text() and "MemoryError" not in board.serial_text()
    finally:
        board.stop()


def test_on_the_virtual_board_asking_blinks_slowly(world, tmp_path):
    # a broker but no gateway: the request goes out, no answer for the reply timeout (10 s)
    stations = [StationMeta("st-1", 52.52, 13.40, (AC22,), operator="op")]
    broker, gw = world.region("north", ["car-a"], stations)
    gw.stop()
    board = virtual_board(tmp_path, car_config("car-a", "north", broker.port))
    try:
        board.set_pot("pot1", pot_for(0.6))
        board.start()
        board.wait_serial("mqtt: connected", timeout=15)
        board.set_pot("pot1", pot_for(0.15))
        board.wait_serial("battery low", timeout=5)
        hz = board.blink_hz("led1", 3.0)
        assert 0.6 <= hz <= 1.4, hz  # 1 Hz: low, asking
        board.wait_serial("no reply to car-a-", timeout=12)
        hz = board.blink_hz("led1", 2.0)
        assert 3.5 <= hz <= 5.5, hz  # 5 Hz: no answer
    finally:
        board.stop()


def test_on_the_virtual_board_offline_and_low_blinks_fast(tmp_path):
    # no broker at all: the car cannot get an answer -> 5 Hz
    board = virtual_board(tmp_path, car_config("car-a", "north", 1))
    try:
        board.start()
        board.set_pot("pot1", pot_for(0.15))
        board.wait_serial("battery low", timeout=10)
        hz = board.blink_hz("led1", 2.0)
        assert 3.5 <= hz <= 5.5, hz
    finally:
        board.stop()


def test_on_the_virtual_board_many_messages_without_heap_drift(tmp_path):
    """A scripted gateway (paho, the gateway's broker user) answers every request at once:
    reserve -> held, confirm -> confirmed, then `expired`, which makes the car ask again.
    Three messages to the car per cycle; the live heap after 400 must be where it was after
    the first 100 (bench/ runs the long version)."""
    b = Broker.launch(tmp_path / "broker", region="north", cars=["car-a"], stations=[],
                      passwords={"gateway": "gw-pw", "car-a": "car-a-pw"})
    gw = connect_client(b, "gateway")
    board = None
    try:
        received = [0]
        reply_topic = P.car_topic("north", "car-a", "reply")

        def on_request(client, userdata, msg):
            req = P.parse_car_request("car-a", msg.payload)  # the contract, on every request
            n = received[0] = received[0] + 1
            res = {"id": f"r{n}", "station": "st-1", "slot": 1, "state": "held", "distance_km": 1.2,
                   "eta": 1795000000 + n, "wait_min": 0, "charge_min": 30, "energy_kwh": 30, "power_kw": 11,
                   "price_eur": 14.7, "hold_until": 1795000120 + n}
            if req.op == "reserve":
                client.publish(reply_topic, P.encode(P.ok_reply(req.rid, "reserve", res)), qos=1)
            elif req.op == "confirm":
                res.update(id=req.fields["reservation"], state="confirmed")
                client.publish(reply_topic, P.encode(P.ok_reply(req.rid, "confirm", res)), qos=1)
                res["state"] = "expired"
                client.publish(reply_topic, P.encode(P.car_event("expired", res)), qos=1)

        gw.paho.message_callback_add(P.car_topic("north", "car-a", "request"), on_request)
        gw.subscribe(P.car_topic("north", "car-a", "request"))
        (tmp_path / "vb").mkdir()
        board = virtual_board(tmp_path / "vb", car_config("car-a", "north", b.port, telemetry_s=3600))
        board.set_pot("pot1", pot_for(0.15))
        board.start()

        def heap_at(n_msgs: int) -> int:
            wait_until(lambda: received[0] * 3 // 2 >= n_msgs, timeout=120, what=f"{n_msgs} messages")
            mark = board.mark()
            board.write_serial("status\r")
            line = board.wait_serial(", heap ", timeout=5, since=mark)
            return int(line.split("heap ")[1].split()[0])

        warm = heap_at(100)
        end = heap_at(400)
        print(f"virtual board car: live heap {warm} B after 100 messages, {end} B after 400 "
              f"(drift {end - warm:+d} B, boot heap {board.boot_heap} B)")
        text = board.serial_text()
        assert "MemoryError" not in text and "Traceback" not in text
        assert end - warm < 1024
    finally:
        if board is not None:
            board.stop()
        gw.close()
        b.stop()


def test_on_the_virtual_board_what_the_gateway_sends_while_the_car_is_away_arrives(tmp_path):
    """The car's MQTT session is persistent (clean_session false, its id as client id), so
    the broker keeps the QoS 1 replies and events the gateway sends while the car is away (here
    Wi-Fi off: the connection is cut) and delivers them when it is back: the reply to its
    reserve, then a faulted event with an offer for the slot it took."""
    b = Broker.launch(tmp_path / "broker", region="north", cars=["car-a"], stations=[],
                      passwords={"gateway": "gw-pw", "car-a": "car-a-pw"})
    gw = connect_client(b, "gateway")
    board = None
    try:
        req_t, reply_t = (P.car_topic("north", "car-a", leaf) for leaf in ("request", "reply"))
        online_t = P.car_topic("north", "car-a", "online")
        gw.subscribe(req_t)
        gw.subscribe(online_t)
        (tmp_path / "vb").mkdir()
        board = virtual_board(tmp_path / "vb", car_config("car-a", "north", b.port, telemetry_s=3600))
        board.set_pot("pot1", pot_for(0.6))
        board.start()
        board.wait_serial("mqtt: connected", timeout=15)
        board.set_pot("pot1", pot_for(0.15))
        req = P.parse_car_request("car-a", gw.expect(req_t, timeout=10).payload)
        assert req.op == "reserve"
        board.wifi(False)  # the car is away; the broker sees it go (its Last Will)
        wait_until(lambda: [P.parse_online(m.payload) for m in gw.messages(online_t)][-1:] == [False],
                   timeout=5, what="the car's Last Will")
        res = {"id": "r1", "station": "st-1", "slot": 2, "state": "held", "distance_km": 1.2, "eta": 1795000000,
               "wait_min": 0, "charge_min": 30, "energy_kwh": 30, "power_kw": 11, "price_eur": 14.7,
               "hold_until": 1795000120}
        gw.publish(reply_t, P.encode(P.ok_reply(req.rid, "reserve", res)), qos=1)
        offer = dict(res, id="r2", slot=1)
        gw.publish(reply_t, P.encode(P.car_event("faulted", dict(res, state="faulted"), offer=offer)), qos=1)
        mark = board.mark()
        board.wifi(True)
        board.wait_serial("slot reserved: station st-1 slot 2", timeout=15, since=mark)
        board.wait_serial("slot out of service: taking the offered one", timeout=5, since=mark)
        board.wait_serial("slot reserved: station st-1 slot 1", timeout=5, since=mark)
        confirms = lambda: [r for r in (P.parse_car_request("car-a", m.payload) for m in gw.messages(req_t))
                            if r.op == "confirm"]
        wait_until(lambda: any(r.fields["reservation"] == "r2" for r in confirms()), timeout=10,
                   what="a confirm of the offered slot")
        text = board.serial_text()
        assert "MemoryError" not in text and "Traceback" not in text
    finally:
        if board is not None:
            board.stop()
        gw.close()
        b.stop()


def test_on_the_virtual_board_the_led_keeps_blinking_while_a_connect_waits(tmp_path):
    """A frozen broker (SIGSTOP) takes the TCP connection but never answers CONNECT: the
    connect attempt waits its timeout (5 s). The status LED keeps its pattern meanwhile (low
    and offline: 5 Hz) instead of freezing with the loop."""
    b = Broker.launch(tmp_path / "broker", region="north", cars=["car-a"], stations=[],
                      passwords={"gateway": "gw-pw", "car-a": "car-a-pw"})
    board = None
    os.kill(b.pid, signal.SIGSTOP)
    try:
        (tmp_path / "vb").mkdir()
        board = virtual_board(tmp_path / "vb", car_config("car-a", "north", b.port))
        board.set_pot("pot1", pot_for(0.15))
        board.start()
        board.wait_serial("battery low", timeout=15)
        mark = board.mark()
        board.wait_serial("mqtt: connecting to", timeout=15, since=mark)
        t0 = time.monotonic()
        hz = board.blink_hz("led1", 2.0)
        assert time.monotonic() - t0 < 4.5  # measured inside the one attempt
        assert not any("connect failed" in ln for ln in board.serial_lines(mark)), board.serial_lines(mark)
        assert 3.5 <= hz <= 5.5, hz
        board.wait_serial("mqtt: connect failed: OSError 110", timeout=5, since=mark)
    finally:
        os.kill(b.pid, signal.SIGCONT)
        if board is not None:
            board.stop()
        b.stop()
