"""The gateway's throughput and latency under load over a real broker, against an echo ceiling.

Run from the repo root (about 2-3 minutes on 2 cores with the defaults):

    .venv/bin/python bench/gateway_load.py [--cars 1000] [--seconds 5] [--quick]

What runs, all on 127.0.0.1:

- one Mosquitto from harness.broker with the production conf template (auth + ACL,
  its in-flight and queue limits, printed). Every simulated car and station is
  a broker user with its own password, ACL block and TCP connection: `--cars` cars (1000)
  and `--stations` stations (400) of Berlin's register, plus one probe car.
- the responder, its own process (harness.services.ServiceProcess), one at a time
  (bench/loadgen/responders.py):
  * the gateway exactly as deployed: `python -m recarga.gateway.cli run --config gateway.toml`
    with deploy/gateway.example.toml's settings (station file: the whole register, 4,528
    stations of which `--stations` are online; policy least_completion; log_level INFO;
    synchronous FULL, fsynced in the commit, or with `--sync-thread` on the syncer thread),
    except hold_s 3600 and max_wait_s 86400 so that offers neither lapse during the bench
    nor are refused for a long queue. Without --quick a second
    gateway with synchronous NORMAL (fresh database) gives the figure without fsyncs.
  * the echo (bench/loadgen/echo.py): same broker user (the gateway's ACL) and the
    gateway's paho-mqtt options (MQTT 3.1.1, clean_session False, manual_ack, QoS 1,
    paho's network thread); per request it publishes a fixed small JSON reply to the
    car's reply topic, then acknowledges the request. No parsing, no decision, no
    database: what the broker, paho and this driver cost.
- the driver, this process: the fleet (bench/loadgen/fleet.py), every car and station a
  paho-mqtt 2.x client, all driven by one thread through one epoll selector and paho's
  external-loop API (loop_read / loop_write / loop_misc). Stations publish retained
  `online` and `status` (a quarter of the slots occupied) and stay subscribed to their
  `cmd` topic, as boards are (they do not publish a new status when told to reserve).

Workload (bench/loadgen/workload.py): cars sit within 1.5 km of an online station with
state of charge 0.1-0.3, 40-80 kWh batteries, 15-20 kWh/100 km, AC 7.4-22 kW, DC 0-150 kW,
target 0.8. Each car has one request outstanding at a time, QoS 1, a fresh request id each. With `--workload
reserve-cancel` (default) a car cancels the reservation it got with its next request and
then reserves again, so about half the cars hold a reservation at any time; every request
is written to SQLite and answered, and sends a reserve or release command to a station. With
`--workload reserve` every request is a reserve that replaces the car's reservation: 1000
cars then overbook the ~600 slots and the queues (and the decision time) keep growing.

Two measurements per responder, `--runs` times each (3; 1 with --quick), medians reported:

(a) max throughput, closed loop: all cars ask at once and each asks again as soon as it
    has its answer; answers per second over `--seconds` after a 1 s warm-up.
(b) latency at a fixed offered rate of half the echo's closed-loop throughput, open loop:
    Poisson arrival times, each request from the car idle longest (one due while every car
    still waits is "not sent": the responder is saturated); latency from the publish call
    to the answer in the driver; p50/p99 over the requests sent in the `--seconds` window
    after a 0.5 s warm-up. A request the broker dropped (beyond its queue for the responder,
    max_queued_messages) is "lost".

What bounds each side (every run prints the CPU of broker, responder and driver, 100 % =
one core, and the share of the 2 cores left idle):

- echo: the machine. The echo's paho work, the driver's (about as much per request: the
  car side of the wire, which real cars pay on their own CPUs) and the broker's four
  messages per request fill both cores (idle ~10 %). No single process is at one core, so
  none of them alone is the limit; a cheaper driver would raise E. E is thus the ceiling
  of paho + Mosquitto on this machine, and if anything an underestimate.
- gateway: the gateway's own process. Its one loop thread (paho, engine, commits; a second
  thread only checkpoints SQLite) sits at up to ~100 % of one core while the broker and the
  driver idle; py-spy (`--profile`) shows where.
  So R compares the gateway's code with what the same plumbing achieves without it; with
  more cores (or a cheaper driver) E would grow and G would not, so R would only shrink.

The results depend on the TCP stack too: neither Mosquitto (set_tcp_nodelay false by
default) nor paho disables Nagle's algorithm, so at low load a reply can wait for a
delayed ACK (~40 ms on Linux); `--nodelay` shows the figures without it (TCP_NODELAY on
the driver's sockets and set_tcp_nodelay in the broker; the responders' sockets stay as
they are). `--broker-conf` appends lines to the generated broker conf for what-if runs.

The database lives in a temporary directory (`--dir` picks another one, e.g. on the SD card
of a Raspberry Pi, where an fsync costs far more); its filesystem is printed. The last
line is the result, its p99 figures from the open-loop runs at half the echo throughput:

    gateway/echo throughput ratio: R (gateway G req/s, echo E req/s, p99 gateway X ms, echo Y ms)

`--rate R` runs only the open-loop measurements, echo and gateway side by side in one run at
R req/s offered, with no closed loop: for comparing two builds at the same load (the echo's
closed-loop throughput, and with it the default rate, varies by +-25% between runs on a shared
machine). Its last line is:

    open loop at R req/s (--rate): gateway p50 A ms, p99 B ms; echo p50 C ms, p99 D ms

`--profile FILE` adds an uncounted closed-loop gateway run under py-spy (400 samples/s; `pip install
py-spy`) sampling the thread that holds the GIL, written to FILE (.svg flame graph, .json
speedscope, otherwise collapsed stacks). Every process the bench starts (broker,
responders, py-spy) is stopped by its pid, also on Ctrl-C or an error.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import paho.mqtt

from bench.loadgen import echo, responders
from bench.loadgen.cpu import CpuMeter
from bench.loadgen.fleet import Fleet, RunResult
from bench.loadgen.workload import car_fields, choose_stations
from harness.broker import Broker, require_tool
from harness.clients import cli_drop_session
from harness.process import ChildProcess
from harness.services import ServiceProcess
from harness.wait import wait_until
from recarga.core.protocol import device as D

REGION = "bench"
GATEWAY_USER = "gateway"
PROBE_CAR = "probe"
HOST = "127.0.0.1"
STOP_S = 15.0  # a responder's clean shutdown, before SIGKILL


def start_broker(directory: Path, extra_conf: Sequence[str], **kwargs) -> Broker:
    """harness.broker.Broker.launch, restarted with `extra_conf` lines appended to the
    generated conf (what-if experiments only; none by default)."""
    broker = Broker.launch(directory, **kwargs)
    if extra_conf:
        with open(broker.conf_path, "a") as f:
            f.write("\n# bench/gateway_load.py --broker-conf\n" + "".join(f"{line}\n" for line in extra_conf))
        broker.restart()
    return broker


def conf_value(conf: Path, key: str, default: int) -> int:
    """The last `key N` line of a Mosquitto conf (what --broker-conf appends wins), else default."""
    value = default
    for line in Path(conf).read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key and parts[1].isdigit():
            value = int(parts[1])
    return value


def filesystem_of(path: Path) -> str:
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt = parts[1].replace("\\040", " ")
                if str(path).startswith(mnt) and len(mnt) > len(best):
                    best, kind = mnt, f"{parts[2]} on {parts[0]}"
    except OSError:
        pass
    return kind


def fmt_cpu(cpu: dict[str, float]) -> str:
    parts = [f"{k} {v:.0f}%" for k, v in cpu.items() if k != "idle"]
    return "cpu " + " ".join(parts) + f" (idle {cpu.get('idle', math.nan):.0f}% of all cores)"


def report(r: RunResult, runs_label: str) -> None:
    counts = [f"{r.answers} answers", f"{r.errors} errors", f"{r.lost} lost"]
    if r.stray:
        counts.append(f"{r.stray} stray")
    if r.offered:
        counts += [f"offered {r.offered:.0f}/s", f"{r.not_sent} not sent", f"send lag p99 {r.lag_p99_ms:.1f} ms"]
    print(f"  {r.label:<15s} {runs_label}: {r.throughput:6.0f} req/s  p50 {r.p50_ms:7.1f} ms  p99 {r.p99_ms:7.1f} ms  "
          f"[{', '.join(counts)}]  {fmt_cpu(r.cpu)}", flush=True)


def median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def run_bench(args: argparse.Namespace) -> int:
    runs = 1 if args.quick else args.runs
    warm_closed, warm_open = (0.5, 0.3) if args.quick else (1.0, 0.5)
    seconds = args.seconds
    rng = random.Random(args.seed)
    everything, online = choose_stations(args.stations, rng)
    cars = [f"car{i:05d}" for i in range(args.cars)]
    passwords = {GATEWAY_USER: secrets.token_urlsafe(12), PROBE_CAR: secrets.token_urlsafe(12)}
    passwords.update({c: secrets.token_urlsafe(12) for c in cars})
    passwords.update({s.id: secrets.token_urlsafe(12) for s in online})
    extra_conf = list(args.broker_conf or [])
    if args.nodelay:
        extra_conf.append("set_tcp_nodelay true")
    version = subprocess.run([require_tool("mosquitto"), "-h"], capture_output=True, text=True, check=False).stdout
    version = version.splitlines()[0].strip() if version else "mosquitto"

    root = Path(args.dir).resolve() if args.dir else None
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="recarga-gateway-load-", dir=root))
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, paho-mqtt {paho.mqtt.__version__}, "
          f"{version}; work dir {work} ({filesystem_of(work)})", flush=True)

    broker = None
    responder: ServiceProcess | None = None
    profiler: ChildProcess | None = None
    fleet: Fleet | None = None
    t_start = time.monotonic()
    try:
        t0 = time.monotonic()
        broker = start_broker(work / "broker", extra_conf, region=REGION, gateway_user=GATEWAY_USER,
                              cars=[*cars, PROBE_CAR], stations=[s.id for s in online], passwords=passwords,
                              host=HOST)
        inflight = conf_value(broker.conf_path, "max_inflight_messages", 20)
        queued = conf_value(broker.conf_path, "max_queued_messages", 1000)
        print(f"broker: pid {broker.pid} on {HOST}:{broker.port}, production conf template (auth + ACL, "
              f"max_inflight_messages {inflight}, max_queued_messages {queued})"
              + (f" plus {'; '.join(extra_conf)}" if extra_conf else "")
              + f", {len(passwords)} users (generated in {time.monotonic() - t0:.1f} s)", flush=True)

        t0 = time.monotonic()
        fleet = Fleet(HOST, broker.port, REGION, nodelay=args.nodelay)
        fleet.alternate = args.workload == "reserve-cancel"
        station_states = []
        for s in online:
            slots = ["occupied" if rng.random() < 0.25 else "free" for _ in s.slots]
            station_states.append((s.id, passwords[s.id], slots))
        fleet.add_stations(station_states)
        fleet.add_cars([(c, passwords[c], car_fields(rng, online)) for c in cars])
        fleet.add_probe(PROBE_CAR, passwords[PROBE_CAR], car_fields(rng, online))
        n_slots = sum(len(s.slots) for s in online)
        print(f"clients: {len(online)} stations online ({n_slots} slots, a quarter occupied), {len(cars)} cars "
              f"+ 1 probe car; {len(fleet.clients)} connections driven by 1 thread (pid {os.getpid()})"
              + (" with TCP_NODELAY" if args.nodelay else "")
              + f", connected in {time.monotonic() - t0:.1f} s", flush=True)
        if args.register:
            print(f"gateway station file: the whole register ({len(everything)} stations, "
                  f"{len(online)} of them online)", flush=True)
        else:
            print(f"gateway station file: the {len(online)} online stations only", flush=True)
        if 2 * len(online) > queued - 100:
            print(f"  WARNING: {2 * len(online)} retained station messages reach the gateway at once when it "
                  f"subscribes, about the broker's queue per client (max_queued_messages {queued}): the rest are "
                  "dropped and those stations stay unknown to the gateway")
        if len(cars) >= queued - 20:
            print(f"  note: up to {len(cars)} requests wait for the responder at once; beyond "
                  f"max_queued_messages {queued} the broker drops them (counted as lost)")

        drain_s = 120.0
        results: dict[str, list[RunResult]] = {}

        def start_responder(kind: str, d: Path) -> ServiceProcess:
            nonlocal responder
            responder = responders.responder(kind, d).start()
            fleet.forget_holds()
            ready = fleet.wait_ready(responder)
            print(f"{kind}: pid {responder.pid}, answering {ready:.1f} s after its start", flush=True)
            return responder

        def stop_responder() -> None:
            nonlocal responder
            if responder is not None:
                responder.stop(STOP_S)
                responder = None

        def closed_runs(kind: str, r: ServiceProcess, tag: str) -> list[RunResult]:
            meter = CpuMeter({"broker": broker.pid, kind: r.pid})
            out = []
            for i in range(runs):
                res = fleet.closed_loop(f"{kind} closed", f"{tag}c{i}-", warm_closed, seconds, meter, drain_s)
                report(res, f"run {i + 1}/{runs}")
                r.alive()
                out.append(res)
            return out

        def open_runs(kind: str, r: ServiceProcess, tag: str, rate: float) -> list[RunResult]:
            meter = CpuMeter({"broker": broker.pid, kind: r.pid})
            out = []
            for i in range(runs):
                res = fleet.open_loop(f"{kind} open", f"{tag}o{i}-", rate, warm_open, seconds, meter, drain_s,
                                      seed=args.seed + i)
                report(res, f"run {i + 1}/{runs}")
                r.alive()
                out.append(res)
            return out

        def responder_files(name: str, synchronous: str = "FULL") -> Path:
            return responders.responder_dir(work / name, region=REGION, host=HOST, port=broker.port,
                                            user=GATEWAY_USER, password=passwords[GATEWAY_USER], online=online,
                                            synchronous=synchronous, register=args.register,
                                            sync_thread=args.sync_thread)

        # ---------------------------------------------------------------- echo
        d = responder_files("echo")
        r = start_responder("echo", d)
        print(f"(a) max throughput: closed loop, {len(cars)} cars, {seconds:g} s after {warm_closed:g} s warm-up",
              flush=True)
        if args.rate:
            rate = args.rate
            print(f"(b) latency at {rate:.0f} req/s offered (--rate; no closed-loop runs): open loop, "
                  f"Poisson arrivals, {seconds:g} s after {warm_open:g} s warm-up", flush=True)
        else:
            results["echo closed"] = closed_runs("echo", r, "e")
            echo_tp = median([x.throughput for x in results["echo closed"]])
            rate = echo_tp / 2
            print(f"(b) latency at {rate:.0f} req/s offered (half the echo's {echo_tp:.0f} req/s): open loop, "
                  f"Poisson arrivals, {seconds:g} s after {warm_open:g} s warm-up", flush=True)
        results["echo open"] = open_runs("echo", r, "e", rate)
        stop_responder()
        # a clean session drops the stopped echo's persistent one, which would queue every
        # later request for it
        cli_drop_session(broker, GATEWAY_USER, echo.client_id(REGION), D.gateway_subscriptions(REGION)[0])

        # ---------------------------------------------------------------- gateway
        d = responder_files("gateway-full", "FULL")
        r = start_responder("gateway", d)
        if not args.rate:
            print("(a) gateway (synchronous FULL): closed loop", flush=True)
            results["gateway closed"] = closed_runs("gateway", r, "g")
        print(f"(b) gateway (synchronous FULL): open loop at {rate:.0f} req/s", flush=True)
        results["gateway open"] = open_runs("gateway", r, "g", rate)
        if args.profile:
            profiler = start_profiler(args.profile, r.pid, warm_closed + seconds, work / "py-spy.log")
            if profiler is not None:
                res = fleet.closed_loop("gateway py-spy", "gp-", warm_closed, seconds,
                                        CpuMeter({"broker": broker.pid, "gateway": r.pid}), drain_s)
                report(res, "not counted")
                try:
                    wait_until(lambda: not profiler.running, 30, "py-spy writing its profile")
                except TimeoutError:
                    pass
                profiler.stop()
                profiler = None
                print(f"  profile written to {args.profile}", flush=True)
        stop_responder()

        if not args.quick and not args.no_normal and not args.rate:
            d = responder_files("gateway-normal", "NORMAL")
            r = start_responder("gateway", d)
            print("(a') gateway (synchronous NORMAL, fresh database): closed loop", flush=True)
            results["gateway NORMAL closed"] = closed_runs("gateway", r, "n")
            stop_responder()

        # ---------------------------------------------------------------- summary
        dropped = "messages are being dropped" in broker.log_text().lower()
        fleet.close()
        fleet = None
        broker.stop()

        def med(key: str, attr: str) -> float:
            return median([getattr(x, attr) for x in results.get(key, [])])

        gw_p99, e_p99 = med("gateway open", "p99_ms"), med("echo open", "p99_ms")
        if args.rate:
            print(f"  goal: gateway p99 under 2x echo p99 at the same offered rate: "
                  f"{'met' if gw_p99 < 2 * e_p99 else 'NOT met'}")
            print(f"open loop at {rate:.0f} req/s (--rate): gateway p50 {med('gateway open', 'p50_ms'):.1f} ms, "
                  f"p99 {gw_p99:.1f} ms; echo p50 {med('echo open', 'p50_ms'):.1f} ms, p99 {e_p99:.1f} ms", flush=True)
            return 0
        gw_tp, e_tp = med("gateway closed", "throughput"), med("echo closed", "throughput")
        ratio = gw_tp / e_tp if e_tp else math.nan
        lost = sum(x.lost for rs in results.values() for x in rs)
        errors = sum(x.errors for rs in results.values() for x in rs)
        print(f"summary (median of {runs} run{'s' if runs > 1 else ''}; {len(cars)} cars, {len(online)} stations "
              f"online; {time.monotonic() - t_start:.0f} s in all):")
        print(f"  max throughput: gateway {gw_tp:.0f} req/s (synchronous FULL), echo {e_tp:.0f} req/s: "
              f"ratio {ratio:.2f} (goal at least 0.8: {'met' if ratio >= 0.8 else 'NOT met'})")
        print(f"  at {rate:.0f} req/s offered: gateway p50 {med('gateway open', 'p50_ms'):.1f} ms, p99 {gw_p99:.1f} ms "
              f"(answering {med('gateway open', 'throughput'):.0f} req/s); echo p50 {med('echo open', 'p50_ms'):.1f} ms, "
              f"p99 {e_p99:.1f} ms")
        if "gateway NORMAL closed" in results:
            n_tp = med("gateway NORMAL closed", "throughput")
            print(f"  gateway with synchronous NORMAL: {n_tp:.0f} req/s (ratio {n_tp / e_tp:.2f})")
        if errors or lost or dropped:
            print(f"  note: {errors} error answers, {lost} requests never answered"
                  + ("; the broker log says it dropped messages for a full client queue" if dropped else ""))
        print("the p99 figures in the last line are from the open-loop runs at half the echo throughput")
        print(f"gateway/echo throughput ratio: {ratio:.2f} (gateway {gw_tp:.0f} req/s, echo {e_tp:.0f} req/s, "
              f"p99 gateway {gw_p99:.1f} ms, echo {e_p99:.1f} ms)", flush=True)
        return 0
    finally:
        if profiler is not None:
            profiler.stop()
        if responder is not None:
            responder.stop(STOP_S)
        if fleet is not None:
            fleet.close()
        if broker is not None:
            broker.stop()
        if args.keep:
            print(f"(work dir kept: {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


def start_profiler(path: str, pid: int, seconds: float, log: Path) -> ChildProcess | None:
    """py-spy sampling process `pid` for `seconds` into `path`, started; None without py-spy."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        print("  --profile: py-spy not found (pip install py-spy); skipped", flush=True)
        return None
    suffix = Path(path).suffix.lower()
    fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(suffix, "raw")
    # --gil: sample the thread holding the GIL, i.e. what bounds a CPU-bound Python process
    proc = ChildProcess("py-spy", [spy, "record", "--gil", "--nonblocking", "-r", "400", "-p", str(pid),
                                   "-d", str(math.ceil(seconds)), "-f", fmt, "-o", str(Path(path).resolve())],
                        log).start()
    time.sleep(0.5)  # let it attach before the run it samples
    return proc


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cars", type=int, default=1000, help="simulated cars, each a broker user (default 1000)")
    ap.add_argument("--stations", type=int, default=400,
                    help="stations of the Berlin register brought online (default 400)")
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run (default 5)")
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement, medians reported (default 3)")
    ap.add_argument("--quick", action="store_true", help="one run each, shorter warm-up, no NORMAL gateway")
    ap.add_argument("--no-normal", action="store_true", help="skip the synchronous NORMAL gateway")
    ap.add_argument("--workload", choices=("reserve-cancel", "reserve"), default="reserve-cancel",
                    help="reserve-cancel (default): each car cancels the reservation it got with its next "
                         "request, then reserves again; reserve: every request is a reserve that replaces "
                         "the car's reservation (overbooks the region when cars outnumber free slots)")
    ap.add_argument("--online-only", dest="register", action="store_false",
                    help="the gateway's station file holds only the online stations (default: the whole "
                         "register, as deploy/gateway.example.toml)")
    ap.add_argument("--nodelay", action="store_true",
                    help="what-if: TCP_NODELAY on the cars' and stations' sockets and set_tcp_nodelay in the broker")
    ap.add_argument("--broker-conf", action="append", metavar="LINE",
                    help="what-if: append a line to the generated mosquitto conf, e.g. 'max_queued_messages 20000'")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="what-if: only the open-loop runs, echo and gateway at this offered rate (req/s), for "
                         "comparing builds at the same load; no closed loop, a last line with both p50 and p99")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", help="parent of the temporary work dir (broker, databases, logs)")
    ap.add_argument("--sync-thread", action="store_true",
                    help="the gateways fsync on a thread of their own (sync_thread = true), e.g. with --dir on a slow disk")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, databases)")
    ap.add_argument("--profile", metavar="FILE", help="extra, uncounted gateway run under py-spy into FILE")
    ap.add_argument("--serve-echo", metavar="TOML", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_echo:
        return echo.serve(args.serve_echo)
    if args.cars < 1 or args.stations < 1 or args.seconds <= 0 or args.runs < 1 or args.rate < 0:
        ap.error("--cars, --stations, --runs must be at least 1 and --seconds above 0")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # also when started with SIGINT ignored (a shell's & job)
    try:
        return run_bench(args)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
