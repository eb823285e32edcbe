"""The virtual-board act: the unmodified firmware on virtual boards, against the same broker and
gateway as the rest of the demo.

Two station boards for real stations of the Berlin register near Alexanderplatz (both with two
charging points, as the station board has two slots: boards/station/diagram.json) and three
car boards with real models from Open EV Data run firmware/station and firmware/car on the
MicroPython unix port (boards/virtual: emulated machine and network, wired as the boards'
diagram.json). Each logs in as its own broker user with its own config.json (written to the
run directory), over TLS: the config pins the demo's CA and names the server the broker's
certificate must carry, as `recarga-device provision` writes it. The act turns the car
boards' potentiometers (the battery, read through the ADC), presses the station boards'
occupancy buttons, and prints what comes back on its own:
every serial line of every board, every change of a slot LED and of the status LEDs as the
virtual board reads them, and the gateway's log lines about these boards. The gateway's
database is checked after each step.

The act runs before the scripted scenes, with only the boards' stations online; the boards
are switched off (stopped by pid) at its end, so the scripted scenes cannot be given their
slots.
"""
from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demo.actors import DemoError, EvModel, Timeline, load_ev_model, slots_summary
from harness import ROOT
from harness.wait import wait_until
from recarga.devices.provision import pinned_ca

if TYPE_CHECKING:
    from boards.virtual.board import VirtualBoard
    from demo.run import Demo
    from harness.broker import Broker
    from recarga.core.model import StationMeta

STATION_DIR = ROOT / "boards" / "station"
CAR_DIR = ROOT / "boards" / "car"
FIRMWARE = ROOT / "firmware"

# Near Alexanderplatz, two charging points each (Ladeeinrichtungs-ID of the register); none of
# them is one of the scripted scenes' stations.
STATIONS = (
    "1017746",  # Berliner Stadtwerke, Karl-Liebknecht-Str. 29: 2 x 11 kW AC
    "1017480",  # Berliner Stadtwerke, Littenstr. 15: 2 x 22 kW AC
)


@dataclass(frozen=True)
class CarSpec:
    cid: str
    model: tuple[str, str, str]  # brand, model, variant in data/ev_models_open_ev_data.json
    where: str
    lat: float
    lon: float


# All three draw at most 11 kW AC, so both stations charge them equally fast and the nearest
# free slot wins.
CARS = (
    CarSpec("ev6-1", ("Kia", "EV6", "Long Range 2WD"), "Rosa-Luxemburg-Platz", 52.52710, 13.41040),
    # parked right at 1017480 (the register's position): no driving time, so its no-show
    # deadline is grace_s after it is told
    CarSpec("mini-1", ("Mini", "Cooper SE", ""), "Littenstr. 15, parked at the station", 52.518791, 13.413188),
    CarSpec("leaf-1", ("Nissan", "Leaf", "e+ 62 kWh"), "Alexanderplatz", 52.52190, 13.41320),
)

# The car board's battery (boards/car/config.json): pack volts = pin volts x divider, state of
# charge from the curve; pot1's SIG is position x 3.3 V.
CAR_DEFAULT = json.loads((CAR_DIR / "config.json").read_text())
_STATION_DEFAULT = json.loads((STATION_DIR / "config.json").read_text())
_CURVE = CAR_DEFAULT["battery"]["curve"]
_DIVIDER = CAR_DEFAULT["battery"]["divider"]

FINE, LOW, CHARGING, CHARGED = 0.60, 0.12, 0.45, 0.85  # states of charge the act sets

COLOURS = {(0, 1, 0): "green (free)", (0, 0, 1): "blue (reserved)", (1, 0, 0): "red (occupied)",
           (1, 1, 0): "yellow (out of service)", (0, 0, 0): "off"}
GREEN, BLUE, RED = (0, 1, 0), (0, 0, 1), (1, 0, 0)

# serial lines of the boot not worth a line in the timeline (the TLS connect line is shown)
_BOOT_NOISE = re.compile(r"wifi: connect|mqtt: connecting to \S+ \d+$|station: boot$|car: region ")
_TLS_CONNECT = "over TLS, server name "  # the firmware's connect line, when config.json pins a CA
_GATEWAY_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) recarga\.\w+: (?P<msg>.*)$")


def pot_for(soc: float) -> float:
    """The pot1 position that the car board reads as `soc`."""
    for (v0, s0), (v1, s1) in pairwise(_CURVE):
        if s0 <= soc <= s1:
            return (v0 + (soc - s0) / (s1 - s0) * (v1 - v0)) / _DIVIDER / 3.3
    raise ValueError(f"soc {soc} is outside the battery curve")


def pin_broker(broker_cfg: dict[str, Any], broker: Broker) -> None:
    """config.json's `broker` entry for `broker`: its address, and for a TLS broker its CA
    pinned (recarga.devices.provision.pinned_ca) and the name its certificate carries."""
    broker_cfg.update(host=broker.host, port=broker.port)
    if broker.ca_file is not None:
        broker_cfg.update(ca=pinned_ca(broker.ca_file), server_name=broker.server_name)


def tls_problems(b: Board) -> list[str]:
    """What is wrong with the board's connects for a TLS broker: none, or one not over TLS."""
    connects = [ln for ln in b.vb.serial_lines() if "mqtt: connecting to" in ln]
    if not connects:
        return [f"{b.who} never connected"]
    return [f"{b.who}: {ln!r}" for ln in connects if _TLS_CONNECT not in ln]


def _virtual_board_class():
    from boards.virtual.board import VirtualBoard

    return VirtualBoard


# ---------------------------------------------------------------- one board

class Board:
    """A virtual board of the act and what the watcher has printed of it."""

    def __init__(self, kind: str, name: str, config: Path):
        self.kind, self.name, self.config = kind, name, config
        self.who = f"{kind} {name}"
        diagram = (STATION_DIR if kind == "station" else CAR_DIR) / "diagram.json"
        files = {"": FIRMWARE / kind, "lib": FIRMWARE / "lib", "config.json": config}
        self.vb: VirtualBoard = _virtual_board_class()(diagram, files, name=name, heapsize="96k")
        self.pids: list[int] = []  # every micropython pid seen (a reboot starts a new one)
        self.serial_at = 0  # lines the watcher has printed
        self.shown: dict[str, str] = {}  # LED part -> what the watcher printed last
        self.pot = None  # the car's pot1 position

    def note_pid(self) -> int | None:
        pid = self.vb.pid
        if pid is not None and pid not in self.pids:
            self.pids.append(pid)
        return pid

    # LEDs as a reader names them

    def slot_leds(self) -> list[str]:
        return [f"rgb{i}" for i in (1, 2)] if self.kind == "station" else []

    def slot_colour(self, part: str) -> tuple[str, float]:
        """The colour of a slot LED and how long it has been showing it (s). From the board's
        record of LED changes (the last one is what shows now), which costs no circuit solve."""
        hist = self.vb.changes(part)
        if hist:
            since, rgb = time.monotonic() - hist[-1][0], hist[-1][1]
        else:
            since, rgb = 1e9, self.vb.rgb(part)
        return COLOURS.get(rgb, f"R{rgb[0]} G{rgb[1]} B{rgb[2]}"), since

    def status_led(self) -> str | None:
        """The status LED (led1): steady on or off (unchanged for 0.6 s), or blinking (its last
        four on/off phases regular and short); None while it is neither yet."""
        now = time.monotonic()
        hist = self.vb.changes("led1")
        if not hist or now - hist[-1][0] >= 0.6:
            on = hist[-1][1] if hist else self.vb.led("led1")
            if self.kind == "station":
                return "on (gateway reachable)" if on else "off"
            return "on (slot held: heading there, or plugged in)" if on else "off (driving, no slot needed)"
        times = [t for t, _ in hist[-5:]]
        if len(times) < 5:
            return None
        phases = sorted(b - a for a, b in pairwise(times))
        if phases[-1] > 0.6 or phases[-1] > 2 * phases[0]:
            return None
        if self.kind == "station":
            return "blinking 2 Hz (gateway unreachable)"
        if phases[2] < 0.3:
            return "blinking 5 Hz (no slot to be had yet: no capacity, refused or offline)"
        return "blinking 1 Hz (battery low, asking)"


# ---------------------------------------------------------------- the watcher

@dataclass
class _Log:
    """A gateway's log file, read on from `at` (a line may be split between two reads)."""
    who: str
    path: Path
    at: int
    partial: bytes = b""


class Watch:
    """A thread that prints, as they happen: each board's LED changes and serial lines, and the
    gateway's log lines that name one of the boards."""

    def __init__(self, tl: Timeline, boards: list[Board], logs: list[tuple[str, Path, int]]):
        """logs: (who, path, from offset) of each gateway log to print lines of (one per region)."""
        self.tl, self.boards = tl, boards
        self._logs = [_Log(*x) for x in logs]
        ids = sorted((b.name for b in boards), key=len, reverse=True)
        self._mentions = re.compile(r"\b(" + "|".join(map(re.escape, ids)) + r")\b")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self, serial_at: dict[str, int]) -> None:
        """From serial line serial_at[board name] on; the LEDs as they show now are known."""
        for b in self.boards:
            b.serial_at = serial_at[b.name]
            for part in b.slot_leds():
                b.shown[part] = b.slot_colour(part)[0]
            b.shown["led1"] = b.status_led() or ""
        self.poll()
        self._thread = threading.Thread(target=self._run, name="demo-board-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        try:
            self.poll()  # what came in since the last pass
        except Exception as e:  # noqa: BLE001 (the boards may be gone)
            self.tl.note(f"(board watch: {type(e).__name__}: {e})")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 (printed, and the act goes on)
                self.error = e
                self.tl.note(f"(board watch: {type(e).__name__}: {e})")
                return
            self._stop.wait(0.02)

    def poll(self) -> None:
        with self._lock:  # the thread, and the act when it wants the timeline up to date
            self._poll()

    def _poll(self) -> None:
        self._gateway_lines()
        for b in self.boards:
            b.note_pid()
            for part in b.slot_leds():
                colour, since = b.slot_colour(part)
                # the firmware writes R, G and B one after the other: wait until they settle
                if since >= 0.02 and colour != b.shown.get(part):
                    b.shown[part] = colour
                    self.tl.line(b.who, "◉", f"slot {part[3:]} LED: {colour}")
            status = b.status_led()
            if status is not None and status != b.shown.get("led1"):
                b.shown["led1"] = status
                self.tl.line(b.who, "◉", f"status LED: {status}")
            lines = b.vb.serial_lines(b.serial_at)
            b.serial_at += len(lines)
            for ln in lines:
                self.tl.line(b.who, "│", ln)

    def _gateway_lines(self) -> None:
        for log in self._logs:
            try:
                with open(log.path, "rb") as f:
                    f.seek(log.at)
                    data = f.read()
            except OSError:
                continue
            log.at += len(data)
            *lines, log.partial = (log.partial + data).split(b"\n")
            for raw in lines:
                text = raw.decode(errors="replace").rstrip()
                m = _GATEWAY_LINE.match(text)
                msg = text if m is None else (m["msg"] if m["level"] in ("INFO", "DEBUG") else f"{m['level']} {m['msg']}")
                if self._mentions.search(msg):
                    self.tl.line(log.who, "│", msg)


# ---------------------------------------------------------------- the act

class BoardAct:
    """Boots the boards, plays the scenes, switches the boards off; close() stops whatever is
    still running (also on errors and Ctrl-C)."""

    def __init__(self, demo: Demo, passwords: dict[str, str], metas: dict[str, StationMeta],
                 labels: dict[str, str]):
        self.demo, self.tl, self.pace = demo, demo.tl, demo.pace
        self.passwords, self.metas, self.labels = passwords, metas, labels
        self.models: dict[str, EvModel] = {c.cid: load_ev_model(*c.model) for c in CARS}
        self.dir = demo.dir / "boards"
        self.stations: dict[str, Board] = {}
        self.cars: dict[str, Board] = {}
        self.watch: Watch | None = None

    @staticmethod
    def users() -> tuple[list[str], list[str]]:
        """(station ids, car ids): the broker users the boards log in as."""
        return list(STATIONS), [c.cid for c in CARS]

    def boards(self) -> list[Board]:
        return [*self.stations.values(), *self.cars.values()]

    # ------------------------------------------------------------ configs

    def _common(self, base: dict[str, Any], dev: str) -> dict[str, Any]:
        cfg = json.loads(json.dumps(base))
        broker = self.demo.broker
        assert broker is not None
        cfg.update(id=dev, region=self.demo.region, log="info")
        pin_broker(cfg["broker"], broker)
        cfg["broker"].update(user=dev, password=self.passwords[dev], keepalive=30)
        return cfg

    def _write(self, name: str, cfg: dict[str, Any]) -> Path:
        path = self.dir / f"{name}.json"
        path.write_text(json.dumps(cfg, indent=1) + "\n")
        path.chmod(0o600)  # it holds the board's broker password
        return path

    def _station_config(self, sid: str) -> Path:
        return self._write(sid, self._common(_STATION_DEFAULT, sid))

    def _car_config(self, spec: CarSpec) -> Path:
        cfg = self._common(CAR_DEFAULT, spec.cid)
        m = self.models[spec.cid]
        cfg["model"] = {"name": m.name, "battery_kwh": m.battery_kwh, "consumption_kwh_100km": m.consumption_kwh_100km,
                        "max_ac_kw": m.max_ac_kw, "max_dc_kw": m.max_dc_kw, "target_soc": 0.8}
        cfg["route"] = {"speed_kmh": 0, "loop": True, "points": [[spec.lat, spec.lon]]}  # parked
        broker = self.demo.broker
        assert broker is not None
        cfg["regions"] = [{"name": self.demo.region, "host": broker.host, "port": broker.port,
                           "bounds": [52.33, 13.08, 52.68, 13.77]}]
        return self._write(spec.cid, cfg)

    # ------------------------------------------------------------ boot and switch-off

    def boot(self) -> None:
        tl = self.tl
        tl.scene("Boards 0 · Two station boards and three car boards boot the unmodified firmware")
        self.dir.mkdir(parents=True, exist_ok=True)
        log_from = self.demo.gateway_log.stat().st_size if self.demo.gateway_log.exists() else 0
        for sid in STATIONS:
            self.stations[sid] = Board("station", sid, self._station_config(sid))
        for spec in CARS:
            car = Board("car", spec.cid, self._car_config(spec))
            car.pot = pot_for(FINE)
            car.vb.set_pot("pot1", car.pot)  # before it boots: the battery is fine
            self.cars[spec.cid] = car
        # in parallel; not in an executor, whose shutdown would wait for the boots on Ctrl-C
        errors: list[BaseException] = []

        def start(b: Board) -> None:
            try:
                b.vb.start()
                b.note_pid()
            except BaseException as e:  # noqa: BLE001 (reported by the main thread)
                errors.append(e)

        threads = [threading.Thread(target=start, args=(b,), daemon=True) for b in self.boards()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise DemoError(f"a virtual board did not boot: {errors[0]}")
        for b in self.boards():
            try:
                b.vb.wait_serial("mqtt: connected", timeout=20)
            except TimeoutError as e:
                raise DemoError(f"{b.who} did not connect to the broker: {e}") from e
        self.demo.wait_gateway_sees(lambda live: all(
            sid in live and live[sid].online and live[sid].slots == ["free", "free"] for sid in STATIONS),
            "both station boards online and free")
        plain = [p for b in self.boards() for p in tls_problems(b)]

        for b in self.boards():  # until each status LED is steady (the stations' blink while connecting)
            try:
                b.vb.wait_until(lambda b=b: b.status_led() is not None and "blinking" not in b.status_led(),
                                5, "a steady status LED")
            except TimeoutError:
                pass  # shown as it is
        serial_at = {}
        for b in self.boards():
            if b.kind == "station":
                meta = self.metas[b.name]
                what = f"{self.labels[b.name]}, {slots_summary(meta)}"
            else:
                spec = next(c for c in CARS if c.cid == b.name)
                what = (f"{self.models[b.name].short()} at {spec.where}; pot1 at {b.pot:.3f}: "
                        f"the battery reads {FINE * 100:.0f} %")
            tl.line(b.who, "·", f"micropython pid {b.vb.pid}, firmware/{b.kind}, config "
                                f"{_rel(b.config)}: {what}")
            lines = b.vb.serial_lines()
            serial_at[b.name] = len(lines)
            for ln in lines:
                if not _BOOT_NOISE.search(ln):
                    tl.line(b.who, "│", ln)
            leds = [f"slot {p[3:]} LED: {b.slot_colour(p)[0]}" for p in b.slot_leds()]
            tl.line(b.who, "◉", ", ".join([*leds, f"status LED: {b.status_led() or 'changing'}"]))
        self.watch = Watch(tl, self.boards(), [("gateway log", self.demo.gateway_log, log_from)])
        self.watch.start(serial_at)
        broker = self.demo.broker
        assert broker is not None
        self.check(not plain, f"every board connected over TLS, the demo's CA pinned, the broker's certificate "
                              f"checked for {broker.server_name}" + (f" ({'; '.join(plain)})" if plain else ""))

    def switch_off(self) -> None:
        tl = self.tl
        tl.scene("Boards 4 · The boards are switched off; the scripted scenes take over")
        self.sync()
        problems = self.board_problems()
        pids = [pid for b in self.boards() if (pid := b.note_pid()) is not None]
        tl.note(f"stopping the {len(pids)} virtual boards by pid: micropython pids "
                f"{', '.join(map(str, pids))}; their serial logs go to {_rel(self.dir)}/")
        self.stop_boards()
        self.demo.wait_gateway_sees(lambda live: all(
            sid in live and not live[sid].online for sid in STATIONS),
            "both station boards offline (their Last Will)")
        self.sync()  # the gateway's log lines about it
        if self.watch is not None:
            self.watch.stop()
            self.watch = None
        tl.note(f"the gateway has {' and '.join(STATIONS)} offline (their Last Will): "
                f"from now on nobody is sent there")
        self.demo.check(not problems, "every board ran on one boot, without a traceback or MemoryError"
                        + (f" ({'; '.join(problems)})" if problems else ""))

    def board_problems(self) -> list[str]:
        problems = []
        for b in self.boards():
            text = b.vb.serial_text()
            for bad in ("Traceback", "MemoryError", "memory allocation failed", "config error"):
                if bad in text:
                    problems.append(f"{b.who} printed {bad!r}")
            if b.vb.error:
                problems.append(f"{b.who}: {b.vb.error}")
            elif b.vb.boots != 1:
                problems.append(f"{b.who} booted {b.vb.boots} times")
        return problems

    def stop_boards(self) -> list[int]:
        """Stop every board still running (by its pid); keep its serial output in the run
        directory. Returns the pids stopped."""
        stopped = []
        for b in self.boards():
            pid = b.note_pid()
            try:
                b.vb.stop()
            except Exception as e:  # noqa: BLE001 (going away anyway)
                self.tl.plain(f"  (stopping {b.who}: {e})")
            if pid is not None:
                stopped.append(pid)
            try:
                (self.dir / f"{b.name}.serial.log").write_text(b.vb.serial_text())
            except OSError:
                pass
        return stopped

    def close(self) -> list[int]:
        if self.watch is not None:
            self.watch.stop()
            self.watch = None
        return self.stop_boards()

    # ------------------------------------------------------------ inputs and bounded waits

    def turn(self, cid: str, soc: float, why: str) -> int:
        """Turn a car's pot1 to where the battery reads `soc`; returns the serial mark before."""
        car = self.cars[cid]
        mark = car.vb.mark()
        old, car.pot = car.pot, pot_for(soc)
        pack = car.pot * 3.3 * _DIVIDER
        self.sync()
        self.tl.line(car.who, "⇠", f"pot1 turned {'down' if car.pot < old else 'up'} to {car.pot:.3f} "
                                   f"(GPIO 34 at {car.pot * 3.3:.2f} V: pack {pack:.0f} V, battery "
                                   f"{soc * 100:.0f} %): {why}")
        car.vb.set_pot("pot1", car.pot)
        return mark

    def note(self, text: str) -> None:
        self.sync()
        self.tl.note(text)

    def check(self, passed: bool, what: str) -> None:
        self.sync()
        self.demo.check(passed, what)

    def sync(self) -> None:
        """Print what the boards and the gateway did so far, before the act prints on."""
        if self.watch is not None:
            time.sleep(0.03)  # an LED the firmware is just switching settles
            self.watch.poll()

    def press(self, slots: list[tuple[str, int, str]]) -> None:
        """Press the occupancy button of each (station, slot, why) at once."""
        self.sync()
        for sid, slot, why in slots:
            self.tl.line(f"station {sid}", "⇠", f"btn{slot} pressed (slot {slot} occupancy): {why}")
        for sid, slot, _ in slots:
            self.stations[sid].vb.press(f"btn{slot}")

    def release(self, slots: list[tuple[str, int, str]]) -> None:
        self.sync()
        for sid, slot, why in slots:
            self.tl.line(f"station {sid}", "⇠", f"btn{slot} released: {why}")
        for sid, slot, _ in slots:
            self.stations[sid].vb.release(f"btn{slot}")

    def expect(self, b: Board, text: str, timeout: float, since: int) -> str:
        try:
            return b.vb.wait_serial(text, timeout=timeout, since=since)
        except TimeoutError:
            tail = "\n    ".join(b.vb.serial_lines()[-8:])
            raise DemoError(f"{b.who}: no serial line with {text!r} within {timeout:g} s; its last "
                            f"lines:\n    {tail}") from None

    def expect_led(self, sid: str, slot: int, rgb: tuple[int, int, int], timeout: float) -> None:
        b = self.stations[sid]
        try:
            b.vb.wait_rgb(f"rgb{slot}", rgb, timeout=timeout)
        except TimeoutError:
            raise DemoError(f"station {sid} slot {slot}: LED not {COLOURS[rgb]} within {timeout:g} s "
                            f"(it is {b.slot_colour(f'rgb{slot}')[0]})") from None

    def answer(self, cid: str, since: int, timeout: float = 15.0) -> tuple[str, int, str]:
        """The car's answer line after line `since`: (station, slot, reservation id)."""
        line = self.expect(self.cars[cid], "slot reserved: station ", timeout, since)
        m = re.search(r"slot reserved: station (\S+) slot (\d+), .* \((r\w+) \w+\)$", line)
        if not m:
            raise DemoError(f"car {cid}: unexpected answer line {line!r}")
        sid, slot, rid = m.group(1), int(m.group(2)), m.group(3)
        if sid not in self.stations:
            raise DemoError(f"car {cid} was sent to {sid}, which is not one of the boards")
        return sid, slot, rid

    def in_db(self, cid: str, rid: str, state: str, timeout: float = 5.0) -> Any:
        """Wait until the gateway's database has reservation `rid` in `state`; check it."""
        store = self.demo.store()

        def row() -> Any:
            return next((x for x in store.reservations(cid) if x.id == rid), None)
        try:
            r = wait_until(lambda: (x := row()) is not None and x.state == state and x, timeout, f"{rid} {state}")
        except TimeoutError:
            r = row()
        where = f" ({cid} at {r.station} slot {r.slot})" if r is not None else ""
        self.check(r is not None and r.state == state,
                        f"the gateway's database: {rid} {state}{where}"
                        + ("" if r is not None and r.state == state else f", but it is {r and r.state}"))
        return r

    def wait_slots(self, want: dict[str, list[str]], what: str) -> None:
        self.demo.wait_gateway_sees(lambda live: all(
            sid in live and live[sid].slots == slots for sid, slots in want.items()), what)

    # ------------------------------------------------------------ the scenes

    def play(self) -> None:
        self.boot()
        sid, slot, rid = self.low_battery()
        self.arrive_charge_leave(sid, slot, rid)
        self.no_show_and_a_waiting_car()
        self.switch_off()

    def low_battery(self) -> tuple[str, int, str]:
        tl, demo = self.tl, self.demo
        tl.scene("Boards 1 · ev6-1's battery runs low: the car board asks, the station board shows the hold")
        self.note("the car board reads its battery through pot1 on an ADC pin; below 20 % it asks the "
                  "gateway once, prints the answer on its serial console and confirms a held slot")
        car = self.cars["ev6-1"]
        mark = self.turn("ev6-1", LOW, "the battery runs low")
        self.expect(car, "battery low: soc", 5, mark)
        sid, slot, rid = self.answer("ev6-1", mark)
        self.expect_led(sid, slot, BLUE, 5)
        self.expect(car, f"confirmed {rid}", 5, mark)
        r = self.in_db("ev6-1", rid, "confirmed")
        self.check(self.stations[sid].vb.rgb(f"rgb{slot}") == BLUE,
                   f"station {sid}'s slot {slot} LED shows the reservation (blue)")
        self.settle(car, "on")
        if r is not None:
            self.note(f"ev6-1 is expected by {_utc(r.deadline)} (ETA {_utc(r.eta)} + grace_s "
                      f"{demo.pace.grace_s:g} s), or the slot goes back to free")
        demo.pause()
        return sid, slot, rid

    def arrive_charge_leave(self, sid: str, slot: int, rid: str) -> None:
        tl, demo = self.tl, self.demo
        tl.scene("Boards 2 · ev6-1 arrives: the occupancy button checks it in; it charges and leaves")
        car = self.cars["ev6-1"]
        self.note(f"ev6-1 drives to {sid} ({self.labels[sid]}; the demo takes {demo.pace.drive:g} s)")
        time.sleep(demo.pace.drive)
        mark = car.vb.mark()
        self.press([(sid, slot, "ev6-1 parks and plugs in")])
        self.expect_led(sid, slot, RED, 2)
        self.expect(car, f"checked in at station {sid} slot {slot}", 5, mark)
        self.in_db("ev6-1", rid, "checked_in")
        demo.pause()
        self.turn("ev6-1", CHARGING, "the battery charges")
        self.expect(car, "charging: soc", 5, mark)
        demo.pause()
        self.turn("ev6-1", CHARGED, "charged")
        self.expect(car, "charged: soc", 5, mark)
        demo.pause()
        self.release([(sid, slot, "ev6-1 unplugs and drives off")])
        self.expect_led(sid, slot, GREEN, 5)
        self.expect(car, f"unplugged: {rid} completed, driving on", 5, mark)
        self.in_db("ev6-1", rid, "completed")
        self.settle(car, "off")
        demo.pause()

    def no_show_and_a_waiting_car(self) -> None:
        tl, demo = self.tl, self.demo
        last = (STATIONS[1], 1)  # the one slot the walk-in drivers leave
        tl.scene("Boards 3 · One slot left: mini-1 gets it but never comes; leaf-1 waits and gets it")
        walk_ins = [(sid, k) for sid in STATIONS for k in (1, 2) if (sid, k) != last]
        self.press([(sid, k, "a walk-in driver plugs in (no reservation)") for sid, k in walk_ins])
        for sid, k in walk_ins:
            self.expect_led(sid, k, RED, 2)
        self.wait_slots({sid: ["free" if (sid, k) == last else "occupied" for k in (1, 2)] for sid in STATIONS},
                        "the walk-in drivers' slots occupied")
        demo.pause()

        mini = self.cars["mini-1"]
        mark = self.turn("mini-1", LOW, "mini-1 runs low, parked right at the station")
        sid, slot, rid = self.answer("mini-1", mark)
        self.check((sid, slot) == last, f"mini-1 got the last free slot, {last[0]} slot {last[1]}")
        self.expect_led(sid, slot, BLUE, 5)
        self.expect(mini, f"confirmed {rid}", 5, mark)
        r = self.in_db("mini-1", rid, "confirmed")
        self.settle(mini, "on")
        # before its deadline, the car board must read the battery as fine again, or it would
        # ask again when the hold lapses (and get the slot back: it is parked right there)
        mark = self.turn("mini-1", FINE, "mini-1's driver charges at a friend's wallbox instead and "
                                         "will not come")
        self.battery_reads_fine("mini-1")
        demo.pause()

        leaf = self.cars["leaf-1"]
        leaf_mark = self.turn("leaf-1", LOW, "leaf-1 runs low at Alexanderplatz")
        self.expect(leaf, "car: no capacity", 10, leaf_mark)
        self.settle(leaf, "blinking 5 Hz")
        self.check(True, "leaf-1 was told no_capacity (every slot within reach is busy beyond "
                         "max_wait_s: mini-1's hold counts until its deadline); it asks again by itself")
        left = (r.deadline - time.time()) if r is not None else demo.pace.grace_s
        self.note(f"mini-1 was expected by {_utc(r.deadline if r else None)} (no driving: ETA now, + grace_s "
                  f"{demo.pace.grace_s:g} s); waiting {max(0.0, left):.0f} s for the no-show")
        self.expect(mini, f"reservation {rid} expired: battery fine, driving on", max(0.0, left) + 10, mark)
        self.expect_led(sid, slot, GREEN, 5)
        self.in_db("mini-1", rid, "expired")
        self.settle(mini, "off")

        sid2, slot2, rid2 = self.answer("leaf-1", leaf_mark, timeout=30)
        self.check((sid2, slot2) == (sid, slot), f"leaf-1's next try got the slot mini-1's lapsed hold "
                                                 f"freed: {sid} slot {slot}")
        self.expect_led(sid2, slot2, BLUE, 5)
        self.expect(leaf, f"confirmed {rid2}", 5, leaf_mark)
        self.settle(leaf, "on")
        demo.pause()
        self.note(f"leaf-1 drives to {sid2} (the demo takes {demo.pace.drive:g} s)")
        time.sleep(demo.pace.drive)
        mark = leaf.vb.mark()
        self.press([(sid2, slot2, "leaf-1 parks and plugs in")])
        self.expect(leaf, f"checked in at station {sid2} slot {slot2}", 5, mark)
        self.in_db("leaf-1", rid2, "checked_in")
        self.settle(leaf, "on")
        demo.pause(2)
        self.release([(sid2, slot2, "leaf-1 unplugs and drives off"),
                      *[(s, k, "the walk-in driver leaves") for s, k in walk_ins]])
        for s, k in [*walk_ins, (sid2, slot2)]:
            self.expect_led(s, k, GREEN, 5)
        self.expect(leaf, f"unplugged: {rid2} completed, driving on", 5, mark)
        self.in_db("leaf-1", rid2, "completed")
        self.settle(leaf, "off")

    def battery_reads_fine(self, cid: str, timeout: float = 5.0) -> None:
        """Ask the car board over its serial console ("soc?") until its battery reads fine."""
        car = self.cars[cid]
        settle = 1.1  # the board takes the median of its last 9 readings, one per 200 ms
        time.sleep(settle)
        said = [""]

        def reads_fine() -> bool:
            mark = car.vb.mark()
            self.sync()
            self.tl.line(car.who, "⇠", "typed on its serial console: soc?")
            car.vb.write_serial("soc?\r")
            said[0] = self.expect(car, "soc: ", 3, mark)
            return said[0].endswith("low False")

        try:
            wait_until(reads_fine, timeout - settle, f"{car.who}: battery fine", every=0.4)
        except TimeoutError:
            raise DemoError(f"{car.who}: the battery still reads low: {said[0]!r}") from None

    def settle(self, b: Board, shows: str) -> None:
        """Until the board's status LED shows `shows` ("on", "off", "blinking 5 Hz", as
        status_led() words it), so that the timeline has it before the act goes on."""
        try:
            b.vb.wait_until(lambda: (b.status_led() or "").startswith(shows), 3, f"status LED {shows}")
        except TimeoutError:
            pass  # the watch prints what it does show
        self.sync()


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _utc(unix: float | None) -> str:
    """HH:MM:SS UTC, as the boards print times (they have no time zone)."""
    return "-" if unix is None else time.strftime("%H:%M:%S UTC", time.gmtime(unix))
