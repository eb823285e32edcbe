"""The board firmware's heap under traffic: each board (car, station) on the virtual board with
`micropython -X heapsize=96k`, 1,000 messages each, against a real Mosquitto (auth + ACL).

Run from the repo root (about 1.5-2 minutes on 2 cores with the defaults: the runs go at
the same time, `--sequential` one after the other):

    .venv/bin/python bench/firmware_heap.py [--messages 1000] [--runs 3] [--board both] [-v]
                                            [--firmware DIR] [--check] [--plain]

What runs, all on 127.0.0.1: one Mosquitto from harness.broker (auth and ACL on, users
`gateway`, the car and the station, each with its own password; its listener TLS with a CA of
its own, which the boards pin in config.json as provisioning writes it, so the figures include
the TLS context and connection; `--plain`: plain TCP, for comparison); no gateway process: this
script is the gateway, a paho-mqtt client (harness.clients) logged in as the `gateway` user
(so the broker's ACL for the gateway applies), speaking docs/protocol.md with
recarga.core.protocol's builders.
Per run a fresh virtual board of each kind (boards/car and boards/station wiring, the
unmodified firmware from firmware/, a config.json like the board's default pointing at this
broker); car and station, and all runs, go at the same time (each board is its own
process with its own heap). `--messages` is rounded up to whole car cycles (10).

Messages (each one waits for the board's reaction on its serial port before the next goes,
so that every message is really handled, none is coalesced or dropped):

- station: `--messages` commands on station/<sid>/cmd, reserve and release alternating over
  both slots (reserve 1, reserve 2, release 1, release 2, ...). Every one changes a slot, so
  the station answers each with a retained status (checked: one status per command).
- car: `--messages` messages on car/<car>/reply, in cycles of 10 driven by the car's own
  requests (its battery is low all along): the reply to its `reserve` (ok, a held slot) ->
  6 `faulted` events each with an `offer` (a new held slot; the car adopts it, prints its
  answer line and queues a confirm for it) -> the reply to its `confirm` of the last offer
  (ok, confirmed) -> `expired` for it (the car asks again at once) -> an `expired` event for
  a reservation that is not the car's current one (parsed and ignored). That is the car's
  whole message path: JSON parsing, replies matched to the pending request, events,
  reservation lines formatted, requests and telemetry published.

How the heap is read, from outside, with what the firmware already prints:

- car: its serial command `status` runs gc.collect() and prints gc.mem_alloc(); typed after
  every message once the car has reacted to it (one sample per message). At the end of a
  cycle it is typed once the car's next `reserve` has arrived, so that every cycle-end
  sample is taken in the same state (low, asking) and they can be compared for drift.
- station: with "log": "debug" in config.json it prints `station: status sent, seq N heap
  free F` after each status it publishes: gc.mem_free() right after the gc.collect() that
  ends every batch of received messages, plus the publish's own few small buffers. In use =
  the GC heap's size - F, the size from micropython.mem_info() on a probe virtual board
  started the same way (the unix port aligns the heap it mallocs, so the size may differ
  by one 128-byte step between processes: the station's figures are good to ~0.1 KB).
  One sample per message. (The station has no serial console; a `heap` line printed right
  after a gc.collect() would make this exact.)

Both figures include the emulation's own modules (`machine`, `network`, the control socket,
about 20 KB), which live in the same heap on the virtual board; the harness reports that
figure after boot (`board.boot_heap`) and it is subtracted: what is left is the firmware's,
i.e. what it adds on top of the emulation. Where the emulation's boot leaves room in a
structure that the firmware then fills, that room is not charged to the firmware: it matters
for the interned-string (qstr) pools, whose fourth one the emulation leaves with ~100 of 300
entries free for the firmware's first names (~1 KB at 64 bits); the firmware's own pool comes
after. The car's `status` line reads gc.mem_alloc() after building the line's own strings,
which counts a few hundred bytes of the command itself (so the car's figure errs high).

- peak: the largest sample of a run (live heap, after a collection; transient garbage
  between collections is not counted), in KB (1024 bytes).
- drift: the sample(s) at the end minus those at message ~50: car, the cycle-end sample
  after message 50 vs the one after the last message; station, the mean over one reserve/release
  period (4 messages) ending at message 52 vs the last period. A leak of one GC block (32
  bytes on this port) per message shows as ~30 KB after 1,000 messages; 1 KB is one block
  per ~30 messages. (Checked: a firmware copy that keeps a bytearray(8) per message, given
  with `--firmware DIR`, shows ~11 KB of drift after 200 messages, both boards.)

`--runs` runs (3), medians reported. The unix port is 64-bit: objects are about twice
their size on the ESP32 (see boards/virtual/README.md), so these figures overstate the
ESP32's. Exit status 0 when the measurement ran (with `--check` also only when the goals
peak <= 48 KB and drift <= 1 KB are met), 1 when a board failed (MemoryError, a traceback,
no reaction) or a goal was missed with --check, 2 when it could not run. The last line is:

    firmware heap peak: car A KB, station B KB; drift after 1000 messages: car C KB, station D KB

Every process the bench starts (broker, boards) is stopped by its pid, also on an error.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from boards.virtual.board import BoardError, VirtualBoard
from harness.broker import Broker, BrokerError
from harness.clients import connect_client
from recarga.core.protocol import access as ACL
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.devices.provision import pinned_ca

REGION = "berlin"
GATEWAY_PASSWORD = "gw-heap-pw"
CAR_DIR, STATION_DIR = ROOT / "boards" / "car", ROOT / "boards" / "station"
FIRMWARE = ROOT / "firmware"  # --firmware: another tree with car/, station/ and lib/
POSITION = (52.52250, 13.40200)  # Hackescher Markt; the car stands still
CYCLE = 10  # car messages per reserve cycle
FAULTS = 6  # faulted-with-offer events per cycle
BASELINE = 50  # drift is measured from about this message
GOAL_PEAK_KB, GOAL_DRIFT_KB = 48.0, 1.0
KB = 1024.0
WAIT_S = 10.0  # for any one reaction of a board


class BenchError(RuntimeError):
    """A board did not react, or failed (the message says which and shows its serial)."""


def car_id(run: int) -> str:
    return f"car-heap-{run}"


def station_id(run: int) -> str:
    return f"st-heap-{run}"


def gateway_user(board: str, run: int) -> str:
    return f"gw-{board}-{run}"


def password(dev: str) -> str:
    return GATEWAY_PASSWORD if dev == "gateway" else f"{dev}-pw"


def heap_total(heapsize: str) -> int:
    """The GC heap's size in bytes (mem_alloc + mem_free) of a virtual board started as the
    boards are: its main.py prints micropython.mem_info(). (The unix port aligns the heap it
    mallocs, so the figure can differ by a 128-byte step between processes; only the
    station's figures depend on it.)"""
    board = VirtualBoard(STATION_DIR / "diagram.json", {"main.py": b"import micropython\nmicropython.mem_info()\n"},
                         name="heap-probe", heapsize=heapsize, proxy=False)
    try:
        board.start()
        line = _expect(board, "GC: total: ", 0)
    finally:
        board.stop()
    return int(re.search(r"GC: total: (\d+)", line).group(1))


# ---------------------------------------------------------------- the gateway side


class Gateway:
    """A broker user with the gateway's ACL (gateway_user(board, run): the broker binds client
    ids to users, so each board's gateway side is a user of its own) as a
    harness.clients.MqttClient subscribed to `topics`; what it receives, in order, as
    (topic, payload)."""

    def __init__(self, broker: Broker, topics: Sequence[str], user: str):
        try:
            self._c = connect_client(broker, user, GATEWAY_PASSWORD)
        except (ConnectionError, TimeoutError) as e:  # refused, or no CONNACK
            raise BenchError(f"the gateway client: {e}") from None
        try:
            for t in topics:
                self._c.subscribe(t, 1)
        except (ConnectionError, TimeoutError) as e:
            self.close()
            raise BenchError(f"the gateway client: {e}") from None

    def received(self) -> list[tuple[str, bytes]]:
        return [(m.topic, bytes(m.payload)) for m in self._c.messages()]

    def publish(self, topic: str, msg: dict) -> None:
        try:
            self._c.publish(topic, W.encode(msg), qos=1, timeout=WAIT_S)
        except TimeoutError:
            raise BenchError(f"publish to {topic} not acknowledged within {WAIT_S} s") from None

    def wait_for(self, pred: Callable[[list[tuple[str, bytes]]], object], timeout: float, what: str):
        """pred(what was received so far)'s first truthy value, checked as messages arrive."""
        try:
            return self._c.wait(lambda: pred(self.received()), timeout, what)
        except TimeoutError:
            raise BenchError(f"gateway: no {what} within {timeout} s") from None

    def close(self) -> None:
        self._c.close()


# ---------------------------------------------------------------- boards


def _config(board_dir: Path, dev: str, broker: Broker, **changes) -> dict:
    cfg = json.loads((board_dir / "config.json").read_text())
    cfg.update(id=dev, region=REGION)
    cfg["broker"].update(host=broker.host, port=broker.port, user=dev, password=password(dev), keepalive=30)
    if broker.ca_file is not None:  # TLS: the CA pinned, the broker's name checked
        cfg["broker"].update(ca=pinned_ca(broker.ca_file), server_name=broker.server_name)
    cfg.update(changes)
    return cfg


def _pot_for(cfg: dict, soc: float) -> float:
    """pot1's position (SIG = position x 3.3 V) that the car reads as `soc`."""
    curve, divider = cfg["battery"]["curve"], cfg["battery"]["divider"]
    for (v0, s0), (v1, s1) in pairwise(curve):
        if s0 <= soc <= s1:
            return (v0 + (soc - s0) / (s1 - s0) * (v1 - v0)) / divider / 3.3
    raise ValueError(soc)


def _start_board(board_dir: Path, cfg: dict, work: Path, name: str, heapsize: str, firmware: Path,
                 before: Callable[[VirtualBoard], None] | None = None) -> VirtualBoard:
    path = work / f"{name}.json"
    path.write_text(json.dumps(cfg, indent=1))
    files = {"": firmware / board_dir.name, "lib": firmware / "lib", "config.json": path}
    board = VirtualBoard(board_dir / "diagram.json", files, name=name, heapsize=heapsize)
    if before is not None:
        before(board)
    board.start()
    return board


def _check(board: VirtualBoard) -> None:
    text = board.serial_text()
    for bad in ("MemoryError", "Traceback", "memory allocation failed"):
        if bad in text:
            i = text.index(bad)
            raise BenchError(f"{board.name}: {bad} on the serial port:\n{text[max(0, i - 1500):i + 500]}")
    if board.error:
        raise BenchError(f"{board.name}: {board.error}")
    if board.boots != 1:
        raise BenchError(f"{board.name}: rebooted ({board.boots} boots):\n{text[-2000:]}")


def _expect(board: VirtualBoard, text: str, since: int, timeout: float = WAIT_S) -> str:
    try:
        return board.wait_serial(text, timeout=timeout, since=since)
    except TimeoutError:
        _check(board)
        tail = "\n".join(board.serial_lines()[-15:])
        raise BenchError(f"{board.name}: no serial line with {text!r} within {timeout} s; last lines:\n{tail}") from None


@dataclass
class Result:
    board: str
    boot_heap: int = 0
    samples: list[tuple[int, int]] = field(default_factory=list)  # (messages so far, bytes in use)
    seconds: float = 0.0
    baseline: list[int] = field(default_factory=list)
    final: list[int] = field(default_factory=list)

    @property
    def peak_kb(self) -> float:
        return (max(b for _, b in self.samples) - self.boot_heap) / KB

    @property
    def drift_kb(self) -> float:
        return (statistics.fmean(self.final) - statistics.fmean(self.baseline)) / KB

    def line(self) -> str:
        lo = min(b for _, b in self.samples) - self.boot_heap
        return (f"{self.board:7s} peak {self.peak_kb:5.1f} KB, drift {self.drift_kb:+5.2f} KB "
                f"(firmware {lo / KB:.1f}-{self.peak_kb:.1f} KB over {len(self.samples)} samples, emulation "
                f"{self.boot_heap / KB:.1f} KB, {self.seconds:.0f} s)")


# ---------------------------------------------------------------- station


def run_station(broker: Broker, run: int, work: Path, n: int, heapsize: str, firmware: Path, total: int,
                log: Callable[[str], None]) -> Result:
    sid = station_id(run)
    status_t = D.station_topic(REGION, sid, "status")
    cmd_t = D.station_topic(REGION, sid, "cmd")
    gw = Gateway(broker, [status_t], gateway_user("station", run))
    board = None
    try:
        cfg = _config(STATION_DIR, sid, broker, log="debug", heartbeat_s=3600)
        board = _start_board(STATION_DIR, cfg, work, "station", heapsize, firmware)
        _expect(board, "mqtt: connected", 0, 20)
        _expect(board, "status sent, seq 0 ", 0)
        res = Result("station", board.boot_heap)
        pat = re.compile(r"status sent, seq (\d+) heap free (\d+)")
        t0 = time.monotonic()
        for k in range(n):
            cmd = "reserve" if k % 4 < 2 else "release"
            slot = 1 + k % 2
            mark = board.mark()
            gw.publish(cmd_t, D.station_cmd(cmd, slot, f"r{k:011x}" if cmd == "reserve" else None,
                                            time.time() + 600 if cmd == "reserve" else None))
            line = _expect(board, f"status sent, seq {k + 1} heap", mark)
            free = int(pat.search(line).group(2))
            res.samples.append((k + 1, total - free))
            if (k + 1) % 100 == 0:
                log(f"station: {k + 1} commands, firmware {(total - free - res.boot_heap) / KB:.1f} KB")
        res.seconds = time.monotonic() - t0
        gw.wait_for(lambda got: sum(1 for t, _ in got if t == status_t) >= n + 1, WAIT_S, f"{n + 1} statuses")
        _check(board)
        period = 4
        base_end = min(BASELINE + 2, max(period, n // 2))
        res.baseline = [b for k, b in res.samples[base_end - period:base_end]]
        res.final = [b for k, b in res.samples[-period:]]
        return res
    finally:
        if board is not None:
            board.stop()
        gw.close()


# ---------------------------------------------------------------- car


class FakeGateway:
    """The gateway's side of the car's conversation: reservations, replies and events."""

    def __init__(self, gw: Gateway, car: str):
        self.gw = gw
        self.car = car
        self.reply_t = D.car_topic(REGION, car, "reply")
        self.request_t = D.car_topic(REGION, car, "request")
        self.seen = 0  # requests consumed
        self.n = 0

    def reservation(self, rid: str, state: str) -> dict:
        now = time.time()
        return {"id": rid, "station": "st-alex", "slot": 1 + self.n % 2, "state": state, "distance_km": 1.02,
                "eta": round(now + 120), "wait_min": 0.0, "charge_min": 215.9, "energy_kwh": 39.44,
                "power_kw": 11.0, "price_eur": 17.75, "hold_until": round(now + (120 if state == "held" else 720))}

    def fresh(self) -> str:
        self.n += 1
        return f"r{self.n:011x}"

    def next_request(self, op: str, reservation: str | None = None) -> dict:
        """The car's next request (skipping older confirms of offers it has moved on from)."""
        def find(got):
            reqs = [json.loads(p) for t, p in got if t == self.request_t]
            for i in range(self.seen, len(reqs)):
                r = reqs[i]
                if r["op"] == op and (reservation is None or r.get("reservation") == reservation):
                    self.seen = i + 1
                    return r
            return None
        r = self.gw.wait_for(find, WAIT_S, f"{op} request from the car")
        D.parse_car_request(self.car, W.encode(r))  # the car's request passes the gateway's validator
        return r

    def peek_request(self, op: str) -> None:
        self.gw.wait_for(lambda got: any(json.loads(p)["op"] == op for t, p in
                                         [x for x in got if x[0] == self.request_t][self.seen:]),
                         WAIT_S, f"{op} request from the car")

    def send(self, msg: dict) -> None:
        self.gw.publish(self.reply_t, msg)


def run_car(broker: Broker, run: int, work: Path, n: int, heapsize: str, firmware: Path, total: int,
            log: Callable[[str], None]) -> Result:
    car = car_id(run)
    gw = Gateway(broker, [D.car_topic(REGION, car, "request")], gateway_user("car", run))
    fake = FakeGateway(gw, car)
    board = None
    try:
        cfg = _config(CAR_DIR, car, broker, log="info", telemetry_s=30,
                      route={"speed_kmh": 0, "loop": True, "points": [list(POSITION)]})
        cfg["regions"] = [{"name": REGION, "host": broker.host, "port": broker.port,
                           "bounds": [52.33, 13.08, 52.68, 13.77]}]
        board = _start_board(CAR_DIR, cfg, work, "car", heapsize, firmware,
                             before=lambda b: b.set_pot("pot1", _pot_for(cfg, 0.6)))
        _expect(board, "mqtt: connected", 0, 20)
        res = Result("car", board.boot_heap)
        sent = 0

        def send(msg: dict, reaction: str, then_sample: bool = True) -> None:
            nonlocal sent
            mark = board.mark()
            fake.send(msg)
            _expect(board, reaction, mark)
            sent += 1
            if then_sample:
                sample()

        def sample() -> int:
            mark = board.mark()
            board.write_serial("status\r")
            line = _expect(board, f"{car}: ", mark)
            m = re.search(r"heap (\d+) used (\d+) free", line)
            if not m:
                raise BenchError(f"car: unexpected status line {line!r}")
            res.samples.append((sent, int(m.group(1))))
            return int(m.group(1))

        board.set_pot("pot1", _pot_for(cfg, 0.12))  # low from now on: the car keeps asking
        t0 = time.monotonic()
        cycles = n // CYCLE
        base_cycle = min(max(1, BASELINE // CYCLE), cycles // 2)
        for c in range(1, cycles + 1):
            req = fake.next_request("reserve")
            cur = fake.fresh()
            send(D.ok_reply(req["rid"], "reserve", fake.reservation(cur, "held")), f"({cur} held)")
            for _ in range(FAULTS):
                new = fake.fresh()
                send(D.car_event("faulted", fake.reservation(cur, "faulted"), offer=fake.reservation(new, "held")),
                     f"({new} held)")
                cur = new
            req = fake.next_request("confirm", cur)
            send(D.ok_reply(req["rid"], "confirm", fake.reservation(cur, "confirmed")), f"confirmed {cur}")
            send(D.car_event("expired", fake.reservation(cur, "expired")), f"reservation {cur} expired: asking again")
            stale = f"r{fake.n + 10**6:011x}"
            send(D.car_event("expired", fake.reservation(stale, "expired")), "not the current reservation, ignored",
                 then_sample=False)
            fake.peek_request("reserve")  # every cycle-end sample in the same state: low, asking again
            used = sample()
            if c == base_cycle:
                res.baseline = [used]
            if c % 10 == 0:
                log(f"car: {sent} messages, firmware {(used - res.boot_heap) / KB:.1f} KB")
        res.final = [used]
        res.seconds = time.monotonic() - t0
        _check(board)
        return res
    finally:
        if board is not None:
            board.stop()
        gw.close()


# ---------------------------------------------------------------- main


def run_bench(args: argparse.Namespace) -> int:
    if args.messages < 20:
        print("firmware_heap: --messages must be at least 20", file=sys.stderr)
        return 2
    args.messages = -(-args.messages // CYCLE) * CYCLE  # whole car cycles
    verbose = args.verbose
    lock = threading.Lock()

    def log(msg: str) -> None:
        if verbose:
            with lock:
                print("  " + msg, flush=True)

    total = heap_total(args.heapsize)
    boards = ["car", "station"] if args.board == "both" else [args.board]
    print(f"firmware heap: {', '.join(boards)} on the virtual board {'over plain TCP' if args.plain else 'over TLS'}, "
          f"micropython -X heapsize={args.heapsize} "
          f"({total} bytes of heap), {args.messages} messages per board, {args.runs} run(s)", flush=True)
    work = Path(tempfile.mkdtemp(prefix="firmware-heap-"))
    broker = None
    results: dict[str, list[Result]] = {b: [] for b in boards}
    try:
        try:
            runs = range(1, args.runs + 1)
            cars, stations = [car_id(r) for r in runs], [station_id(r) for r in runs]
            gws = [gateway_user(b, r) for r in runs for b in ("car", "station")]
            broker = Broker.launch(work / "broker", region=REGION, gateway_user="gateway", cars=cars,
                                   stations=stations, passwords={d: password(d) for d in ["gateway", *cars, *stations]}
                                   | {g: GATEWAY_PASSWORD for g in gws},
                                   extra_acl={g: ACL.acl_gateway(REGION) for g in gws}, tls=not args.plain)
        except BrokerError as e:
            print(f"firmware_heap: cannot start the broker: {e}", file=sys.stderr)
            return 2
        runners = {"car": run_car, "station": run_station}
        # all at once by default: each board is its own process with its own heap, and the
        # boards mostly wait on the network (each message waits for its reaction)
        batches = [list(range(1, args.runs + 1))] if not args.sequential else [[r] for r in range(1, args.runs + 1)]
        for batch in batches:
            jobs = []
            for r in batch:
                run_dir = work / f"run{r}"
                run_dir.mkdir()
                jobs += [(r, b, run_dir) for b in boards]
            with ThreadPoolExecutor(len(jobs)) as ex:
                futs = [(r, b, ex.submit(runners[b], broker, r, d, args.messages, args.heapsize,
                                         args.firmware.resolve(), total,
                                         lambda m, r=r: log(f"run {r}: {m}")))
                        for r, b, d in jobs]
                failed = []
                for r, b, f in futs:
                    try:
                        res = f.result()
                    except BenchError as e:
                        failed.append(f"run {r}, {b}: {e}")
                        continue
                    results[b].append(res)
                    print(f"run {r}: {res.line()}", flush=True)
            if failed:
                print("firmware_heap: FAILED\n" + "\n".join(failed), file=sys.stderr)
                return 1
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)

    def med(b: str, what: str) -> float:
        if b not in results:
            return float("nan")
        return statistics.median(getattr(x, what) for x in results[b])

    peak = {b: med(b, "peak_kb") for b in ("car", "station")}
    drift = {b: med(b, "drift_kb") for b in ("car", "station")}
    missed = [f"{b} peak {peak[b]:.1f} KB > {GOAL_PEAK_KB:.0f}" for b in boards if peak[b] > GOAL_PEAK_KB]
    missed += [f"{b} drift {drift[b]:.1f} KB > {GOAL_DRIFT_KB:.0f}" for b in boards if drift[b] > GOAL_DRIFT_KB]
    print(f"goal (peak <= {GOAL_PEAK_KB:.0f} KB, drift <= {GOAL_DRIFT_KB:.0f} KB): "
          + ("met" if not missed else "NOT met: " + "; ".join(missed)))
    print(f"firmware heap peak: car {peak['car']:.1f} KB, station {peak['station']:.1f} KB; "
          f"drift after {args.messages} messages: car {drift['car']:.1f} KB, station {drift['station']:.1f} KB",
          flush=True)
    return 1 if args.check and missed else 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1000, help="messages per board and run (default 1000)")
    ap.add_argument("--runs", type=int, default=3, help="runs, medians reported (default 3)")
    ap.add_argument("--board", choices=("both", "car", "station"), default="both")
    ap.add_argument("--sequential", action="store_true", help="one run after the other (default: all at once)")
    ap.add_argument("--heapsize", default="96k", help="micropython -X heapsize (default 96k)")
    ap.add_argument("--firmware", type=Path, default=FIRMWARE,
                    help="firmware tree with car/, station/, lib/ (default: the repository's firmware/)")
    ap.add_argument("--check", action="store_true", help="exit 1 when a goal (peak 48 KB, drift 1 KB) is missed")
    ap.add_argument("--plain", action="store_true", help="plain TCP instead of TLS (for comparison)")
    ap.add_argument("-v", "--verbose", action="store_true", help="progress every 100 messages")
    args = ap.parse_args(argv)
    try:
        return run_bench(args)
    except (BenchError, BoardError) as e:  # before any board ran (the heap probe)
        print(f"firmware_heap: cannot run: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
