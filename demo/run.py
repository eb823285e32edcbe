"""python -m demo [--fast] [--no-boards] [--dir DIR]: the whole region on this machine, then clean up.

1. a CA of the demo's own (recarga.core.certs, in the run directory's tls/) and a Mosquitto
   config from recarga.core.broker_config (auth + ACL on, one TLS listener on a free loopback
   port, its certificate from that CA), started;
2. a gateway config over the whole Berlin register (TLS, trusting that CA alone), and the real
   gateway process (`python -m recarga.gateway.cli run --config ...`), logging to a file in
   the run directory;
3. the virtual-board act (demo/boards.py; --no-boards skips it): two station boards and three
   car boards running the unmodified firmware on the MicroPython unix port (config.json pins
   the CA and names the server to verify), their serial lines and LEDs printed as they
   happen; switched off (by pid) at its end;
4. eight stations and ten cars as scripted MQTT clients over TLS (demo/actors.py), the scenes
   of demo/scenario.py printed as they happen;
5. the reservations from the gateway's database (`python -m recarga.gateway.cli reservations --json`);
6. the regions act (demo/regions.py): the region's broker stopped, then three bridged regions
   and central started, an overflow and central unreachable;
7. everything it started stopped by pid, also on errors, Ctrl-C and SIGTERM.

Exit status: 0 when every scene went as docs/protocol.md says, 1 when one did not (or something
failed to start), 130 when interrupted.
"""
from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boards.virtual.board import BoardError
from demo import boards as board_act
from demo import scenario
from demo.actors import (
    STATIONS_CSV,
    Car,
    DemoError,
    Station,
    Timeline,
    load_ev_model,
    station_labels,
)
from demo.regions import RegionsAct
from harness import ROOT
from harness.broker import Broker, BrokerError
from harness.services import ServiceProcess, gateway_reservations, write_secret
from harness.wait import wait_until
from recarga.core.stations import load_stations
from recarga.gateway import config as gateway_config
from recarga.gateway.store import Store

REGION = "berlin"
GATEWAY_USER = "gateway"
MARKER = ".recarga-demo"  # marks a run directory as the demo's own, so it may be cleared
TLS_DIR = "tls"  # the demo's CA and the broker's certificate, in the run directory


@dataclass(frozen=True)
class Pace:
    hold_s: float  # the gateway's [reservations] hold_s
    grace_s: float  # the gateway's [reservations] grace_s (a car board parked at a station is a
    #                 no-show this long after it was told)
    step: float  # pause between a car's steps, so a reader can follow
    drive: float  # how long a drive to the station takes in the demo
    charge: float  # how long a charging session takes in the demo


NORMAL = Pace(hold_s=12, grace_s=10, step=1.0, drive=3.0, charge=4.0)
FAST = Pace(hold_s=3, grace_s=6, step=0.1, drive=0.3, charge=0.3)

GATEWAY_TOML = """\
# Written by the Recarga demo (python -m demo); see demo/run.py. Paths are relative to this file.
region = {region}
database = "gateway.db"
stations = {stations}
tick_s = 0.5
log_level = "DEBUG"      # a line for each car request too (INFO has a summary a minute)
synchronous = "NORMAL"

[broker]
host = "127.0.0.1"
port = {port}
tls_ca = {tls_ca}   # the demo's CA: the broker's certificate is verified against it alone
username = {user}
password_file = "gateway.password"
reconnect_min_s = 1
reconnect_max_s = 2

[reservations]
hold_s = {hold_s}        # short, so that a lapsing hold shows within the demo
grace_s = {grace_s}       # short, so that a no-show shows within the demo (every other car is minutes away)
retry_min_s = 1      # a refused car asks again within seconds: the demo's slots free up within seconds
retry_max_s = 2
"""


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


class Demo:
    """The region (broker, gateway process, stations, cars) and what the scenes need of it."""

    def __init__(self, run_dir: Path, pace: Pace, tl: Timeline, boards: bool = True):
        self.dir = run_dir
        self.with_boards = boards
        self.boards: board_act.BoardAct | None = None
        self.regions: RegionsAct | None = None
        self.register: list[Any] = []
        self.pace = pace
        self.tl = tl
        self.region = REGION
        self.broker: Broker | None = None
        self.gateway: ServiceProcess | None = None
        self.gateway_config = run_dir / "gateway" / "gateway.toml"
        self.gateway_log = run_dir / "gateway" / "gateway.log"
        self.stations: dict[str, Station] = {}
        self.cars: dict[str, Car] = {}
        self.cast: dict[str, Any] = {}  # state scenes hand on to later scenes
        self.checks: list[tuple[bool, str]] = []
        self.max_wait_s = 0.0  # the gateway's [reservations] max_wait_s, read from its config
        self._store: Store | None = None

    # ------------------------------------------------------------ for the scenes

    def pause(self, n: float = 1.0) -> None:
        time.sleep(self.pace.step * n)

    def check(self, passed: bool, what: str) -> None:
        self.checks.append((passed, what))
        self.tl.note(("✓ " if passed else "✗ NOT AS EXPECTED: ") + what)

    def store(self) -> Store:
        """The gateway's database (read here, written by the gateway process)."""
        if self._store is None:
            self._store = Store(self.dir / "gateway" / "gateway.db", "NORMAL")
        return self._store

    def wait_gateway_sees(self, pred: Callable[[dict[str, Any]], bool], what: str,
                          timeout: float = 10.0) -> None:
        """Until pred(the gateway's stored live state of the stations) holds."""
        try:
            wait_until(lambda: pred(self.store().stations_live()), timeout, what,
                       self.gateway.alive if self.gateway is not None else None)
        except TimeoutError:
            raise DemoError(f"the gateway's database does not show {what} within {timeout:g} s") from None

    def wait_gateway_sees_stations(self, timeout: float = 10.0) -> None:
        """Until the gateway's stored live state shows every scripted station online, as it shows itself."""
        def caught_up(live: dict[str, Any]) -> bool:
            return all(sid in live and live[sid].online and live[sid].slots == st.shown()
                       for sid, st in self.stations.items())
        self.wait_gateway_sees(caught_up, "the status of every scripted station", timeout)

    # ------------------------------------------------------------ setting up

    def prepare_dir(self) -> None:
        if self.dir.exists():
            if (self.dir / MARKER).exists():
                shutil.rmtree(self.dir)
            elif any(self.dir.iterdir()):
                raise DemoError(f"{self.dir} exists and is not a demo run directory; "
                                "give another one with --dir")
        (self.dir / "gateway").mkdir(parents=True, exist_ok=True)
        (self.dir / MARKER).write_text("a Recarga demo run directory; python -m demo clears it\n")

    def start(self) -> None:
        """The broker and the gateway (and the header lines about them)."""
        tl = self.tl
        self.prepare_dir()
        register = self.register = load_stations(STATIONS_CSV)
        board_stations, board_cars = board_act.BoardAct.users() if self.with_boards else ([], [])
        wanted = {*scenario.STATIONS, *board_stations}
        metas = {s.id: s for s in register if s.id in wanted}
        missing = sorted(wanted - set(metas))
        if missing:
            raise DemoError(f"{STATIONS_CSV.name} has no station {', '.join(missing)}")
        odd = [sid for sid in board_stations if len(metas[sid].slots) != 2]
        if odd:
            raise DemoError(f"the station board has 2 slots, but station {', '.join(odd)} has not 2 charging points")
        if scenario.NOT_A_STATION in {s.id for s in register}:
            raise DemoError(f"station {scenario.NOT_A_STATION} exists after all; pick another NOT_A_STATION")
        self.metas = metas
        self.labels = station_labels(metas)
        self.models = {spec.model: load_ev_model(*spec.model) for spec in scenario.CARS}
        car_ids = [c.cid for c in scenario.CARS]

        stations, cars = [*board_stations, *scenario.STATIONS], [*board_cars, *car_ids]
        passwords = {GATEWAY_USER: secrets.token_urlsafe(16)}
        passwords.update({u: secrets.token_urlsafe(16) for u in [*stations, *cars]})
        self.passwords = passwords
        self.broker = Broker.launch(self.dir / "broker", region=REGION, gateway_user=GATEWAY_USER, cars=cars,
                                    stations=stations, passwords=passwords, tls=self.dir / TLS_DIR)
        assert self.broker.ca_file is not None
        boards = (f"{len(board_stations)} station boards + {len(scenario.STATIONS)} scripted stations, "
                  f"{len(board_cars)} car boards + {len(car_ids)} scripted cars" if self.with_boards
                  else f"{len(scenario.STATIONS)} stations, {len(car_ids)} cars")
        tl.plain(f"  broker   mosquitto pid {self.broker.pid} on {self.broker.host}:{self.broker.port} "
                 f"(TLS only, certificate from the demo's CA {_rel(self.broker.ca_file)} for "
                 f"{self.broker.server_name} and {self.broker.host}), auth + ACL for {len(passwords)} users, "
                 f"each with its own password (gateway, {boards}); log {_rel(self.broker.log_path)}")

        write_secret(self.dir / "gateway" / "gateway.password", passwords[GATEWAY_USER])
        self.gateway_config.write_text(GATEWAY_TOML.format(
            region=_toml_str(REGION), stations=_toml_str(str(STATIONS_CSV)), port=self.broker.port,
            tls_ca=_toml_str(str(self.broker.ca_file)),
            user=_toml_str(GATEWAY_USER), hold_s=self.pace.hold_s, grace_s=self.pace.grace_s))
        self.max_wait_s = gateway_config.load(self.gateway_config).engine.max_wait_s
        self._start_gateway()
        assert self.gateway is not None
        tl.plain(f"  gateway  pid {self.gateway.pid}, region {REGION}, {len(register):,} stations from "
                 f"{_rel(STATIONS_CSV)}, hold {self.pace.hold_s:g} s, grace {self.pace.grace_s:g} s, "
                 f"tick 0.5 s, TLS trusting the demo's CA alone; config {_rel(self.gateway_config)}, "
                 f"log {_rel(self.gateway_log)}")
        if self.with_boards:
            tl.plain(f"  boards   firmware/station and firmware/car, unmodified, on the MicroPython unix port "
                     f"(boards/virtual: machine and network emulated, wired as boards/*/diagram.json); "
                     f"TLS, each config.json pinning the demo's CA and the server name "
                     f"{self.broker.server_name}; configs and serial logs in {_rel(self.dir / 'boards')}")
        tl.plain("  Only the stations the demo brings online can be assigned"
                 + (": first the two station boards, then (once they are off) the eight scripted stations."
                    if self.with_boards else ": the eight below."))
        tl.plain("  Each line: seconds since start, who, -> sends to / <- receives from, what; "
                 "· a note or a check" + ("; boards: │ a serial line, ◉ an LED, ⇠ an input the demo gives "
                                          "(pot turned, button pressed)." if self.with_boards else "."))

    def play_boards(self) -> None:
        """The virtual-board act; the boards are switched off at its end."""
        self.boards = board_act.BoardAct(self, self.passwords, self.metas, self.labels)
        self.boards.play()

    def start_scripted(self) -> None:
        """Scene 0: the scripted stations come online, the scripted cars connect."""
        tl = self.tl
        assert self.broker is not None
        if self.with_boards:
            tl.plain("\nThe protocol in detail: scripted stations and cars (MQTT clients), every message printed.")
        tl.scene("0 · Stations come online; cars connect")
        for sid in scenario.STATIONS:
            st = Station(tl, REGION, self.metas[sid], self.labels[sid], self.broker)
            self.stations[sid] = st
            st.come_online()
        self.wait_gateway_sees_stations()
        for spec in scenario.CARS:
            car = Car(tl, REGION, spec.cid, self.models[spec.model], spec.where, spec.lat, spec.lon, spec.soc,
                      self.labels, self.broker)
            self.cars[spec.cid] = car
            car.come_online()

    def _start_gateway(self, timeout: float = 30.0) -> None:
        self.gateway = ServiceProcess("the gateway", "recarga.gateway.cli", self.gateway_config, self.gateway_log).start()
        try:
            self.gateway.wait_log("connected to", timeout)
        except TimeoutError:
            raise DemoError(f"the gateway did not connect to the broker within {timeout:g} s") from None

    # ------------------------------------------------------------ the end

    def summary(self) -> None:
        tl = self.tl
        rows = gateway_reservations(self.gateway_config)
        tl.scene("Summary")
        tl.plain(f"Reservations in the gateway's database (python -m recarga.gateway.cli reservations "
                 f"--config {_rel(self.gateway_config)} --json):")
        tl.plain(f"  {'reservation':<14} {'car':<9} {'station':<8} {'slot':>4}  {'final state':<11} "
                 f"{'kWh':>5} {'EUR':>6}  request")
        for r in rows:
            tl.plain(f"  {r['id']:<14} {r['car']:<9} {r['station']:<8} {r['slot']:>4}  {r['state']:<11} "
                     f"{r['energy_kwh']:>5.1f} {r['price_eur']:>6.2f}  {r['rid']}")
        by_state = Counter(r["state"] for r in rows)
        tl.plain("  by final state: " + ", ".join(f"{state} {by_state[state]}" for state in
                                                  ("held", "confirmed", "checked_in", "completed",
                                                   "expired", "cancelled", "faulted") if by_state[state]))

    def play_regions(self) -> None:
        """The regions act (demo/regions.py), after the one-region broker is gone (2 cores)."""
        if self.broker is not None:
            self.broker.stop()
        self.regions = RegionsAct(self, self.register)
        self.regions.play()

    def verdict(self) -> None:
        tl = self.tl
        failed = [what for passed, what in self.checks if not passed]
        tl.plain(f"Checks: {len(self.checks) - len(failed)} of {len(self.checks)} as docs/protocol.md says"
                 + ("." if not failed else "; NOT as expected:\n    " + "\n    ".join(failed)))

    def stop_clients(self) -> None:
        for c in [*self.cars.values(), *self.stations.values()]:
            try:
                c.close()
            except Exception as e:  # noqa: BLE001 (going away anyway)
                self.tl.plain(f"  (closing {c.client.username}: {e})")

    def stop_gateway(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self.gateway is not None:
            self.gateway.stop(timeout=10)

    def close(self) -> list[str]:
        """Stop everything this demo started, by pid; returns what was stopped."""
        stopped = []
        if self.boards is not None:
            pids = self.boards.close()
            if pids:
                stopped.append(f"{len(pids)} virtual boards (micropython pids {', '.join(map(str, pids))})")
        if self.regions is not None:
            stopped += self.regions.close()
        self.stop_clients()
        if self.gateway is not None:
            self.stop_gateway()
            stopped.append(f"gateway (pid {self.gateway.pid}, exit {self.gateway.returncode})")
        if self.broker is not None and self.broker.pid is not None:
            self.broker.stop()  # idempotent: it may have stopped before the regions act
            stopped.append(f"mosquitto (pid {self.broker.pid})")
        return stopped


def _port_closed(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return False
    except OSError:
        return True


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true",
                    help=f"short pauses, a {FAST.hold_s:g} s hold and a {FAST.grace_s:g} s grace (for tests); "
                         f"default: a {NORMAL.hold_s:g} s hold and a {NORMAL.grace_s:g} s grace, "
                         f"about 80 s in all")
    ap.add_argument("--no-boards", dest="boards", action="store_false",
                    help="skip the virtual-board act (the firmware on the MicroPython unix port)")
    ap.add_argument("--dir", type=Path, default=ROOT / "run" / "demo",
                    help="run directory for configs, database and logs (cleared first; default run/demo)")
    args = ap.parse_args(argv)
    pace = FAST if args.fast else NORMAL
    # explicitly: a shell starts background jobs with SIGINT ignored, and Python keeps that
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)

    tl = Timeline()
    tl.plain(f"Recarga demo: region {REGION} on this machine, then Berlin as three regions bridged to central; "
             f"run directory {_rel(args.dir)}")
    demo = Demo(args.dir.resolve(), pace, tl, boards=args.boards)
    status = 1
    try:
        demo.start()
        if args.boards:
            demo.play_boards()
        demo.start_scripted()
        scenario.play(demo)
        demo.stop_clients()
        demo.stop_gateway()
        demo.summary()
        demo.play_regions()
        demo.verdict()
        status = 0 if all(passed for passed, _ in demo.checks) else 1
    except KeyboardInterrupt:
        tl.plain("\ninterrupted; stopping what the demo started")
        status = 130
    except (DemoError, BrokerError, BoardError, OSError, subprocess.SubprocessError) as e:
        tl.plain(f"\ndemo failed: {e}")
        if demo.gateway_log.exists():
            tl.plain(f"gateway log: {_rel(demo.gateway_log)}")
    finally:
        # no second Ctrl-C in the middle of stopping: every stop below is bounded in time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stopped = demo.close()
        if stopped:
            ports = [(demo.broker.host, demo.broker.port)] if demo.broker else []
            ports += demo.regions.ports() if demo.regions else []
            closed = [p for h, p in ports if _port_closed(h, p)]
            port = (f"; port{'s' if len(closed) > 1 else ''} {', '.join(map(str, closed))} closed"
                    if closed else "")
            tl.plain(f"Stopped {' and '.join(stopped)}{port}. Logs and database stay in {_rel(args.dir)}.")
    return status
