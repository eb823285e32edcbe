"""The gateway's throughput and latency under load over a real broker, against an echo ceiling.

Run from the repo root (about 2-3 minutes on 2 cores with the defaults):

    .venv/bin/python bench/gateway_load.py [--cars 1000] [--seconds 5] [--quick]

What runs, all on 127.0.0.1:

- one Mosquitto from gateway.localbroker with the production conf template (auth + ACL,
  its in-flight and queue limits, printed). Every simulated car and station is
  a broker user with its own password, ACL block and TCP connection: `--cars` cars (1000)
  and `--stations` stations (400) of Berlin's register, plus one probe car.
- the responder, its own process, one at a time:
  * the gateway exactly as deployed: `python -m gateway.cli run --config gateway.toml`
    with deploy/gateway.example.toml's settings (station file: the whole register, 4,528
    stations of which `--stations` are online; policy least_completion; log_level INFO;
    synchronous FULL, fsynced in the commit, or with `--sync-thread` on the syncer thread),
    except hold_s 3600 and max_wait_s 86400 so that offers neither lapse during the bench
    nor are refused for a long queue. Without --quick a second
    gateway with synchronous NORMAL (fresh database) gives the figure without fsyncs.
  * the echo: this script with --serve-echo. Same broker user (the gateway's ACL) and the
    gateway's paho-mqtt options (MQTT 3.1.1, clean_session False, manual_ack, QoS 1,
    paho's network thread); per request it publishes a fixed small JSON reply to the
    car's reply topic, then acknowledges the request. No parsing, no decision, no
    database: what the broker, paho and this driver cost.
- the driver, this process: every car and station client is a paho-mqtt 2.x client, all
  driven by one thread through one epoll selector and paho's external-loop API
  (loop_read / loop_write / loop_misc). Measured against the echo on 2 cores: 1000 clients
  with a loop_start thread each managed ~1,400 req/s with the driver at 134 % CPU; the
  selector ~4,000-6,000 req/s with the driver at ~60-80 %. Stations publish retained
  `online` and `status` (a quarter of the slots occupied) and stay subscribed to their
  `cmd` topic, as boards are (they do not publish a new status when told to reserve).

Workload: cars sit within 1.5 km of an online station with state of charge 0.1-0.3,
40-80 kWh batteries, 15-20 kWh/100 km, AC 7.4-22 kW, DC 0-150 kW, target 0.8. Each car has
one request outstanding at a time, QoS 1, a fresh request id each. With `--workload
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

`--rate R` runs only the open-loop measurements, at R req/s offered, with no closed loop and
no result line: for comparing two builds at the same load (the echo's closed-loop throughput,
and with it the default rate, varies by +-25% between runs on a shared machine).

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
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import paho.mqtt  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from recarga.core import protocol as P  # noqa: E402

REGION = "bench"
GATEWAY_USER = "gateway"
PROBE_CAR = "probe"
BERLIN_CSV = ROOT / "data" / "berlin_charging_stations_bnetza.csv"
HOST = "127.0.0.1"
KM_PER_DEG = 6371.0088 * math.pi / 180.0
ECHO_REPLY = P.encode({"v": P.VERSION, "ok": True, "echo": True})
RID_MARK = "RIDMARK"  # placeholder in a car's request template, replaced by each fresh rid
RES_MARK = "RESMARK"  # placeholder for the reservation id in a cancel template
RESERVATION_ID = b'"reservation":{"id":"'
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ====================================================================== echo responder

def serve_echo(config_path: str) -> int:
    """The echo responder (a child process): the gateway's paho setup with nothing behind it."""
    from recarga.gateway import config as C

    cfg = C.load(config_path)
    region, b = cfg.engine.region, cfg.broker
    requests = P.car_filter(region, "request")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"recarga-echo-{region}",
                         protocol=mqtt.MQTTv311, clean_session=False, manual_ack=True)
    client.username_pw_set(b.username, b.password)
    client.max_inflight_messages_set(100)
    stop = threading.Event()

    def on_connect(c, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            print(f"echo: broker refused connection: {reason_code}", flush=True)
            return
        c.subscribe(requests, P.QOS)
        print(f"echo: connected to {b.host}:{b.port}", flush=True)

    def on_message(c, userdata, msg) -> None:
        ref = P.parse_topic(region, msg.topic)
        if ref is not None and ref.kind == "car":
            c.publish(P.car_topic(region, ref.id, "reply"), ECHO_REPLY, qos=P.QOS)
        c.ack(msg.mid, msg.qos)

    client.on_connect = on_connect
    client.on_message = on_message
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    client.connect_async(b.host, b.port, keepalive=b.keepalive)
    client.loop_start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        client.disconnect()
        client.loop_stop()
    return 0


# ====================================================================== processes and CPU

def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def system_idle() -> tuple[float, float]:
    """(idle + iowait, total) jiffies over all cores, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return float(values[3] + values[4]), float(sum(values))


class Responder:
    """The gateway or the echo as a child process, stopped by its pid."""

    def __init__(self, kind: str, argv: list[str], workdir: Path):
        self.kind = kind
        self.argv = argv
        self.log_path = workdir / f"{kind}.log"
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    def start(self) -> Responder:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"{self.kind} exited ({code}); its log ends:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> None:
        from harness.broker import stop_process

        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, timeout=15.0)


class CpuMeter:
    """CPU used by named processes (and the whole machine) between two snapshots."""

    def __init__(self, pids: dict[str, int | None]):
        self.pids = pids

    def snapshot(self) -> tuple[float, dict[str, float], tuple[float, float]]:
        own = os.times()
        procs = {"driver": own.user + own.system}
        for name, pid in self.pids.items():
            if pid is not None:
                try:
                    procs[name] = cpu_seconds(pid)
                except OSError:
                    procs[name] = math.nan
        return time.perf_counter(), procs, system_idle()

    @staticmethod
    def shares(a, b) -> dict[str, float]:
        """Per process: % of one core; "idle": % of all cores left idle."""
        (t0, p0, (i0, s0)), (t1, p1, (i1, s1)) = a, b
        wall = max(t1 - t0, 1e-9)
        out = {name: 100.0 * (p1[name] - p0[name]) / wall for name in p1 if name in p0}
        out["idle"] = 100.0 * (i1 - i0) / max(s1 - s0, 1.0)
        return out


# ====================================================================== the driver's clients

@dataclass(eq=False, slots=True)
class Car:
    name: str
    client: mqtt.Client
    topic: str
    prefix: bytes  # reserve request = prefix + rid + suffix
    suffix: bytes
    cancel: tuple[bytes, bytes, bytes] = (b"", b"", b"")  # cancel = [0] + rid + [1] + reservation + [2]
    seq: int = 0
    sent_at: float | None = None
    holds: bytes | None = None  # reservation to cancel with the next request (workload reserve-cancel)
    cancelling: bool = False  # the outstanding request is a cancel


@dataclass
class RunResult:
    label: str
    throughput: float  # answers per second in the window
    p50_ms: float
    p99_ms: float
    answers: int
    errors: int  # answers with ok false (no_capacity, ...)
    lost: int  # requests never answered within the drain time
    not_sent: int = 0  # open loop: due while every car was waiting
    offered: float = 0.0
    lag_p99_ms: float = 0.0  # open loop: how late the driver published against the schedule
    stray: int = 0  # answers to requests of an earlier run (given up on) or unsolicited events
    cpu: dict[str, float] = field(default_factory=dict)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence; nan if empty."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


class Fleet:
    """Many paho clients on one epoll selector in this thread (paho's external-loop API)."""

    def __init__(self, host: str, port: int, region: str, nodelay: bool = False):
        self.host, self.port, self.region = host, port, region
        self.nodelay = nodelay
        self.sel = selectors.DefaultSelector()
        self.clients: list[mqtt.Client] = []
        self.writing: set[mqtt.Client] = set()
        self.cars: list[Car] = []
        self.connected = 0
        self.subacks = 0
        self.pubacks = 0
        self.probe_replies = 0
        self._misc_at = 0.0
        # per run
        self.closed = False  # closed loop: a car asks again as soon as it has its answer
        self.sending = False
        self.idle: deque[Car] = deque()
        self.outstanding = 0
        self.records: list[tuple[float, float, bool]] = []  # (sent, answered, ok)
        self.events = 0
        self.stray = 0
        self.tag = b"r"
        self.alternate = True  # workload reserve-cancel: every car cancels what it got next

    # ------------------------------------------------------------ plumbing

    def _client(self, user: str, password: str, userdata, on_message) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{user}", protocol=mqtt.MQTTv311,
                        clean_session=True, userdata=userdata)
        c.username_pw_set(user, password)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish
        c.on_message = on_message
        return c

    def _on_connect(self, c, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            raise RuntimeError(f"broker refused {c._username!r}: {reason_code}")
        self.connected += 1

    def _on_subscribe(self, c, userdata, mid, reason_codes, properties) -> None:
        if any(rc.is_failure for rc in reason_codes):
            raise RuntimeError(f"subscription refused: {reason_codes}")
        self.subacks += 1

    def _on_publish(self, c, userdata, mid, reason_code, properties) -> None:
        self.pubacks += 1

    def connect_all(self, specs: list[tuple[str, str, object, Callable]], batch: int = 100,
                    timeout: float = 60.0) -> list[mqtt.Client]:
        """Connect (user, password, userdata, on_message) clients, `batch` at a time."""
        made = []
        for i in range(0, len(specs), batch):
            want = self.connected + len(specs[i:i + batch])
            for user, password, userdata, on_message in specs[i:i + batch]:
                c = self._client(user, password, userdata, on_message)
                c.connect(self.host, self.port, keepalive=60)
                if self.nodelay:
                    c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.sel.register(c.socket(), READ, c)
                self.clients.append(c)
                made.append(c)
                self.flush(c)
            self.pump_until(lambda want=want: self.connected >= want, timeout, "CONNACKs")
        return made

    def flush(self, c: mqtt.Client) -> None:
        """Write what paho queued (acks, publishes made in callbacks); watch for writability
        only while a write is pending."""
        if c.want_write():
            rc = c.loop_write()
            if rc != mqtt.MQTT_ERR_SUCCESS:
                raise RuntimeError(f"connection of {c._username!r} failed while writing: {rc}")
        want = c.want_write()
        if want != (c in self.writing):
            self.sel.modify(c.socket(), READ | WRITE if want else READ, c)
            (self.writing.add if want else self.writing.discard)(c)

    def pump(self, timeout: float) -> None:
        for key, mask in self.sel.select(timeout):
            c = key.data
            if mask & READ:
                rc = c.loop_read()
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    raise RuntimeError(f"connection of {c._username!r} lost: {rc}")
            self.flush(c)
        now = time.monotonic()
        if now - self._misc_at > 5.0:  # keepalive pings for quiet clients
            self._misc_at = now
            for c in self.clients:
                c.loop_misc()
                self.flush(c)

    def pump_until(self, cond: Callable[[], bool], timeout: float, what: str,
                   check: Callable[[], None] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
            if check is not None:
                check()
            self.pump(0.05)

    def close(self) -> None:
        for c in self.clients:
            try:
                c.disconnect()  # written at once (no paho thread); the broker then closes
            except (OSError, ValueError):
                pass  # already gone; the broker stop ends it anyway
        self.sel.close()

    # ------------------------------------------------------------ cars

    def add_cars(self, cars: list[tuple[str, str, dict]]) -> None:
        """(name, password, reserve fields) per car; each subscribes to its reply topic."""
        objs = []
        for name, _, fields in cars:
            template = P.encode(P.reserve_request(RID_MARK, name, **fields))
            prefix, suffix = template.split(RID_MARK.encode())
            cancel = P.encode(P.reservation_request("cancel", RID_MARK, name, RES_MARK))
            c0, rest = cancel.split(RID_MARK.encode())
            c1, c2 = rest.split(RES_MARK.encode())
            objs.append(Car(name, None, P.car_topic(self.region, name, "request"), prefix, suffix,  # type: ignore[arg-type]
                            (c0, c1, c2)))
        made = self.connect_all([(n, pw, car, self._on_car_message) for (n, pw, _), car in zip(cars, objs)])
        for car, c in zip(objs, made):
            car.client = c
        want = self.subacks + len(objs)
        for car in objs:
            car.client.subscribe(P.car_topic(self.region, car.name, "reply"), P.QOS)
            self.flush(car.client)
        self.pump_until(lambda: self.subacks >= want, 60, "car SUBACKs")
        self.cars = objs

    def _send(self, car: Car) -> None:
        car.seq += 1
        held, car.holds = car.holds, None
        if held is not None:
            c0, c1, c2 = car.cancel
            payload = b"%s%s%d%s%s%s" % (c0, self.tag, car.seq, c1, held, c2)
        else:
            payload = b"%s%s%d%s" % (car.prefix, self.tag, car.seq, car.suffix)
        car.cancelling = held is not None
        car.sent_at = time.perf_counter()
        car.client.publish(car.topic, payload, qos=P.QOS)
        self.outstanding += 1

    def _on_car_message(self, client, car: Car, msg) -> None:
        payload = msg.payload
        if b'"event"' in payload:  # unsolicited (expired, faulted, ...): not an answer
            self.events += 1
            return
        sent = car.sent_at
        # the gateway's answers name the request (the echo's fixed one does not): one that
        # names an earlier request (answered after a run gave up on it) is not this answer
        if sent is None or (b'"rid":' in payload and b'"rid":"%s%d"' % (self.tag, car.seq) not in payload):
            self.stray += 1
            return
        now = time.perf_counter()
        self.last_answer = now
        car.sent_at = None
        self.outstanding -= 1
        ok = b'"ok":true' in payload
        self.records.append((sent, now, ok))
        if self.alternate and ok and not car.cancelling:
            i = payload.find(RESERVATION_ID)
            if i < 0:
                car.holds = b"r0"  # the echo's fixed answer: cancel a made-up id
            else:
                i += len(RESERVATION_ID)
                car.holds = payload[i:payload.index(b'"', i)]
        if self.closed:
            if self.sending:
                self._send(car)  # written by flush() right after this read
        else:
            self.idle.append(car)

    # ------------------------------------------------------------ stations

    def add_stations(self, stations: list[tuple[str, str, list[str]]]) -> None:
        """(id, password, slot states): online + status retained, subscribed to cmd."""
        made = self.connect_all([(sid, pw, None, self._on_station_message) for sid, pw, _ in stations])
        want_sub = self.subacks + len(made)
        want_pub = self.pubacks + 2 * len(made)
        for (sid, _, slots), c in zip(stations, made):
            c.subscribe(P.station_topic(self.region, sid, "cmd"), P.QOS)
            c.publish(P.station_topic(self.region, sid, "online"), P.online_message(True), qos=P.QOS, retain=True)
            c.publish(P.station_topic(self.region, sid, "status"), P.encode(P.station_status(slots)),
                      qos=P.QOS, retain=True)
            self.flush(c)
        self.pump_until(lambda: self.subacks >= want_sub and self.pubacks >= want_pub, 60,
                        "station SUBACKs and PUBACKs")

    def _on_station_message(self, client, userdata, msg) -> None:
        pass  # a board would set its LED; paho acknowledges the QoS 1 command

    # ------------------------------------------------------------ readiness probe

    def add_probe(self, password: str, fields: dict) -> None:
        template = P.encode(P.reserve_request(RID_MARK, PROBE_CAR, **fields))
        prefix, suffix = template.split(RID_MARK.encode())
        self.probe = Car(PROBE_CAR, None, P.car_topic(self.region, PROBE_CAR, "request"), prefix, suffix)  # type: ignore[arg-type]

        def on_message(client, userdata, msg) -> None:
            self.probe_replies += 1

        [c] = self.connect_all([(PROBE_CAR, password, None, on_message)])
        self.probe.client = c
        want = self.subacks + 1
        c.subscribe(P.car_topic(self.region, PROBE_CAR, "reply"), P.QOS)
        self.flush(c)
        self.pump_until(lambda: self.subacks >= want, 30, "probe SUBACK")

    def forget_holds(self) -> None:
        """A new responder knows none of the reservations the cars hold."""
        for car in self.cars:
            car.holds = None

    def wait_ready(self, responder: Responder, timeout: float = 120.0) -> float:
        """Ask from the probe car every second until an answer comes: the responder is
        subscribed and (the gateway) has handled every retained station message before it."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        before = self.probe_replies
        next_probe = 0.0
        while self.probe_replies == before:
            now = time.monotonic()
            responder.check_alive()
            if now > deadline:
                raise TimeoutError(f"{responder.kind} did not answer within {timeout:.0f} s; log:\n"
                                   f"{responder.log_tail()}")
            if now >= next_probe:
                p = self.probe
                p.seq += 1
                p.client.publish(p.topic, b"%sprobe-%d%s" % (p.prefix, p.seq, p.suffix), qos=P.QOS)
                self.flush(p.client)
                next_probe = now + 1.0
            self.pump(0.05)
        ready = time.monotonic() - t0
        end = time.monotonic() + 1.0  # let the answers to the other probes come in
        while time.monotonic() < end:
            self.pump(0.05)
        return ready

    # ------------------------------------------------------------ runs

    def _reset(self, tag: str) -> None:
        self.records = []
        self.tag = tag.encode()
        self.events = self.stray = 0
        self.last_answer = time.perf_counter()

    def _drain(self, timeout: float, quiet: float = 5.0) -> int:
        """Wait for the outstanding answers, at most `timeout` s and no longer than `quiet` s
        without any answer (the broker drops requests beyond its queue limit); returns how
        many never came and forgets them."""
        deadline = time.perf_counter() + timeout
        self.last_answer = time.perf_counter()
        while self.outstanding > 0:
            now = time.perf_counter()
            if now > deadline or now - self.last_answer > quiet:
                break
            self.pump(0.05)
        lost = self.outstanding
        if lost:
            for car in self.cars:
                car.sent_at = None
            self.outstanding = 0
        return lost

    def closed_loop(self, label: str, tag: str, warm: float, seconds: float, meter: CpuMeter,
                    drain_s: float) -> RunResult:
        self._reset(tag)
        self.closed, self.sending = True, True
        t0 = time.perf_counter()
        for car in self.cars:
            self._send(car)
            self.flush(car.client)
        w0, w1 = t0 + warm, t0 + warm + seconds
        while time.perf_counter() < w0:
            self.pump(0.05)
        c0 = meter.snapshot()
        while time.perf_counter() < w1:
            self.pump(0.05)
        c1 = meter.snapshot()
        self.sending = False
        lost = self._drain(drain_s)
        window = [(s, a, ok) for s, a, ok in self.records if w0 <= a < w1]
        lat = sorted(a - s for s, a, _ in window)
        return RunResult(label, len(window) / seconds, 1e3 * percentile(lat, 0.5), 1e3 * percentile(lat, 0.99),
                         len(window), sum(not ok for _, _, ok in window), lost,
                         stray=self.stray + self.events, cpu=CpuMeter.shares(c0, c1))

    def open_loop(self, label: str, tag: str, rate: float, warm: float, seconds: float, meter: CpuMeter,
                  drain_s: float, seed: int) -> RunResult:
        self._reset(tag)
        self.closed, self.sending = False, True
        self.idle = deque(self.cars)
        rng = random.Random(seed)
        t0 = time.perf_counter()
        w0, end = t0 + warm, t0 + warm + seconds
        due = t0 + rng.expovariate(rate)
        not_sent = 0
        lags: list[float] = []
        c0 = None
        while True:
            now = time.perf_counter()
            if c0 is None and now >= w0:
                c0 = meter.snapshot()
            while due <= now and due < end:
                if self.idle:
                    car = self.idle.popleft()
                    self._send(car)
                    self.flush(car.client)
                    if due >= w0:
                        lags.append(car.sent_at - due)
                elif due >= w0:
                    not_sent += 1
                due += rng.expovariate(rate)
            if now >= end:
                break
            self.pump(max(0.0, min(due, end) - time.perf_counter()))
        c1 = meter.snapshot()
        self.sending = False
        lost = self._drain(drain_s)
        window = [(s, a, ok) for s, a, ok in self.records if w0 <= s < end]
        lat = sorted(a - s for s, a, _ in window)
        lags.sort()
        return RunResult(label, len(window) / seconds, 1e3 * percentile(lat, 0.5), 1e3 * percentile(lat, 0.99),
                         len(window), sum(not ok for _, _, ok in window), lost, not_sent=not_sent,
                         offered=rate, lag_p99_ms=1e3 * percentile(lags, 0.99), stray=self.stray + self.events,
                         cpu=CpuMeter.shares(c0 or c1, c1))


# ====================================================================== scenario

def choose_stations(n: int, rng: random.Random):
    from recarga.core.stations import load_stations

    everything = load_stations(BERLIN_CSV)
    online = rng.sample(everything, min(n, len(everything)))
    return everything, online


def car_fields(rng: random.Random, online) -> dict:
    s = rng.choice(online)
    r = 1.5 * math.sqrt(rng.random())
    t = rng.random() * 2 * math.pi
    return dict(
        lat=round(s.lat + r * math.sin(t) / KM_PER_DEG, 6),
        lon=round(s.lon + r * math.cos(t) / (KM_PER_DEG * math.cos(math.radians(s.lat))), 6),
        soc=round(rng.uniform(0.1, 0.3), 3),
        battery_kwh=round(rng.uniform(40.0, 80.0), 1),
        consumption_kwh_100km=round(rng.uniform(15.0, 20.0), 1),
        max_ac_kw=rng.choice([7.4, 11.0, 11.0, 22.0]),
        max_dc_kw=rng.choice([0.0, 50.0, 100.0, 150.0]),
        target_soc=0.8,
    )


def gateway_toml(port: int, synchronous: str, stations: str, sync_thread: bool = False) -> str:
    stations = stations.replace("\\", "\\\\").replace('"', '\\"')
    return f"""\
# written by bench/gateway_load.py: deploy/gateway.example.toml's settings, longer holds
region = "{REGION}"
database = "gateway.db"
stations = "{stations}"
log_level = "INFO"
tick_s = 1.0
synchronous = "{synchronous}"
sync_thread = {str(sync_thread).lower()}

[broker]
host = "{HOST}"
port = {port}
username = "{GATEWAY_USER}"
password_file = "gateway.password"

[reservations]
hold_s = 3600
grace_s = 600
max_wait_s = 86400
expected_session_s = 3600

[selection]
policy = "least_completion"
"""


def responder_dir(root: Path, name: str, port: int, password: str, online, synchronous: str = "FULL",
                  register: bool = True, sync_thread: bool = False) -> Path:
    """A directory with gateway.toml, the password file and (--online-only) the station file."""
    from recarga.core.stations import dump_stations_json

    d = root / name
    d.mkdir(parents=True)
    pw = d / "gateway.password"
    pw.write_text(password + "\n")
    os.chmod(pw, 0o600)
    if register:
        stations = str(BERLIN_CSV)
    else:
        dump_stations_json(online, d / "stations.json")
        stations = "stations.json"
    (d / "gateway.toml").write_text(gateway_toml(port, synchronous, stations, sync_thread))
    return d


def launch_broker(directory: Path, extra_conf: Sequence[str], attempts: int = 3, **kwargs):
    """gateway.localbroker.Broker.generate + start, with `extra_conf` lines appended to the
    generated conf (what-if experiments only; none by default)."""
    from harness.broker import Broker, BrokerError

    for attempt in range(1, attempts + 1):
        broker = Broker.generate(directory, **kwargs)
        if extra_conf:
            with open(broker.conf_path, "a") as f:
                f.write("\n# bench/gateway_load.py --broker-conf\n" + "".join(f"{line}\n" for line in extra_conf))
        try:
            broker.start()
        except BrokerError:
            if attempt < attempts and "Address already in use" in broker.log():
                continue
            raise
        return broker


def forget_session(host: str, port: int, user: str, password: str, client_id: str) -> None:
    """Connect once with clean_session so the broker drops a stopped responder's persistent
    session (else it would queue every later request for it)."""
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True)
    c.username_pw_set(user, password)
    c.on_connect = lambda *a: done.set()
    c.connect(host, port, keepalive=10)
    deadline = time.monotonic() + 10
    while not done.is_set() and time.monotonic() < deadline:
        c.loop(0.05)
    c.disconnect()
    c.loop(0.05)


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


# ====================================================================== main

def run_bench(args: argparse.Namespace) -> int:
    from harness.broker import require_tool, stop_process

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
    responder: Responder | None = None
    profiler: subprocess.Popen | None = None
    fleet: Fleet | None = None
    t_start = time.monotonic()
    try:
        t0 = time.monotonic()
        broker = launch_broker(work / "broker", extra_conf, region=REGION, gateway_user=GATEWAY_USER,
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
        fleet.add_probe(passwords[PROBE_CAR], car_fields(rng, online))
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

        def start_responder(kind: str, argv: list[str], d: Path) -> Responder:
            nonlocal responder
            responder = Responder(kind, argv, d).start()
            fleet.forget_holds()
            ready = fleet.wait_ready(responder)
            print(f"{kind}: pid {responder.pid}, answering {ready:.1f} s after its start", flush=True)
            return responder

        def stop_responder() -> None:
            nonlocal responder
            if responder is not None:
                responder.stop()
                responder = None

        def closed_runs(kind: str, r: Responder, tag: str) -> list[RunResult]:
            meter = CpuMeter({"broker": broker.pid, kind: r.pid})
            out = []
            for i in range(runs):
                res = fleet.closed_loop(f"{kind} closed", f"{tag}c{i}-", warm_closed, seconds, meter, drain_s)
                report(res, f"run {i + 1}/{runs}")
                r.check_alive()
                out.append(res)
            return out

        def open_runs(kind: str, r: Responder, tag: str, rate: float) -> list[RunResult]:
            meter = CpuMeter({"broker": broker.pid, kind: r.pid})
            out = []
            for i in range(runs):
                res = fleet.open_loop(f"{kind} open", f"{tag}o{i}-", rate, warm_open, seconds, meter, drain_s,
                                      seed=args.seed + i)
                report(res, f"run {i + 1}/{runs}")
                r.check_alive()
                out.append(res)
            return out

        def responder_files(name: str, synchronous: str = "FULL") -> Path:
            return responder_dir(work, name, broker.port, passwords[GATEWAY_USER], online, synchronous,
                                 register=args.register, sync_thread=args.sync_thread)

        # ---------------------------------------------------------------- echo
        d = responder_files("echo")
        r = start_responder("echo", [sys.executable, str(Path(__file__).resolve()), "--serve-echo",
                                     str(d / "gateway.toml")], d)
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
        forget_session(HOST, broker.port, GATEWAY_USER, passwords[GATEWAY_USER], f"recarga-echo-{REGION}")

        # ---------------------------------------------------------------- gateway
        gw_argv = [sys.executable, "-m", "recarga.gateway.cli", "run", "--config", "gateway.toml"]
        d = responder_files("gateway-full", "FULL")
        r = start_responder("gateway", gw_argv, d)
        if not args.rate:
            print("(a) gateway (synchronous FULL): closed loop", flush=True)
            results["gateway closed"] = closed_runs("gateway", r, "g")
        print(f"(b) gateway (synchronous FULL): open loop at {rate:.0f} req/s", flush=True)
        results["gateway open"] = open_runs("gateway", r, "g", rate)
        if args.profile:
            profiler = start_profiler(args.profile, r.pid, warm_closed + seconds)
            if profiler is not None:
                res = fleet.closed_loop("gateway py-spy", "gp-", warm_closed, seconds,
                                        CpuMeter({"broker": broker.pid, "gateway": r.pid}), drain_s)
                report(res, "not counted")
                try:
                    profiler.wait(30)
                except subprocess.TimeoutExpired:
                    pass
                stop_process(profiler)
                profiler = None
                print(f"  profile written to {args.profile}", flush=True)
        stop_responder()

        if not args.quick and not args.no_normal and not args.rate:
            d = responder_files("gateway-normal", "NORMAL")
            r = start_responder("gateway", gw_argv, d)
            print("(a') gateway (synchronous NORMAL, fresh database): closed loop", flush=True)
            results["gateway NORMAL closed"] = closed_runs("gateway", r, "n")
            stop_responder()

        # ---------------------------------------------------------------- summary
        dropped = "messages are being dropped" in broker.log().lower()
        fleet.close()
        fleet = None
        broker.stop()

        def med(key: str, attr: str) -> float:
            return median([getattr(x, attr) for x in results.get(key, [])])

        gw_p99, e_p99 = med("gateway open", "p99_ms"), med("echo open", "p99_ms")
        if args.rate:
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
              f"ratio {ratio:.2f} (goal at least 0.5: {'met' if ratio >= 0.5 else 'NOT met'})")
        print(f"  at {rate:.0f} req/s offered: gateway p50 {med('gateway open', 'p50_ms'):.1f} ms, p99 {gw_p99:.1f} ms "
              f"(answering {med('gateway open', 'throughput'):.0f} req/s); echo p50 {med('echo open', 'p50_ms'):.1f} ms, "
              f"p99 {e_p99:.1f} ms (goal: gateway p99 under 2x echo p99: "
              f"{'met' if gw_p99 < 2 * e_p99 else 'NOT met'})")
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
            stop_process(profiler)
        if responder is not None:
            responder.stop()
        if fleet is not None:
            fleet.close()
        if broker is not None:
            broker.stop()
        if args.keep:
            print(f"(work dir kept: {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


def start_profiler(path: str, pid: int, seconds: float) -> subprocess.Popen | None:
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        print("  --profile: py-spy not found (pip install py-spy); skipped", flush=True)
        return None
    suffix = Path(path).suffix.lower()
    fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(suffix, "raw")
    # --gil: sample the thread holding the GIL, i.e. what bounds a CPU-bound Python process
    proc = subprocess.Popen([spy, "record", "--gil", "--nonblocking", "-r", "400", "-p", str(pid), "-d", str(math.ceil(seconds)),
                             "-f", fmt, "-o", str(Path(path).resolve())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
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
                    help="what-if: only the open-loop runs, at this offered rate (req/s), for comparing builds "
                         "at the same load; no closed loop and no result line")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", help="parent of the temporary work dir (broker, databases, logs)")
    ap.add_argument("--sync-thread", action="store_true",
                    help="the gateways fsync on a thread of their own (sync_thread = true), e.g. with --dir on a slow disk")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, databases)")
    ap.add_argument("--profile", metavar="FILE", help="extra, uncounted gateway run under py-spy into FILE")
    ap.add_argument("--serve-echo", metavar="TOML", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_echo:
        return serve_echo(args.serve_echo)
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
