"""firmware/lib/session.py (umqtt.simple underneath) on MicroPython with a 96 KB heap against
a real Mosquitto with auth and ACL, over TLS with the broker's CA pinned (plain TCP where a
test says so): Last Will, online, resubscribe, reconnect with backoff, bounded connect,
dead-link detection, region hand-over, a broker of another CA or another name refused; plus
the inbox with a fake client."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.broker import REGION, Broker, make_tls
from harness.micropython import MicroPython, run, umqtt_available
from harness.wait import wait_until
from recarga.core.protocol import device as D
from recarga.devices.provision import pinned_ca

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not umqtt_available(), reason="umqtt.simple not vendored: run scripts/fetch_umqtt.py"),
]

DRIVER = Path(__file__).with_name("session_driver.py")
SID = "st-1"
ONLINE = D.station_topic(REGION, SID, "online")
STATUS = D.station_topic(REGION, SID, "status")
CMD = D.station_topic(REGION, SID, "cmd")


def driver(broker: Broker | None, tmp_path: Path, **over) -> MicroPython:
    """session_driver.py as st-1 against `broker` (host/port/password/ca/server_name
    overridable; TLS with the broker's CA pinned when it has one)."""
    params = dict(cid=SID, user=SID, keepalive=30, will=ONLINE, subs=[CMD], status=STATUS,
                  base=200, cap=2000, timeout=5)
    if broker is not None:
        params.update(host=broker.host, port=broker.port, password=broker.password(SID))
        if broker.ca_file is not None:
            params.update(ca=pinned_ca(broker.ca_file), server_name=broker.server_name)
    params.update(over)
    path = tmp_path / "session_params.json"
    path.write_text(json.dumps(params))
    return MicroPython(DRIVER, cwd=tmp_path, args=[str(path)])


@pytest.fixture
def broker(tmp_path):
    """The suite's region broker (tests/conftest.py's), its listener TLS."""
    b = Broker.launch(tmp_path / "broker", tls=True)
    try:
        yield b
    finally:
        b.stop()


def online_payloads(client, topic=ONLINE) -> list[bool]:
    return [D.parse_online(m.payload) for m in client.messages(topic)]


def test_connect_online_retained_subscribe_and_last_will(broker, mqtt_client, tmp_path):
    gw = mqtt_client("gateway")
    gw.subscribe(ONLINE)
    gw.subscribe(STATUS)
    with driver(broker, tmp_path) as mp:
        mp.wait_line("CONNECTED")
        assert "OFFLINE_PUB False" in mp.lines()  # before connecting: nothing queued, just False
        mp.wait_line("PUB True")
        wait_until(lambda: online_payloads(gw) == [True], 5, "online true")
        assert D.parse_station_status(gw.expect(STATUS).payload) == ["free"]
        gw.publish(CMD, "hello")
        mp.wait_line(f"MSG {CMD} hello")
    # killed without DISCONNECT: the broker publishes the Last Will
    wait_until(lambda: online_payloads(gw) == [True, False], 5, "Last Will online false")
    # retained: a late subscriber sees the last word
    late = mqtt_client("gateway")
    late.subscribe(ONLINE)
    assert D.parse_online(late.expect(ONLINE).payload) is False
    assert late.expect(ONLINE).retain


def test_reconnects_after_broker_restart_and_resubscribes(broker, mqtt_client, tmp_path):
    with driver(broker, tmp_path, base=200, cap=1000) as mp:
        mp.wait_line("CONNECTED")
        broker.stop()
        lost = mp.wait_line("mqtt: connection lost", timeout=10)
        mp.wait_line("mqtt: connect failed", timeout=10, start=lost)  # retrying while it is down
        time.sleep(1.0)
        broker.start()
        t0 = time.monotonic()
        again = mp.wait_line("CONNECTED", timeout=10, start=lost)
        assert time.monotonic() - t0 < 3.0  # within the backoff cap (1 s) plus slack
        assert mp.wait_line("PUB True", start=again) == again + 1
        gw = mqtt_client("gateway")
        gw.subscribe(ONLINE)
        assert D.parse_online(gw.expect(ONLINE).payload) is True
        gw.publish(CMD, "after restart")
        mp.wait_line(f"MSG {CMD} after restart", start=again)
        # backoff delays stayed under the (doubling, capped) ceiling
        delays = [int(m.group(1)) for m in re.finditer(r"(?:next attempt|reconnect) in (\d+) ms", mp.output())]
        assert delays and all(0 <= d < 1000 for d in delays), delays


def test_packet_id_wraps_before_65535(broker, mqtt_client, tmp_path):
    """umqtt.simple increments its packet id forever; past 65535 a QoS 1 publish would wait
    for a PUBACK that never matches. The session wraps it."""
    gw = mqtt_client("gateway")
    gw.subscribe(STATUS)
    with driver(broker, tmp_path) as mp:
        mp.wait_line("CONNECTED")
        gw.publish(CMD, "pid 65533")
        mp.wait_line(f"MSG {CMD} pid 65533")
        for k in range(5):
            gw.publish(CMD, f'publish {{"v":1,"slots":["free"],"seq":{k + 1}}}')
        wait_until(lambda: sum(l == "PUB True" for l in mp.lines()) == 6, 10, "five more acknowledged publishes")
        assert "connection lost" not in mp.output()
    seqs = [json.loads(m.payload).get("seq") for m in gw.messages(STATUS)]
    assert seqs[-5:] == [1, 2, 3, 4, 5]


def test_refused_login_backs_off_and_says_why(broker, tmp_path):
    with driver(broker, tmp_path, password="wrong", base=100, cap=400, run_ms=3000) as mp:
        mp.wait_line("END", timeout=10)
        out = mp.output()
    failed = [l for l in out.splitlines() if "mqtt: connect failed" in l]
    assert len(failed) >= 4, out
    assert "broker refused, code 5" in failed[0] or "broker refused, code 4" in failed[0], failed[0]
    delays = [int(re.search(r"next attempt in (\d+) ms", l).group(1)) for l in failed]
    ceilings = [min(100 * 2 ** i, 400) for i in range(len(delays))]
    assert all(0 <= d < c for d, c in zip(delays, ceilings)), (delays, ceilings)
    assert "CONNECTED" not in out


@contextlib.contextmanager
def tcp_server(answer: bytes = b"") -> Iterator[int]:
    """A TCP server on a free loopback port (yielded) that accepts every connection and sends
    it `answer` (nothing: it never answers), for connects that must fail."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c = srv.accept()[0]
            except OSError:
                continue
            held.append(c)
            if answer:
                c.sendall(answer)

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(2)
        for c in held:
            c.close()
        srv.close()


def test_connect_to_a_silent_server_times_out(tmp_path):
    """A server that accepts TCP but never answers CONNECT: the attempt fails after timeout_s."""
    with tcp_server() as port, driver(None, tmp_path, host="127.0.0.1", port=port, password="x", timeout=1,
                                      base=100, cap=100, run_ms=4500) as mp:
        mp.wait_line("END", timeout=15)
        failed = [l for l in mp.lines() if "mqtt: connect failed" in l]
    # each attempt ends after ~1 s (ETIMEDOUT), so ~3-4 attempts in 4.5 s, never stuck
    assert 2 <= len(failed) <= 5, failed
    assert all("OSError 110" in l for l in failed), failed


def test_an_answer_that_is_not_a_connack_fails_the_connect_and_says_why(tmp_path):
    """A server that answers CONNECT with a PUBACK: every attempt fails at once and says why
    (an explicit check, which holds also where the firmware is compiled without asserts)."""
    puback = b"\x40\x02\x00\x01"  # PUBACK, packet id 1
    with tcp_server(puback) as port, driver(None, tmp_path, host="127.0.0.1", port=port, password="x", timeout=5,
                                            base=100, cap=100, run_ms=1500) as mp:
        mp.wait_line("END", timeout=15)
        out = mp.output()
    failed = [l for l in out.splitlines() if "mqtt: connect failed" in l]
    assert len(failed) >= 2, out  # at once each time (timeout_s is 5 s, the run 1.5 s)
    assert all("ValueError no CONNACK" in l for l in failed), failed
    assert "CONNECTED" not in out


def test_dead_link_detected_by_keepalive_when_broker_freezes(broker, mqtt_client, tmp_path):
    """SIGSTOP the broker: the TCP connection stays open but nothing answers. The session sees
    no PINGRESP within its keepalive and reconnects once the broker runs again."""
    with driver(broker, tmp_path, keepalive=4, timeout=1, base=200, cap=1000) as mp:
        mp.wait_line("CONNECTED")
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            lost = mp.wait_line("mqtt: connection lost: OSError 110", timeout=15)
            assert time.monotonic() - t0 < 4 + 2 + 1
            mp.wait_line("mqtt: connect failed", timeout=10, start=lost)  # no CONNACK: bounded
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        mp.wait_line("CONNECTED", timeout=10, start=lost)


def test_hand_over_to_another_broker_says_goodbye_to_the_first(broker, mqtt_client, tmp_path):
    other = Broker.launch(tmp_path / "other", tls=broker.ca_file.parent)  # one CA signs both
    try:
        gw1 = mqtt_client("gateway")
        gw1.subscribe(ONLINE)
        with driver(broker, tmp_path) as mp:
            mp.wait_line("CONNECTED")
            wait_until(lambda: online_payloads(gw1) == [True], 5, "online on the first broker")
            gw1.publish(CMD, f"handover {other.port}")
            mp.wait_line(f"mqtt: connecting to 127.0.0.1 {other.port}")
            second = mp.wait_line("CONNECTED", start=mp.wait_line("handover"))
            # the first broker heard a clean goodbye (online false), not silence
            wait_until(lambda: online_payloads(gw1) == [True, False], 5, "online false on the first broker")
            from harness.clients import connect_client
            gw2 = connect_client(other, "gateway")
            try:
                gw2.subscribe(ONLINE)
                assert D.parse_online(gw2.expect(ONLINE).payload) is True
                gw2.publish(CMD, "disconnect")
                mp.wait_line("mqtt: disconnected from", start=second)
                time.sleep(0.5)
                assert "CONNECTED" not in mp.lines()[second + 1:]  # stays offline after disconnect()
            finally:
                gw2.close()
    finally:
        other.stop()


def test_inbox_is_bounded_and_delivers_in_order_outside_umqtt_calls():
    """Messages that arrive while umqtt.simple waits for a PUBACK are queued (`inbox` at most,
    the oldest dropped, one warning) and handed to on_message from poll(), never from inside
    publish()."""
    out = run("""
from session import Session
from backoff import Backoff
class FakeSock:
    def setblocking(self, flag): pass
    def read(self, n): return None
    def close(self): pass
class FakeClient:
    def __init__(self, *args): self.sock = None
    def set_callback(self, cb): self.cb = cb
    def set_last_will(self, *a): pass
    def connect(self, clean_session=True): self.sock = FakeSock()
    def subscribe(self, t, q): pass
    def check_msg(self): pass
    def ping(self): pass
    def publish(self, topic, msg, retain, qos):
        if topic == "busy":
            for k in range(6):
                self.cb(b"t", b"m%d" % k)
inside = []
def on_message(t, m):
    inside.append(m.decode())
s = Session("c", "h", 1, "u", "p", 30, "will", on_message, Backoff(), FakeClient, inbox=4)
s.poll(0)
print("connected", s.connected)
print("published", s.publish("busy", b"x"))
print("delivered during publish", inside)
s.poll(10)
print("delivered by poll", inside, "dropped", s.dropped)
""")
    lines = out.splitlines()
    assert "connected True" in lines and "published True" in lines
    assert "delivered during publish []" in lines
    assert "delivered by poll ['m2', 'm3', 'm4', 'm5'] dropped 2" in lines
    assert [l for l in lines if "inbox full" in l] == ["[W] mqtt: inbox full, dropped 2 message(s)"]


def test_umqtt_simple_is_left_as_it_is(broker, tmp_path):
    """The session's client subclasses umqtt.simple's MQTTClient: connecting and publishing
    (the packet id wrapped on the way) leave umqtt.simple's module and class as imported."""
    out = run(f"""
import time
import umqtt.simple as u
mod = dict(u.__dict__)
cls = dict(u.MQTTClient.__dict__)
from backoff import Backoff
from session import Session
s = Session({SID!r}, {broker.host!r}, {broker.port}, {SID!r}, {broker.password(SID)!r}, 30, {ONLINE!r},
            lambda t, m: None, Backoff())
import pinned
s.tls = (pinned.context({pinned_ca(broker.ca_file)!r}), {broker.server_name!r})
end = time.ticks_add(time.ticks_ms(), 5000)
while not s.poll(time.ticks_ms()) and time.ticks_diff(end, time.ticks_ms()) > 0:
    time.sleep_ms(10)
print("connected", s.connected)
c = s.client
c.pid = 65534
print("published", s.publish({STATUS!r}, b'{{"v":1,"slots":["free"],"seq":1}}', True), "pid", c.pid)
print("subclass", isinstance(c, u.MQTTClient) and type(c) is not u.MQTTClient)
print("module as imported", len(u.__dict__) == len(mod) and all(u.__dict__[k] is v for k, v in mod.items()))
print("class as imported", len(u.MQTTClient.__dict__) == len(cls)
      and all(u.MQTTClient.__dict__[k] is v for k, v in cls.items()))
""", cwd=tmp_path)
    lines = out.splitlines()
    assert "connected True" in lines, out
    assert "published True pid 1" in lines, out
    assert "subclass True" in lines and "module as imported True" in lines and "class as imported True" in lines, out


# ---------------------------------------------------------------- TLS

def test_a_broker_whose_certificate_another_ca_signed_is_refused_and_said_so(broker, mqtt_client, tmp_path):
    """The board pins one CA: a broker showing a certificate of another CA (here: the board
    pins another CA than the broker's) gets no CONNECT, so no password; the board says why and
    retries with its backoff, and stays alive."""
    other = make_tls(tmp_path / "other")
    gw = mqtt_client("gateway")
    gw.subscribe(ONLINE)
    with driver(broker, tmp_path, ca=pinned_ca(other.cafile), base=100, cap=300, run_ms=4000) as mp:
        mp.wait_line("END", timeout=10)
        lines = mp.lines()
    refused = [ln for ln in lines if "connect failed" in ln]
    assert len(refused) >= 2 and all("ValueError The certificate is not correctly signed by the trusted CA" in ln
                                     for ln in refused), lines
    assert "[I] mqtt: connected" not in lines and "CONNECTED" not in lines
    assert online_payloads(gw) == []  # never logged in


def test_a_broker_certificate_for_another_name_is_refused_and_said_so(broker, mqtt_client, tmp_path):
    with driver(broker, tmp_path, server_name="broker.elsewhere.example", base=100, cap=300, run_ms=3000) as mp:
        mp.wait_line("END", timeout=10)
        lines = mp.lines()
    assert "[I] mqtt: connecting to 127.0.0.1 %d over TLS, server name broker.elsewhere.example" % broker.port in lines
    refused = [ln for ln in lines if "connect failed" in ln]
    assert len(refused) >= 2 and all("Common Name (CN) does not match" in ln for ln in refused), lines
    assert "CONNECTED" not in lines


def test_a_plain_session_is_refused_by_a_tls_listener(broker, tmp_path):
    """Plain TCP (no CA in config) to a TLS port: no session, and the board keeps retrying."""
    with driver(broker, tmp_path, ca=None, base=100, cap=300, run_ms=2500) as mp:
        mp.wait_line("END", timeout=10)
        lines = mp.lines()
    assert "CONNECTED" not in lines and sum("connect failed" in ln for ln in lines) >= 2, lines
