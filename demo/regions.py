"""The regions act: Berlin split into three regions bridged to central, and an overflow.

Berlin's register is cut by longitude into three regions, west, mitte and ost; each is a real
Mosquitto (auth + ACL) bridged to the central broker with Mosquitto's own bridge (generated
by recarga.core.broker_config, as tests/integration/central/test_regions.py does) and a real gateway process with
`[overflow] enabled = true` over its part of the register. Central is its own Mosquitto and
`recarga-central run`; west's neighbour is mitte, mitte's are west and ost. Two stations per
region come online as scripted MQTT clients; west's are taken by walk-in drivers.

Scenes: a car in west asks, west has nothing, central finds a slot in mitte and mitte's
gateway holds it; the car hands over to mitte's broker (the virtual car board running the
firmware, or a scripted car with --no-boards), confirms and checks in there. Then central's
broker goes away: a car in west gets a clear local answer at once (overflow_unavailable).

The messages between gateways and central travel inside the brokers; read-only taps print
them as they pass: on the central broker as the central user (what the regions send out), on
each region broker as its gateway user (what central sends in, and the bridge's link state).
Every process is stopped by pid in close().
"""
from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demo.actors import Car, DemoError, Station, hms, load_ev_model, station_labels
from demo.boards import CAR_DEFAULT, FINE, LOW, Board, Watch, pin_broker, pot_for
from harness.broker import MONITOR_USER, Broker, BrokerError, monitor_acl
from harness.central import (
    INSTANCES,
    MONITOR_ACL,
    BridgedBroker,
    CentralBroker,
    CentralProcess,
)
from harness.clients import Received, connect_client
from harness.services import GatewayProcess
from harness.wait import wait_until
from recarga.central.store import HOLD_ACTIVE
from recarga.central.store import Store as CentralStore
from recarga.core.bridge import bridge_user
from recarga.core.central_broker import central_user
from recarga.core.model import StationMeta
from recarga.core.protocol import central as PC
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.gateway.store import Store

if TYPE_CHECKING:
    from demo.run import Demo

GATEWAY_USER = "gateway"
LAT = (52.33, 52.68)  # Berlin's latitudes, for the car board's region bounds
ANSWER_WITHIN_S = 3  # the gateways' [overflow] answer_within_s


@dataclass(frozen=True)
class Region:
    name: str
    lon: tuple[float, float]  # its slice of Berlin: lon_min <= station lon < lon_max
    place: str  # where its online stations are: the two nearest this point
    at: tuple[float, float]
    shows: str  # what its stations' slots show once online


REGIONS = (
    Region("west", (13.0, 13.35), "Ernst-Reuter-Platz", (52.5127, 13.3219), "occupied"),
    Region("mitte", (13.35, 13.45), "Potsdamer Platz", (52.5096, 13.3759), "free"),
    Region("ost", (13.45, 13.8), "Ostkreuz", (52.5030, 13.4690), "free"),
)
NEIGHBOURS = {"west": ["mitte"], "mitte": ["west", "ost"], "ost": ["mitte"]}
HOME = "west"


@dataclass(frozen=True)
class CarSpec:
    cid: str
    model: tuple[str, str, str]
    where: str
    lat: float
    lon: float
    soc: float


TRAVELLER = CarSpec("id3-w", ("Volkswagen", "ID.3", "58 kWh"), "Ernst-Reuter-Platz", 52.5127, 13.3219, 0.15)
STRANDED = CarSpec("zoe-w", ("Renault", "Zoe", "R135 ZE50"), "Bismarckstraße", 52.5117, 13.3057, 0.14)

# the gateways' [overflow] section (harness.services.GatewayProcess writes the rest)
OVERFLOW_TOML = f"""\
[overflow]
enabled = true                 # the broker is bridged to central
answer_within_s = {ANSWER_WITHIN_S}
summary_min_interval_s = 1     # a changed summary reaches central at once in the demo
"""


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _wait(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    """wait_until, failing as a DemoError: check_db and check_central turn it into a failed check."""
    try:
        return wait_until(pred, timeout, what)
    except TimeoutError as e:
        raise DemoError(str(e)) from None


class Tap:
    """A read-only MQTT client on one broker that prints the cross-region messages passing it."""

    def __init__(self, act: RegionsAct, broker: Broker, user: str, topics: list[str]):
        self.act, self.tl = act, act.tl
        self.client = connect_client(broker, user, on_message=self._on_message)
        for t in topics:
            self.client.subscribe(t, W.QOS)

    def close(self) -> None:
        self.client.close()

    def _on_message(self, msg: Received) -> None:
        parts = msg.topic.split("/")
        ref = PC.parse_central_topic(msg.topic)
        if ref is not None:
            region, leaf = ref.region, ref.leaf
        elif len(parts) == 5 and parts[3:] == [PC.CENTRAL, PC.LINK_LEAF]:  # not a central message: the bridge's own
            region, leaf = parts[2], PC.LINK_LEAF
        else:
            return
        try:
            self.show(region, leaf, msg)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self.tl.note(f"(tap: unexpected message on {msg.topic}: {e})")

    def show(self, r: str, leaf: str, msg: Received) -> None:
        gw, now = f"gateway {r}", time.time()
        if leaf == PC.LINK_LEAF:
            if not msg.retain:  # a change, not the state as it was when the tap subscribed
                up = msg.payload.strip() == b"1"
                self.tl.event(f"bridge {r}", "->", gw, f"link to central {'up' if up else 'down'} "
                                                       f"(Mosquitto's bridge notification)")
            return
        if leaf == "summary":
            if msg.payload:
                m = json.loads(msg.payload)
                self.act.summaries[(r, m["shard"])] = m
            return
        m = json.loads(msg.payload)
        left = f"{m['deadline'] - now:.1f} s left" if "deadline" in m else ""
        res = m.get("reservation")
        err = m.get("error") or {}
        if leaf == "overflow/request" and m.get("op") == "overflow":
            need = m["need"]
            beat = (f"its own best finishes in {m['beat_s'] / 60:.0f} min" if m.get("beat_s") is not None
                    else "nothing in reach in its own region")
            self.tl.event(gw, "->", "central", f"overflow? {m['xid']} for car {m['car']} (battery {need['soc']:.0%}): "
                                               f"{beat}; answer by {hms(m['deadline'])} ({left})")
        elif leaf == "overflow/request":
            self.tl.event(gw, "->", "central", f"{m.get('op')} {m['xid']}")
        elif leaf == "hold/request" and m.get("op") == "hold":
            self.tl.event("central", "->", gw, f"hold? {m['xid']}: a slot at {m['station']} "
                                               f"({self.act.labels.get(m['station'], '?')}) for car {m['car']} of "
                                               f"{m['origin']}; answer by {hms(m['deadline'])} ({left}), the car "
                                               f"confirms by {hms(m['confirm_by'])}")
        elif leaf == "hold/request":
            self.tl.event("central", "->", gw, f"{m.get('op')} {m.get('reservation')} ({m['xid']})")
        elif leaf == "hold/answer":
            text = (f"held {res['id']} at {res['station']} slot {res['slot']} for car {m['car']} until "
                    f"{hms(res['hold_until'])}" if m.get("ok") else f"refused: {err.get('code')}")
            self.tl.event(gw, "->", "central", f"{text} ({m['xid']}, {left})")
        elif leaf == "overflow/answer":
            if m.get("ok"):
                b = m["broker"]
                text = (f"answer {m['xid']}: region {m['region']}, broker {b['host']}:{b['port']}, "
                        f"{res['id']} at {res['station']} slot {res['slot']}")
            else:
                text = f"answer {m['xid']}: {err.get('code')} ({err.get('message')})"
            self.tl.event("central", "->", gw, f"{text} ({left})")
        elif leaf == "hold/event":
            self.tl.event(gw, "->", "central", f"hold event: {m['reservation']} {m['event']} ({m['xid']})")


class RegionsAct:
    """Central and three bridged regions; the overflow scenes; close() stops all of it."""

    def __init__(self, demo: Demo, register: list[StationMeta]):
        self.demo, self.tl, self.pace = demo, demo.tl, demo.pace
        self.dir = demo.dir / "regions"
        self.register = register
        self.central_broker: CentralBroker | None = None
        self.central: CentralProcess | None = None
        self.brokers: dict[str, BridgedBroker] = {}
        self.gateways: dict[str, GatewayProcess] = {}
        self.taps: list[Tap] = []
        self.stations: dict[str, Station] = {}
        self.cars: list[Car] = []
        self.board: Board | None = None
        self.watch: Watch | None = None
        self.summaries: dict[tuple[str, int], dict[str, Any]] = {}  # (region, shard) -> summary, from the tap
        self.labels: dict[str, str] = {}

    # ------------------------------------------------------------ setting up

    def split(self) -> tuple[dict[str, list[StationMeta]], dict[str, list[StationMeta]]]:
        """(each region's part of the register, the two stations of it the demo brings online)."""
        part: dict[str, list[StationMeta]] = {r.name: [] for r in REGIONS}
        for s in self.register:
            for r in REGIONS:
                if r.lon[0] <= s.lon < r.lon[1]:
                    part[r.name].append(s)
        online = {}
        for r in REGIONS:
            def dist(s: StationMeta, r: Region = r) -> float:
                return math.hypot(s.lat - r.at[0], (s.lon - r.at[1]) * math.cos(math.radians(r.at[0])))
            online[r.name] = sorted((s for s in part[r.name] if len(s.slots) == 2), key=dist)[:2]
        return part, online

    def start(self) -> None:
        tl, pace = self.tl, self.pace
        tl.scene("Regions 0 · Berlin in three regions, each its own broker and gateway, bridged to central")
        part, online = self.split()
        self.online = online
        metas = {s.id: s for ss in online.values() for s in ss}
        self.labels = station_labels(metas)
        cars = [TRAVELLER.cid, STRANDED.cid]
        regions = [r.name for r in REGIONS]
        self.dir.mkdir(parents=True, exist_ok=True)

        # one user per central instance, per region's bridge, and a read-only one for the demo's taps
        # (the brokers take user names as client ids: a tap must not borrow a service's)
        central_pw = {**{central_user(i): secrets.token_urlsafe(16) for i in INSTANCES},
                      **{bridge_user(r): secrets.token_urlsafe(16) for r in regions},
                      MONITOR_USER: secrets.token_urlsafe(16)}
        # one CA signs every broker's certificate: every link is TLS, verified against it
        tls_dir = self.dir / "tls"
        self.central_broker = CentralBroker.launch(self.dir / "central-broker", regions=regions, passwords=central_pw,
                                                   extra_acl=MONITOR_ACL, tls=tls_dir)
        cb = self.central_broker
        tl.plain(f"  central  mosquitto pid {cb.pid} on {cb.host}:{cb.port} (TLS only, certificate from the demo's CA "
                 f"{_rel(cb.ca_file)}): the central broker, auth + ACL "
                 f"(a user per central instance, {central_user(INSTANCES[0])} for the one running, and one bridge user per region that may touch only its region's "
                 f"subtree); log {_rel(cb.log_path or cb.directory)}")
        # a car has the same user and password on every region's broker, so it can hand over
        car_pw = {c: secrets.token_urlsafe(16) for c in cars}
        self.car_pw = car_pw
        for r in REGIONS:
            users = {GATEWAY_USER: secrets.token_urlsafe(16), MONITOR_USER: secrets.token_urlsafe(16), **car_pw,
                     **{s.id: secrets.token_urlsafe(16) for s in online[r.name]}}
            b = BridgedBroker.launch(self.dir / r.name / "broker", region=r.name, central=cb, gateway_user=GATEWAY_USER,
                                     passwords=users, cars=cars, stations=[s.id for s in online[r.name]], tls=tls_dir,
                                     extra_acl=monitor_acl(r.name))
            self.brokers[r.name] = b
            tl.plain(f"  {r.name:<8} mosquitto pid {b.pid} on {b.host}:{b.port} (TLS), auth + ACL, bridged to central "
                     f"(Mosquitto's bridge as {bridge_user(r.name)}: QoS 1, cleansession false, "
                     f"its region's central/ subtree out and in)")
        # taps: what the regions send out, on the central broker; what central sends in, on each region's
        self.taps.append(Tap(self, cb, MONITOR_USER, [PC.central_filter(leaf) for leaf in
                                                      ("overflow/request", "hold/answer", "hold/event", "summary")]))
        for r, b in self.brokers.items():
            self.taps.append(Tap(self, b, MONITOR_USER, PC.gateway_central_subscriptions(r)))

        self.central = CentralProcess(self.dir / "central", cb, {r: b.port for r, b in self.brokers.items()},
                                      neighbours=NEIGHBOURS).start()
        tl.plain(f"  central  recarga-central run, pid {self.central.pid}: neighbours west–mitte, mitte–ost "
                 f"(west's cars may go to mitte only); config {_rel(self.central.config)}, "
                 f"log {_rel(self.central.log)}")
        for r in REGIONS:
            b = self.brokers[r.name]
            gw = GatewayProcess(self.dir / r.name / "gateway", r.name, b.port, GATEWAY_USER, b.password(GATEWAY_USER),
                                part[r.name], hold_s=pace.hold_s, grace_s=pace.grace_s, extra=OVERFLOW_TOML,
                                tls_ca=b.ca_file)
            self.gateways[r.name] = gw
            gw.start()
            tl.plain(f"  {r.name:<8} gateway pid {gw.pid}: {len(part[r.name]):,} stations of the register at "
                     f"{r.lon[0]:g}–{r.lon[1]:g}° E, [overflow] enabled (central's answer within "
                     f"{ANSWER_WITHIN_S} s); config {_rel(gw.config)}")
        for gw in self.gateways.values():
            gw.wait_log("link to central up")
        self.central.wait_log("subscribed: serving overflow")
        tl.plain("  Between gateways and central: read-only taps on the brokers print each message as it passes "
                 "(what the regions send, on the central broker as the central user; what central sends, on "
                 "each region's broker as its gateway user).")

        for r in REGIONS:
            for s in online[r.name]:
                b = self.brokers[r.name]
                st = Station(self.tl, r.name, s, self.labels[s.id], b, peer=f"gateway {r.name}")
                self.stations[s.id] = st
                st.come_online()
            if r.shows != "free":
                for s in online[r.name]:
                    self.stations[s.id].set_slots({k: r.shows for k in (1, 2)},
                                                  "walk-in drivers plugged in, no reservation")
        self.wait_view()

    def wait_view(self) -> None:
        """Until central's broker has each region's summary as its stations show now, and
        central has taken them in."""
        def free(r: str) -> int | None:
            shards = [m for (reg, _), m in self.summaries.items() if reg == r]
            if not shards:
                return None
            return sum(g[3] for m in shards for st in m["stations"] for g in st[4])
        want = {r.name: 0 if r.shows != "free" else 2 * len(self.online[r.name]) for r in REGIONS}
        _wait(lambda: all(free(r) == n for r, n in want.items()), 20, "every region's summary at central")
        assert self.central is not None
        for r in REGIONS:
            self.central.wait_log(f"region {r.name} reports its capacity")
        self.tl.note("central's view from the regions' summaries: " + "; ".join(
            f"{r.name} {len(self.online[r.name])} stations online, {want[r.name]} slots free" for r in REGIONS))
        self.demo.pause()

    # ------------------------------------------------------------ scenes

    def play(self) -> None:
        self.start()
        if self.demo.with_boards:
            self.overflow_board()
        else:
            self.overflow_scripted()
        self.central_unreachable()

    def _reservations(self, region: str, car: str) -> list[Any]:
        store = Store(self.dir / region / "gateway" / "gateway.db", "NORMAL")
        try:
            return [r for r in store.reservations(car) if r.state in D.ACTIVE_STATES]
        finally:
            store.close()

    def _holds(self, car: str) -> list[Any]:
        store = CentralStore(self.dir / "central" / "central.db", "NORMAL")
        try:
            return [h for h in store.holds() if h.car == car and h.state in HOLD_ACTIVE]
        finally:
            store.close()

    def check_db(self, car: str, state: str) -> Any:
        """The target's database has the car's reservation in `state`, the others have none."""
        def got() -> Any:
            rows = self._reservations("mitte", car)
            return rows[0] if len(rows) == 1 and rows[0].state == state else None
        try:
            r = _wait(got, 5, f"{car} {state} in mitte")
        except DemoError:
            r = None
        others = {reg: self._reservations(reg, car) for reg in ("west", "ost")}
        self.demo.check(r is not None and not any(others.values()),
                        f"mitte's database: {car} {state}" + (f" on {r.id} at {r.station} slot {r.slot}" if r else "")
                        + "; west's and ost's: nothing active for it")
        return r

    def check_central(self, car: str, state: str) -> None:
        try:
            _wait(lambda: [h.state for h in self._holds(car)] == [state], 5, f"central's hold for {car} {state}")
            ok = True
        except DemoError:
            ok = False
        holds = self._holds(car)
        self.demo.check(ok, f"central's database: the hold for {car} in "
                            + (f"{holds[0].region} is {holds[0].state}" if holds else "no region")
                            + " (it follows the hold events)")

    def overflow_board(self) -> None:
        tl, spec = self.tl, TRAVELLER
        tl.scene("Regions 1 · West is full: the car board in west is sent to mitte, hands over, confirms, checks in")
        model = load_ev_model(*spec.model)
        cfg = json.loads(json.dumps(CAR_DEFAULT))
        home = self.brokers[HOME]
        cfg.update(id=spec.cid, region=HOME, log="info")
        pin_broker(cfg["broker"], home)  # the demo's CA signs every region's broker: it trusts mitte's too
        cfg["broker"].update(user=spec.cid, password=self.car_pw[spec.cid], keepalive=30)
        cfg["model"] = {"name": model.name, "battery_kwh": model.battery_kwh,
                        "consumption_kwh_100km": model.consumption_kwh_100km, "max_ac_kw": model.max_ac_kw,
                        "max_dc_kw": model.max_dc_kw, "target_soc": 0.8}
        cfg["route"] = {"speed_kmh": 0, "loop": True, "points": [[spec.lat, spec.lon]]}  # parked
        # its home region only, as test_regions.py: mitte's broker comes in the overflow
        # answer (the firmware keeps one spare entry for it); three entries do not boot in 96 KB
        r = next(x for x in REGIONS if x.name == HOME)
        cfg["regions"] = [{"name": HOME, "host": home.host, "port": home.port,
                           "bounds": [LAT[0], r.lon[0], LAT[1], r.lon[1]]}]
        bdir = self.dir / "boards"
        bdir.mkdir(exist_ok=True)
        path = bdir / f"{spec.cid}.json"
        path.write_text(json.dumps(cfg, indent=1) + "\n")
        path.chmod(0o600)  # it holds the board's broker password
        board = self.board = Board("car", spec.cid, path)
        board.pot = pot_for(FINE)
        board.vb.set_pot("pot1", board.pot)
        board.vb.start()
        board.note_pid()
        try:
            board.vb.wait_serial("mqtt: connected", timeout=20)
        except TimeoutError as e:
            raise DemoError(f"{board.who} did not connect to west's broker: {e}") from e
        tl.line(board.who, "·", f"micropython pid {board.vb.pid}, firmware/car, config {_rel(path)}: "
                                f"{model.short()} parked at {spec.where}; its config.json knows region west "
                                f"and its broker only")
        logs = [(f"gw {r} log", gw.log, gw.log.stat().st_size) for r, gw in self.gateways.items() if r != "ost"]
        self.watch = Watch(tl, [board], logs)
        self.watch.start({spec.cid: len(board.vb.serial_lines())})

        mark = board.vb.mark()
        self.watch.poll()
        board.pot = pot_for(LOW)
        tl.line(board.who, "⇠", f"pot1 turned down to {board.pot:.3f}: the battery runs low ({LOW:.0%})")
        board.vb.set_pot("pot1", board.pot)
        mitte = self.brokers["mitte"]
        line = self._expect(board, "car: overflow: slot held in region", 20, mark)
        self.demo.check(line.endswith(f"region mitte, handing over to its broker {mitte.host}:{mitte.port}"),
                        f"the car board in west was answered with a slot in mitte and mitte's broker "
                        f"{mitte.host}:{mitte.port}")
        self._expect(board, "car: handing over to region mitte", 10, mark)
        self._expect(board, "confirmed r", 20, mark)
        r = self.check_db(spec.cid, "confirmed")
        self.check_central(spec.cid, "confirmed")
        if r is None:
            return
        self.demo.pause()
        self.watch.poll()
        tl.note(f"{spec.cid} drives to {r.station} ({self.labels.get(r.station, '?')}; the demo takes "
                f"{self.pace.drive:g} s)")
        time.sleep(self.pace.drive)
        mark = board.vb.mark()
        self.watch.poll()
        self.stations[r.station].set_slots({r.slot: "occupied"}, f"slot {r.slot}: {spec.cid} plugged in")
        self._expect(board, f"checked in at station {r.station} slot {r.slot}", 15, mark)
        self.check_db(spec.cid, "checked_in")
        self.check_central(spec.cid, "checked_in")
        self.watch.poll()
        problems = [bad for bad in ("Traceback", "MemoryError", "memory allocation failed")
                    if bad in board.vb.serial_text()]
        pids = self.stop_board()
        tl.note(f"stopping the virtual car board by pid: micropython pids {', '.join(map(str, pids))}")
        self.demo.check(not problems and board.vb.boots == 1,
                        "the car board ran on one boot, without a traceback or MemoryError"
                        + (f" ({', '.join(problems)})" if problems else ""))

    def _expect(self, b: Board, text: str, timeout: float, since: int) -> str:
        try:
            line = b.vb.wait_serial(text, timeout=timeout, since=since)
        except TimeoutError:
            tail = "\n    ".join(b.vb.serial_lines()[-8:])
            raise DemoError(f"{b.who}: no serial line with {text!r} within {timeout:g} s; its last "
                            f"lines:\n    {tail}") from None
        if self.watch is not None:
            time.sleep(0.03)
            self.watch.poll()
        return line

    def _car(self, spec: CarSpec, region: str) -> Car:
        b = self.brokers[region]
        car = Car(self.tl, region, spec.cid, load_ev_model(*spec.model), spec.where, spec.lat, spec.lon, spec.soc,
                  self.labels, b, peer=f"gateway {region}")
        self.cars.append(car)
        car.come_online()
        return car

    def overflow_scripted(self) -> None:
        tl, spec = self.tl, TRAVELLER
        tl.scene("Regions 1 · West is full: a car in west is sent to mitte, hands over, confirms, checks in")
        car = self._car(spec, HOME)
        reply = car.reserve()
        mitte = self.brokers["mitte"]
        broker = reply.get("broker") or {}
        self.demo.check(bool(reply.get("ok")) and reply.get("region") == "mitte"
                        and (broker.get("host"), broker.get("port")) == (mitte.host, mitte.port),
                        f"the car in west was answered with a slot in mitte and mitte's broker {mitte.host}:{mitte.port}")
        if not reply.get("ok"):
            raise DemoError(f"{spec.cid}: expected an overflow answer, got {reply}")
        r = reply["reservation"]
        tl.note(f"{spec.cid} hands over: it leaves west's broker and logs in on mitte's, same user and password")
        car.close()
        car = self._car(spec, "mitte")
        confirmed = car.confirm(r["id"])
        self.demo.check(bool(confirmed.get("ok")), f"{spec.cid} confirmed {r['id']} with mitte's gateway")
        self.check_db(spec.cid, "confirmed")
        self.check_central(spec.cid, "confirmed")
        self.demo.pause()
        tl.note(f"{spec.cid} drives {r['distance_km']:.1f} km to {r['station']} (the demo takes {self.pace.drive:g} s)")
        time.sleep(self.pace.drive)
        mark = len(car.inbox)
        self.stations[r["station"]].set_slots({r["slot"]: "occupied"}, f"slot {r['slot']}: {spec.cid} plugged in")
        car.wait_event("checked_in", 10, mark)
        self.check_db(spec.cid, "checked_in")
        self.check_central(spec.cid, "checked_in")

    def central_unreachable(self) -> None:
        tl, spec = self.tl, STRANDED
        tl.scene("Regions 2 · Central is unreachable: west still answers at once, and says so")
        cb, west = self.central_broker, self.gateways[HOME]
        self.demo.pause()
        assert cb is not None
        downs = west.log_text().count("link to central down")
        tl.note(f"the central broker goes away (mosquitto pid {cb.pid} stopped by pid, as in a cut link)")
        cb.stop()
        west.wait_log("link to central down", 15, downs + 1)
        car = self._car(spec, HOME)
        t0 = time.monotonic()
        reply = car.reserve()
        dt = time.monotonic() - t0
        err, ovf = reply.get("error") or {}, reply.get("overflow") or {}
        self.demo.check(not reply.get("ok") and err.get("code") == W.NO_CAPACITY
                        and ovf.get("code") == PC.OVERFLOW_UNAVAILABLE and dt < 1.5,
                        f"{spec.cid} was told no_capacity with overflow_unavailable after {dt * 1000:.0f} ms, without "
                        f"waiting for central ({ANSWER_WITHIN_S} s)")

    # ------------------------------------------------------------ the end

    def stop_board(self) -> list[int]:
        if self.watch is not None:
            self.watch.stop()
            self.watch = None
        if self.board is None:
            return []
        b, self.board = self.board, None
        pid = b.note_pid()
        try:
            b.vb.stop()
        except Exception as e:  # noqa: BLE001 (going away anyway)
            self.tl.plain(f"  (stopping {b.who}: {e})")
        try:
            (self.dir / "boards" / f"{b.name}.serial.log").write_text(b.vb.serial_text())
        except OSError:
            pass
        return b.pids or ([pid] if pid is not None else [])

    def ports(self) -> list[tuple[str, int]]:
        brokers = [b for b in (self.central_broker, *self.brokers.values()) if b is not None]
        return [(b.host, b.port) for b in brokers]

    def close(self) -> list[str]:
        """Stop everything the act started, by pid; what was stopped, for the last line."""
        stopped = []
        pids = self.stop_board()
        if pids:
            stopped.append(f"the regions' car board (micropython pid {', '.join(map(str, pids))})")
        for c in [*self.cars, *self.stations.values(), *self.taps]:
            try:
                c.close()
            except Exception as e:  # noqa: BLE001 (going away anyway)
                self.tl.plain(f"  (closing a client: {e})")
        self.cars, self.stations, self.taps = [], {}, []
        procs = [*self.gateways.values(), *([self.central] if self.central else [])]
        n_gateways, self.gateways, self.central = len(self.gateways), {}, None
        for p in procs:
            p.stop()
        if procs:
            stopped.append(f"{n_gateways} region gateways and central (pids "
                           f"{', '.join(str(p.pid) for p in procs)})")
        brokers = [b for b in (*self.brokers.values(), self.central_broker) if b is not None]
        was = [b.pid for b in brokers if b.running]
        for b in brokers:
            try:
                b.stop()
            except (OSError, BrokerError) as e:
                self.tl.plain(f"  (stopping mosquitto {b.pid}: {e})")
        if was:
            stopped.append(f"{len(was)} more mosquittos (pids {', '.join(map(str, was))})")
        return stopped
