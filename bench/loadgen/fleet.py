"""The load generator: every simulated car and station a paho-mqtt 2.x client of its own
(its own broker user and TCP connection), all driven by one thread through one epoll selector
and paho's external-loop API (loop_read / loop_write / loop_misc).

The fleet is the measuring instrument, so it keeps its own clients rather than
harness.clients.MqttClient (a loop_start thread per client): measured against the echo on 2
cores, 1000 clients with a thread each managed ~1,400 req/s with the driver at 134 % CPU; the
selector ~4,000-6,000 req/s with the driver at ~60-80 %.

Cars: one request outstanding each, QoS 1, a fresh request id each; with `alternate` a car
cancels the reservation it got with its next request and then reserves again. Stations
publish retained `online` and `status` and stay subscribed to their `cmd` topic, as boards
are (they do not publish a new status when told to reserve). A probe car tells when a
responder answers. Two measurements: closed loop (every car asks again as soon as it has its
answer) and open loop (Poisson arrivals at a fixed rate).
"""
from __future__ import annotations

import math
import random
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.loadgen.cpu import CpuMeter
from harness.services import ServiceProcess
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

RID_MARK = "RIDMARK"  # placeholder in a car's request template, replaced by each fresh rid
RES_MARK = "RESMARK"  # placeholder for the reservation id in a cancel template
RESERVATION_ID = b'"reservation":{"id":"'
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


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
        self.last_answer = 0.0
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
            raise RuntimeError(f"broker refused {c.username!r}: {reason_code}")
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
                raise RuntimeError(f"connection of {c.username!r} failed while writing: {rc}")
        want = c.want_write()
        if want != (c in self.writing):
            self.sel.modify(c.socket(), READ | WRITE if want else READ, c)
            (self.writing.add if want else self.writing.discard)(c)

    def pump(self, timeout: float) -> None:
        """One pass over the sockets ready within `timeout` s (and keepalives when due)."""
        for key, mask in self.sel.select(timeout):
            c = key.data
            if mask & READ:
                rc = c.loop_read()
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    raise RuntimeError(f"connection of {c.username!r} lost: {rc}")
            self.flush(c)
        now = time.monotonic()
        if now - self._misc_at > 5.0:  # keepalive pings for quiet clients
            self._misc_at = now
            for c in self.clients:
                c.loop_misc()
                self.flush(c)

    def pump_until(self, cond: Callable[[], bool], timeout: float, what: str,
                   check: Callable[[], None] | None = None) -> None:
        """Pump until cond() holds; the clients only move while this thread pumps, which is
        why this is not harness.services.wait_for (it sleeps between polls)."""
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
            template = W.encode(D.reserve_request(RID_MARK, name, **fields))
            prefix, suffix = template.split(RID_MARK.encode())
            cancel = W.encode(D.reservation_request("cancel", RID_MARK, name, RES_MARK))
            c0, rest = cancel.split(RID_MARK.encode())
            c1, c2 = rest.split(RES_MARK.encode())
            objs.append(Car(name, None, D.car_topic(self.region, name, "request"), prefix, suffix,  # type: ignore[arg-type]
                            (c0, c1, c2)))
        made = self.connect_all([(n, pw, car, self._on_car_message) for (n, pw, _), car in zip(cars, objs)])
        for car, c in zip(objs, made):
            car.client = c
        want = self.subacks + len(objs)
        for car in objs:
            car.client.subscribe(D.car_topic(self.region, car.name, "reply"), W.QOS)
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
        car.client.publish(car.topic, payload, qos=W.QOS)
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
            c.subscribe(D.station_topic(self.region, sid, "cmd"), W.QOS)
            c.publish(D.station_topic(self.region, sid, "online"), W.online_message(True), qos=W.QOS, retain=True)
            c.publish(D.station_topic(self.region, sid, "status"), W.encode(D.station_status(slots)),
                      qos=W.QOS, retain=True)
            self.flush(c)
        self.pump_until(lambda: self.subacks >= want_sub and self.pubacks >= want_pub, 60,
                        "station SUBACKs and PUBACKs")

    def _on_station_message(self, client, userdata, msg) -> None:
        pass  # a board would set its LED; paho acknowledges the QoS 1 command

    # ------------------------------------------------------------ readiness probe

    def add_probe(self, name: str, password: str, fields: dict) -> None:
        """The probe car `name`, which wait_ready asks from."""
        template = W.encode(D.reserve_request(RID_MARK, name, **fields))
        prefix, suffix = template.split(RID_MARK.encode())
        self.probe = Car(name, None, D.car_topic(self.region, name, "request"), prefix, suffix)  # type: ignore[arg-type]

        def on_message(client, userdata, msg) -> None:
            self.probe_replies += 1

        [c] = self.connect_all([(name, password, None, on_message)])
        self.probe.client = c
        want = self.subacks + 1
        c.subscribe(D.car_topic(self.region, name, "reply"), W.QOS)
        self.flush(c)
        self.pump_until(lambda: self.subacks >= want, 30, "probe SUBACK")

    def forget_holds(self) -> None:
        """A new responder knows none of the reservations the cars hold."""
        for car in self.cars:
            car.holds = None

    def wait_ready(self, responder: ServiceProcess, timeout: float = 120.0) -> float:
        """Ask from the probe car every second until an answer comes: the responder is
        subscribed and (the gateway) has handled every retained station message before it.
        Returns the seconds that took; raises if the responder exits or the time runs out."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        before = self.probe_replies
        next_probe = 0.0
        while self.probe_replies == before:
            now = time.monotonic()
            responder.alive()
            if now > deadline:
                tail = "\n".join(responder.log_text().splitlines()[-30:])
                raise TimeoutError(f"{responder.who} did not answer within {timeout:.0f} s; log:\n{tail}")
            if now >= next_probe:
                p = self.probe
                p.seq += 1
                p.client.publish(p.topic, b"%sprobe-%d%s" % (p.prefix, p.seq, p.suffix), qos=W.QOS)
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
        """All cars ask at once and each asks again as soon as it has its answer; answers per
        second over `seconds` after `warm` s."""
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
        """Poisson arrivals at `rate` per second, each request from the car idle longest (one
        due while every car still waits is not sent); latency of the requests sent in the
        `seconds` after `warm` s."""
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
