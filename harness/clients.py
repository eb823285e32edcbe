"""MQTT clients for a harness.broker.Broker: paho-mqtt, and Mosquitto's own command-line clients.

`MqttClient` is the harness's paho client (paho-mqtt 2.x, MQTT 3.1.1, as the boards speak),
for tests, benchmarks and the demo's scripted actors. `try_connect` reports a CONNACK.
`CliSubscriber` and `cli_publish` run mosquitto_sub and mosquitto_pub, clients independent of
paho. Fixtures in tests/conftest.py make sure everything is closed and stopped.

Each connects over TLS when its broker has it (Broker.ca_file), trusting that CA and checking
the broker's address against its certificate; `tls=False` forces plain TCP and `ca_file`
trusts another CA instead (tests of refusals).
"""
from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Self, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from harness.broker import Broker, require_tool
from harness.process import ChildProcess
from harness.wait import wait_until
from recarga.core.mqtt_tls import client_context

T = TypeVar("T")


# ---------------------------------------------------------------- paho-mqtt clients

def _new_paho(client_id: str, clean_session: bool) -> mqtt.Client:
    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                       protocol=mqtt.MQTTv311, clean_session=clean_session)


def _ca_file(broker: Broker, tls: bool | None, ca_file: Path | None) -> Path | None:
    """The CA a client trusts: None for plain TCP."""
    if tls is False or (tls is None and broker.ca_file is None):
        return None
    return ca_file or broker.ca_file


def try_connect(broker: Broker, username: str | None, password: str | None = None,
                timeout: float = 5.0, *, tls: bool | None = None, ca_file: Path | None = None) -> ReasonCode:
    """Connect once and return the CONNACK's reason code (success or refusal), then hang up.
    ConnectionResetError if the broker closes the connection without a CONNACK (e.g. plain
    MQTT on a TLS port); ssl.SSLError if the TLS handshake fails."""
    client = _new_paho(f"probe-{os.getpid()}-{time.monotonic_ns()}", True)
    if username is not None:
        client.username_pw_set(username, password)
    ca = _ca_file(broker, tls, ca_file)
    if ca is not None:
        client.tls_set_context(client_context(ca))
    result: list[ReasonCode] = []
    closed: list[ReasonCode] = []
    client.on_connect = lambda c, u, flags, rc, props: result.append(rc)
    client.on_disconnect = lambda c, u, flags, rc, props: closed.append(rc)
    client.connect(broker.host, broker.port, keepalive=10)

    def answered() -> bool:
        client.loop(0.05)
        return bool(result or closed)

    try:
        wait_until(answered, timeout, f"a CONNACK from {broker.host}:{broker.port}", every=0)
    finally:
        client.disconnect()
        client.loop(0.05)
    if not result:
        raise ConnectionResetError(f"{broker.host}:{broker.port} closed the connection without a CONNACK "
                                   f"({closed[0]})")
    return result[0]


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int


class MqttClient:
    """paho-mqtt 2.x (CallbackAPIVersion.VERSION2, MQTT 3.1.1) with its loop in a thread.

    Records every message it receives in `received`; `expect`, `expect_nothing` and `wait`
    wait a bounded time. `on_message(msg)`, if given, sees each message as it is recorded (in
    paho's network thread, under the lock `wait` checks its condition under). `will` is a
    (topic, payload) Last Will, retained at QoS 1 as the boards' online flags are.
    """

    def __init__(self, broker: Broker, username: str, password: str | None = None, *,
                 client_id: str | None = None, clean_session: bool = True,
                 will: tuple[str, bytes] | None = None,
                 on_message: Callable[[Received], None] | None = None,
                 tls: bool | None = None, ca_file: Path | None = None):
        self.broker = broker
        self.username = username
        self.client_id = client_id or f"{username}-{os.getpid()}-{time.monotonic_ns()}"
        self.received: list[Received] = []
        self.on_message = on_message
        self._cond = threading.Condition()
        self._connack: ReasonCode | None = None
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._paho = _new_paho(self.client_id, clean_session)
        self._paho.username_pw_set(username, broker.password(username) if password is None else password)
        ca = _ca_file(broker, tls, ca_file)
        if ca is not None:
            self._paho.tls_set_context(client_context(ca))
        if will is not None:
            self._paho.will_set(will[0], will[1], qos=1, retain=True)
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
        got = Received(msg.topic, msg.payload, bool(msg.retain), msg.qos)
        with self._cond:
            self.received.append(got)
            if self.on_message is not None:
                self.on_message(got)
            self._cond.notify_all()

    def wait(self, pred: Callable[[], T], timeout: float, what: str | Callable[[], str]) -> T:
        """pred()'s first truthy value, checked whenever a message (or an acknowledgement)
        arrives; TimeoutError naming `what` after `timeout` s."""
        return wait_until(pred, timeout, (lambda: f"{self.username}: {what() if callable(what) else what}"),
                          cond=self._cond)

    def connect(self, timeout: float = 5.0) -> Self:
        """Connect and wait for a successful CONNACK; ConnectionRefusedError with the reason if refused."""
        self._paho.connect(self.broker.host, self.broker.port, keepalive=30)
        self._paho.loop_start()
        self._started = True
        self.wait(lambda: self._connack is not None, timeout, "a CONNACK")
        assert self._connack is not None
        if self._connack.is_failure:
            raise ConnectionRefusedError(f"{self.username}: connection refused: {self._connack}")
        return self

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 5.0) -> list[ReasonCode]:
        """Subscribe and wait for the SUBACK; returns its reason codes (0x80 = refused)."""
        rc, mid = self._paho.subscribe(topic, qos)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"{self.username}: subscribe({topic!r}) failed locally: {rc}")
        return self.wait(lambda: self._subacks.get(mid), timeout, f"a SUBACK for {topic!r}")

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                timeout: float | None = 5.0) -> mqtt.MQTTMessageInfo:
        """Publish and wait until it is sent (QoS 1: PUBACKed); timeout=None returns at once (for
        callers in paho's network thread, the thread that would handle the PUBACK). The broker
        PUBACKs a publish the ACL denies too (MQTT 3.1.1 has no way to say no), so this proves
        nothing about delivery."""
        info = self._paho.publish(topic, payload, qos=qos, retain=retain)
        if timeout is not None:
            self.wait_published(info, topic, timeout)
        return info

    def wait_published(self, info: mqtt.MQTTMessageInfo, topic: str, timeout: float = 5.0) -> None:
        """Until a publish returned by publish(..., timeout=None) is sent (QoS 1: PUBACKed)."""
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise TimeoutError(f"{self.username}: publish to {topic!r} not acknowledged within {timeout:g} s")

    def messages(self, topic_filter: str = "#") -> list[Received]:
        with self._cond:
            return [m for m in self.received if mqtt.topic_matches_sub(topic_filter, m.topic)]

    def expect(self, topic_filter: str = "#", timeout: float = 5.0) -> Received:
        """The first message received on a topic matching the filter, waiting up to `timeout`."""
        return self.wait(lambda: self.messages(topic_filter), timeout,
                         lambda: f"nothing received on {topic_filter!r} (got {[m.topic for m in self.received]})")[0]

    def expect_nothing(self, topic_filter: str = "#", within: float = 0.5) -> None:
        """Fail if a message on a topic matching the filter arrives (or arrived) within `within` s."""
        try:
            got = self.wait(lambda: self.messages(topic_filter), within, topic_filter)
        except TimeoutError:
            return
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
        self.on_message = None


def connect_client(broker: Broker, username: str, password: str | None = None, **kwargs) -> MqttClient:
    """A connected MqttClient (password defaults to the broker's known one for `username`)."""
    client = MqttClient(broker, username, password, **kwargs)
    try:
        return client.connect()
    except BaseException:
        client.close()
        raise


# ---------------------------------------------------------------- Mosquitto's own CLI clients

def _cli_auth(broker: Broker, username: str | None, password: str | None, *,
              tls: bool | None = None, ca_file: Path | None = None) -> list[str]:
    args = ["-h", broker.host, "-p", str(broker.port), "-V", "mqttv311"]
    ca = _ca_file(broker, tls, ca_file)
    if ca is not None:
        args += ["--cafile", str(ca)]
    if username is not None:
        args += ["-u", username, "-P", broker.password(username) if password is None else password]
    return args


def cli_publish(broker: Broker, username: str | None, topic: str, payload: str, *,
                password: str | None = None, qos: int = 1, retain: bool = False,
                timeout: float = 10.0, tls: bool | None = None,
                ca_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `mosquitto_pub` once (it exits by itself) and return the finished process."""
    args = [require_tool("mosquitto_pub"), *_cli_auth(broker, username, password, tls=tls, ca_file=ca_file),
            "-t", topic, "-m", payload, "-q", str(qos)]
    if retain:
        args.append("-r")
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          check=False)


def cli_drop_session(broker: Broker, username: str, client_id: str, topic: str, *,
                     password: str | None = None, timeout: float = 10.0) -> None:
    """Connect once as `client_id` with a clean session (mosquitto_sub, subscribed to `topic`,
    exits once subscribed), so the broker drops that client's persistent session. A command
    of its own rather than a paho client: paho's select() cannot watch a descriptor above
    1023, which a process holding a benchmark's fleet of connections hands out."""
    args = [require_tool("mosquitto_sub"), *_cli_auth(broker, username, password), "-i", client_id,
            "-t", topic, "-E"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          check=False)
    if done.returncode != 0:
        raise ConnectionError(f"{username} as {client_id}: mosquitto_sub exit {done.returncode}: "
                              f"{(done.stdout + done.stderr).strip()}")


class CliSubscriber(ChildProcess):
    """`mosquitto_sub` as a child process; start() returns once its SUBACK arrived."""

    MARK = "MSG\t"

    def __init__(self, broker: Broker, username: str, topics: Iterable[str], *,
                 password: str | None = None, qos: int = 1, tls: bool | None = None,
                 ca_file: Path | None = None):
        self.username = username
        self.topics = list(topics)
        # stdbuf: mosquitto_sub's stdout is a pipe here, which stdio would buffer fully
        argv = [require_tool("stdbuf"), "-oL", require_tool("mosquitto_sub"),
                *_cli_auth(broker, username, password, tls=tls, ca_file=ca_file),
                "-q", str(qos), "-d", "-F", self.MARK + "%t\t%p"]
        for t in self.topics:
            argv += ["-t", t]
        super().__init__(f"mosquitto_sub as {username}", argv)

    def start(self, timeout: float = 5.0) -> Self:
        super().start()
        try:
            self.wait_lines(lambda lines: any(l.startswith("Subscribed (mid:") for l in lines), timeout,
                            "subscribed")
        except BaseException:
            self.stop()
            raise
        return self

    def messages(self) -> list[tuple[str, str]]:
        """(topic, payload) of every message received so far."""
        return [self._message(l) for l in self.lines() if l.startswith(self.MARK)]

    def _message(self, line: str) -> tuple[str, str]:
        topic, payload = line[len(self.MARK):].split("\t", 1)
        return topic, payload

    def expect(self, topic: str, payload: str, timeout: float = 5.0) -> None:
        line = self.MARK + f"{topic}\t{payload}"
        self.wait_lines(lambda lines: line in lines, timeout, f"{payload!r} on {topic!r}")
