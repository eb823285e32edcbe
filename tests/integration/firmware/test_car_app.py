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
import time
from pathlib import Path

import pytest

from harness.broker import MONITOR_USER, Broker
from harness.car_board import (
    CAR,
    LIB,
    World,
    car_config,
    pot_for,
    reservations,
    uv_for,
    virtual_board,
)
from harness.clients import connect_client
from harness.process import ChildProcess
from harness.wait import wait_until
from recarga.core.model import SlotMeta, StationMeta
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

pytestmark = pytest.mark.integration

from harness import ROOT

MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
UMQTT = ROOT / "boards" / "virtual" / "vendor"  # umqtt/simple.py (frozen into ESP32 builds)

AC22 = SlotMeta(22.0, False)


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


class HostedCar(ChildProcess):
    """The car app in a micropython child process; stdin is its serial input."""

    def __init__(self, root: Path, cfg: dict, soc: float):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "config.json"
        self.config.write_text(json.dumps(cfg))
        self.ctrl = root / "ctrl"
        self.set_soc(soc)
        (root / "driver.py").write_text(DRIVER)
        super().__init__(f"car {cfg['id']}", [MICROPYTHON, "-X", "heapsize=96k", root / "driver.py", self.config,
                                              self.ctrl], root / "serial.txt", cwd=root, stdin=True,
                         env=dict(os.environ, MICROPYPATH=f".frozen:{CAR}:{LIB}:{UMQTT}"))

    def set_soc(self, soc: float) -> None:
        tmp = self.ctrl.with_suffix(".tmp")
        tmp.write_text(f"uv {uv_for(soc)}\n")
        tmp.replace(self.ctrl)

    def serial(self) -> str:
        return self.log_text()

    def wait_for(self, text: str, timeout: float = 20, after: int = 0) -> str:
        def line() -> str | None:
            out = self.serial()
            i = out.find(text, after)
            return out[i:out.find("\n", i)] if i >= 0 else None
        return wait_until(line, timeout, lambda: f"{text!r} on the car's serial:\n{self.serial()[-4000:]}",
                          self.alive)

    def heap_peak(self) -> int:
        peaks = [int(line.split()[-1]) for line in self.serial().splitlines() if line.startswith("heap peak")]
        return max(peaks) if peaks else 0


class HostedWorld(World):
    def car(self, cfg: dict, soc: float) -> HostedCar:
        car = HostedCar(self.tmp / cfg["id"], cfg, soc)
        self.cars.append(car)
        return car.start()


@pytest.fixture
def world(tmp_path):
    w = HostedWorld(tmp_path)
    try:
        yield w
    finally:
        w.close()


def test_low_battery_asks_gets_a_slot_charges_and_completes(world):
    stations = [StationMeta("st-1", 52.52, 13.40, (AC22, AC22), operator="op", price_per_kwh=0.45)]
    broker, gw = world.region("north", ["car-a"], stations)
    monitor = world.client(broker, MONITOR_USER)  # reads car telemetry beside the gateway
    monitor.subscribe(D.car_filter("north", "telemetry"))
    car = world.car(car_config("car-a", "north", broker.port, ca_file=broker.ca_file), soc=0.6)
    car.wait_for("mqtt: connected")
    time.sleep(1.0)
    assert "slot reserved" not in car.serial()

    car.set_soc(0.15)  # lower the pot: the car asks
    line = car.wait_for("slot reserved: station st-1 slot ")
    assert " km, ETA " in line and " UTC, wait " in line and " EUR, hold until " in line
    [r] = wait_until(lambda: [r for r in reservations(gw) if r["state"] == "confirmed"], what="confirmed")
    assert r["car"] == "car-a" and r["station"] == "st-1"
    st = world.station("st-1")
    cmd = json.loads(st.expect(D.station_topic("north", "st-1", "cmd")).payload)
    assert cmd["cmd"] == "reserve" and cmd["reservation"] == r["id"]

    # plug in: the station reports the slot occupied -> checked_in -> waiting, then charging
    slots = ["free", "free"]
    slots[r["slot"] - 1] = "occupied"
    st.publish(D.station_topic("north", "st-1", "status"), W.encode(D.station_status(slots)), retain=True)
    car.wait_for("checked in at station st-1")
    car.set_soc(0.3)
    car.wait_for("charging: soc")
    car.set_soc(0.82)
    car.wait_for("charged: soc")
    st.publish(D.station_topic("north", "st-1", "status"), W.encode(D.station_status(["free", "free"])), retain=True)
    car.wait_for("completed, driving on")
    assert wait_until(lambda: [r for r in reservations(gw) if r["state"] == "completed"], what="completed")

    # every message the car sent passed the gateway's validators (the gateway would have
    # replied with an error otherwise); telemetry is checked here
    def states():
        out = []
        for m in monitor.messages(D.car_topic("north", "car-a", "telemetry")):
            t = D.parse_car_telemetry(m.payload)
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
    car = world.car(car_config("car-a", "north", bn.port, regions=regions, ca_file=bn.ca_file), soc=0.6)
    car.wait_for("mqtt: connected")
    n = len(car.serial())
    car.write("pos 51.06 13.75")
    line = car.wait_for("left region north", after=n)
    assert "now in region south" in line
    assert car.wait_for("handing over to region south", after=n).endswith(f"broker 127.0.0.1:{bs.port}")
    car.wait_for("mqtt: connected", after=n)
    car.set_soc(0.12)
    line = car.wait_for("slot reserved: station st-s slot 1")
    assert wait_until(lambda: reservations(gws), what="south reservation")
    assert reservations(gwn) == []
    car.write("soc?")
    assert car.wait_for("soc: 0.1").startswith("soc: 0.1")


# ---------------------------------------------------------------- on the virtual board

def test_on_the_virtual_board_lowering_the_pot_gets_a_slot(world, tmp_path):
    stations = [StationMeta("st-1", 52.52, 13.40, (AC22, AC22), operator="op", price_per_kwh=0.45)]
    broker, gw = world.region("north", ["car-a"], stations)
    board = virtual_board(tmp_path, car_config("car-a", "north", broker.port, ca_file=broker.ca_file))
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
    board = virtual_board(tmp_path, car_config("car-a", "north", broker.port, ca_file=broker.ca_file))
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
                      passwords={"gateway": "gw-pw", "car-a": "car-a-pw"}, tls=True)
    gw = connect_client(b, "gateway")
    board = None
    try:
        received = [0]
        reply_topic = D.car_topic("north", "car-a", "reply")

        def on_request(client, userdata, msg):
            req = D.parse_car_request("car-a", msg.payload)  # the contract, on every request
            n = received[0] = received[0] + 1
            res = {"id": f"r{n}", "station": "st-1", "slot": 1, "state": "held", "distance_km": 1.2,
                   "eta": 1795000000 + n, "wait_min": 0, "charge_min": 30, "energy_kwh": 30, "power_kw": 11,
                   "price_eur": 14.7, "hold_until": 1795000120 + n}
            if req.op == "reserve":
                client.publish(reply_topic, W.encode(D.ok_reply(req.rid, "reserve", res)), qos=1)
            elif req.op == "confirm":
                res.update(id=req.fields["reservation"], state="confirmed")
                client.publish(reply_topic, W.encode(D.ok_reply(req.rid, "confirm", res)), qos=1)
                res["state"] = "expired"
                client.publish(reply_topic, W.encode(D.car_event("expired", res)), qos=1)

        gw.paho.message_callback_add(D.car_topic("north", "car-a", "request"), on_request)
        gw.subscribe(D.car_topic("north", "car-a", "request"))
        (tmp_path / "vb").mkdir()
        board = virtual_board(tmp_path / "vb", car_config("car-a", "north", b.port, telemetry_s=3600, ca_file=b.ca_file))
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
                      passwords={"gateway": "gw-pw", "car-a": "car-a-pw"}, tls=True)
    gw = connect_client(b, "gateway")
    board = None
    try:
        req_t, reply_t = (D.car_topic("north", "car-a", leaf) for leaf in ("request", "reply"))
        online_t = D.car_topic("north", "car-a", "online")
        gw.subscribe(req_t)
        gw.subscribe(online_t)
        (tmp_path / "vb").mkdir()
        board = virtual_board(tmp_path / "vb", car_config("car-a", "north", b.port, telemetry_s=3600, ca_file=b.ca_file))
        board.set_pot("pot1", pot_for(0.6))
        board.start()
        board.wait_serial("mqtt: connected", timeout=15)
        board.set_pot("pot1", pot_for(0.15))
        req = D.parse_car_request("car-a", gw.expect(req_t, timeout=10).payload)
        assert req.op == "reserve"
        board.wifi(False)  # the car is away; the broker sees it go (its Last Will)
        wait_until(lambda: [D.parse_online(m.payload) for m in gw.messages(online_t)][-1:] == [False],
                   timeout=5, what="the car's Last Will")
        res = {"id": "r1", "station": "st-1", "slot": 2, "state": "held", "distance_km": 1.2, "eta": 1795000000,
               "wait_min": 0, "charge_min": 30, "energy_kwh": 30, "power_kw": 11, "price_eur": 14.7,
               "hold_until": 1795000120}
        gw.publish(reply_t, W.encode(D.ok_reply(req.rid, "reserve", res)), qos=1)
        offer = dict(res, id="r2", slot=1)
        gw.publish(reply_t, W.encode(D.car_event("faulted", dict(res, state="faulted"), offer=offer)), qos=1)
        mark = board.mark()
        board.wifi(True)
        board.wait_serial("slot reserved: station st-1 slot 2", timeout=15, since=mark)
        board.wait_serial("slot out of service: taking the offered one", timeout=5, since=mark)
        board.wait_serial("slot reserved: station st-1 slot 1", timeout=5, since=mark)
        confirms = lambda: [r for r in (D.parse_car_request("car-a", m.payload) for m in gw.messages(req_t))
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
                      passwords={"gateway": "gw-pw", "car-a": "car-a-pw"}, tls=True)
    board = None
    os.kill(b.pid, signal.SIGSTOP)
    try:
        (tmp_path / "vb").mkdir()
        board = virtual_board(tmp_path / "vb", car_config("car-a", "north", b.port, ca_file=b.ca_file))
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
