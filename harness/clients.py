"""Test helpers: a real Mosquitto broker on a free loopback port, and clients for it.

`Broker` is gateway.localbroker's (auth and ACL on, stopped by pid) with this suite's
default users. `MqttClient` is a paho-mqtt 2.x client speaking MQTT 3.1.1, as the
boards do. `CliSubscriber` and `cli_publish` run Mosquitto's own command-line clients as
clients independent of paho. Fixtures in conftest.py make sure everything is stopped.
"""
from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from harness.broker import Broker as _LocalBroker
from harness.broker import BrokerError, free_port, require_tool, stop_process  # noqa: F401 (re-exported)

REGION = "test"
GATEWAY_USER = "gateway"
CARS = ("car-a", "car-b")
STATIONS = ("st-1", "st-2")
PASSWORDS = {
    GATEWAY_USER: "gw-secret-1",
    "car-a": "car-a-secret",
    "car-b": "car-b-secret",
    "st-1": "st-1-secret",
    "st-2": "st-2-secret",
}


class Broker(_LocalBroker):
    """The local broker with this suite's defaults (region "test", known users)."""

    @classmethod
    def generate(cls, directory: Path, *, region: str = REGION, gateway_user: str = GATEWAY_USER,
                 cars: Sequence[str] = CARS, stations: Sequence[str] = STATIONS,
                 passwords: Mapping[str, str] | None = None, **kwargs) -> Broker:
        return super().generate(directory, region=region, gateway_user=gateway_user, cars=cars,
                                stations=stations, passwords=PASSWORDS if passwords is None else passwords,
                                **kwargs)


# ---------------------------------------------------------------- paho-mqtt clients

def _new_paho(client_id: str, clean_session: bool) -> mqtt.Client:
    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                       protocol=mqtt.MQTTv311, clean_session=clean_session)


def try_connect(broker: Broker, username: str | None, password: str | None = None,
                timeout: float = 5.0) -> ReasonCode:
    """Connect once and return the CONNACK's reason code (success or refusal), then hang up."""
    client = _new_paho(f"probe-{os.getpid()}-{time.monotonic_ns()}", True)
    if username is not None:
        client.username_pw_set(username, password)
    result: list[ReasonCode] = []
    client.on_connect = lambda c, u, flags, rc, props: result.append(rc)
    client.connect(broker.host, broker.port, keepalive=10)
    deadline = time.monotonic() + timeout
    try:
        while not result and time.monotonic() < deadline:
            client.loop(0.05)
    finally:
        client.disconnect()
        client.loop(0.05)
    if not result:
        raise AssertionError(f"no CONNACK from {broker.host}:{broker.port} within {timeout} s")
    return result[0]


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int


class MqttClient:
    """paho-mqtt 2.x (CallbackAPIVersion.VERSION2, MQTT 3.1.1) with its loop in a thread.

    Records every message it receives; `expect` / `expect_nothing` wait a bounded time.
    """

    def __init__(self, broker: Broker, username: str, password: str | None = None, *,
                 client_id: str | None = None, clean_session: bool = True):
        self.broker = broker
        self.username = username
        self.client_id = client_id or f"{username}-{os.getpid()}-{time.monotonic_ns()}"
        self.received: list[Received] = []
        self._cond = threading.Condition()
        self._connack: ReasonCode | None = None
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._paho = _new_paho(self.client_id, clean_session)
        self._paho.username_pw_set(username, broker.password(username) if password is None else password)
        self._paho.on_connect = self._on_connect
        self._paho.on_subscribe = self._on_subscribe
        self._paho.on_message = self._on_message
        self._started = False

    @property
    def paho(self) -> mqtt.Client:
        return self._paho

    # callbacks run in paho's network thread
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            self._connack = reason_code
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._cond:
            self._subacks[mid] = list(reason_codes)
            self._cond.notify_all()

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.received.append(Received(msg.topic, msg.payload, bool(msg.retain), msg.qos))
            self._cond.notify_all()

    def _wait(self, pred: Callable[[], object], timeout: float) -> object:
        with self._cond:
            return self._cond.wait_for(pred, timeout)

    def connect(self, timeout: float = 5.0) -> MqttClient:
        """Connect and wait for a successful CONNACK; AssertionError with the reason if refused."""
        self._paho.connect(self.broker.host, self.broker.port, keepalive=30)
        self._paho.loop_start()
        self._started = True
        if not self._wait(lambda: self._connack is not None, timeout):
            raise AssertionError(f"{self.username}: no CONNACK within {timeout} s")
        if self._connack.is_failure:
            raise AssertionError(f"{self.username}: connection refused: {self._connack}")
        return self

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 5.0) -> list[ReasonCode]:
        """Subscribe and wait for the SUBACK; returns its reason codes (0x80 = refused)."""
        rc, mid = self._paho.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe({topic!r}) failed locally: {rc}"
        if not self._wait(lambda: mid in self._subacks, timeout):
            raise AssertionError(f"{self.username}: no SUBACK for {topic!r} within {timeout} s")
        return self._subacks[mid]

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                timeout: float = 5.0) -> None:
        """Publish and wait until it is sent (QoS 1: PUBACKed). The broker PUBACKs a publish the
        ACL denies too (MQTT 3.1.1 has no way to say no), so this proves nothing about delivery."""
        info = self._paho.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise AssertionError(f"{self.username}: publish to {topic!r} not acknowledged in {timeout} s")

    def messages(self, topic_filter: str = "#") -> list[Received]:
        with self._cond:
            return [m for m in self.received if mqtt.topic_matches_sub(topic_filter, m.topic)]

    def expect(self, topic_filter: str = "#", timeout: float = 5.0) -> Received:
        """The first message received on a topic matching the filter, waiting up to `timeout`."""
        if not self._wait(lambda: self.messages(topic_filter), timeout):
            raise AssertionError(f"{self.username} received nothing on {topic_filter!r} within {timeout} s "
                                 f"(got {[m.topic for m in self.received]})")
        return self.messages(topic_filter)[0]

    def expect_nothing(self, topic_filter: str = "#", within: float = 0.5) -> None:
        """Fail if a message on a topic matching the filter arrives (or arrived) within `within` s."""
        if self._wait(lambda: self.messages(topic_filter), within):
            got = self.messages(topic_filter)
            raise AssertionError(f"{self.username} must not receive {topic_filter!r}, got "
                                 f"{[(m.topic, m.payload) for m in got]}")

    def close(self) -> None:
        if self._started:
            self._paho.disconnect()
            self._paho.loop_stop()
            self._started = False
        # paho closes its wake-up socket pair only when the client is freed, and our bound
        # callbacks make a reference cycle that only a gc run would free: a few hundred
        # clients later paho's select() meets a descriptor above 1023 and its thread dies
        self._paho.on_connect = self._paho.on_subscribe = self._paho.on_message = None


def connect_client(broker: Broker, username: str, password: str | None = None, **kwargs) -> MqttClient:
    """A connected MqttClient (password defaults to the broker's known one for `username`)."""
    client = MqttClient(broker, username, password, **kwargs)
    try:
        return client.connect()
    except BaseException:
        client.close()
        raise


# ---------------------------------------------------------------- Mosquitto's own CLI clients

def _cli_auth(broker: Broker, username: str | None, password: str | None) -> list[str]:
    args = ["-h", broker.host, "-p", str(broker.port), "-V", "mqttv311"]
    if username is not None:
        args += ["-u", username, "-P", broker.password(username) if password is None else password]
    return args


def cli_publish(broker: Broker, username: str | None, topic: str, payload: str, *,
                password: str | None = None, qos: int = 1, retain: bool = False,
                timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    """Run `mosquitto_pub` once (it exits by itself) and return the finished process."""
    args = [require_tool("mosquitto_pub"), *_cli_auth(broker, username, password),
            "-t", topic, "-m", payload, "-q", str(qos)]
    if retain:
        args.append("-r")
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


class CliSubscriber:
    """`mosquitto_sub` as a child process; knows when its SUBACK arrived; stopped by pid."""

    _MARK = "MSG\t"

    def __init__(self, broker: Broker, username: str, topics: Iterable[str], *,
                 password: str | None = None, qos: int = 1):
        self.username = username
        # stdbuf: mosquitto_sub's stdout is a pipe here, which stdio would buffer fully.
        self._args = [require_tool("stdbuf"), "-oL", require_tool("mosquitto_sub"),
                      *_cli_auth(broker, username, password),
                      "-q", str(qos), "-d", "-F", self._MARK + "%t\t%p"]
        self.topics = list(topics)
        for t in self.topics:
            self._args += ["-t", t]
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.pid: int | None = None

    def start(self, timeout: float = 5.0) -> CliSubscriber:
        self._proc = subprocess.Popen(self._args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.pid = self._proc.pid
        self._reader = threading.Thread(target=self._read, args=(self._proc,), daemon=True)
        self._reader.start()
        if not self._wait(lambda: any(l.startswith("Subscribed (mid:") for l in self._lines), timeout):
            output = self.output()
            self.stop()
            raise AssertionError(f"mosquitto_sub as {self.username} not subscribed within {timeout} s:\n{output}")
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._cond:
                self._lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def _wait(self, pred: Callable[[], object], timeout: float) -> object:
        with self._cond:
            return self._cond.wait_for(pred, timeout)

    def output(self) -> str:
        with self._cond:
            return "\n".join(self._lines)

    def messages(self) -> list[tuple[str, str]]:
        """(topic, payload) of every message received so far."""
        with self._cond:
            return [tuple(l[len(self._MARK):].split("\t", 1)) for l in self._lines if l.startswith(self._MARK)]

    def expect(self, topic: str, payload: str, timeout: float = 5.0) -> None:
        if not self._wait(lambda: (topic, payload) in self.messages(), timeout):
            raise AssertionError(f"mosquitto_sub as {self.username} did not get {payload!r} on {topic!r} "
                                 f"within {timeout} s; output:\n{self.output()}")

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        stop_process(proc, timeout)
        if self._reader is not None:
            self._reader.join(timeout)

    def __enter__(self) -> CliSubscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
