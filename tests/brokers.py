"""Test helpers: a real Mosquitto broker on a free loopback port, and clients for it.

`Broker` writes a configuration with gateway.broker_config (auth and ACL on) and runs
`mosquitto -c <conf>` as a child process; it stops that process by its pid (SIGTERM, then
SIGKILL after a timeout). `MqttClient` is a paho-mqtt 2.x client speaking MQTT 3.1.1, as the
boards do. `CliSubscriber` and `cli_publish` run Mosquitto's own command-line clients as
clients independent of paho. Fixtures in conftest.py make sure everything is stopped.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from gateway import broker_config

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

SETUP_HINT = "install Debian's mosquitto and mosquitto-clients packages (scripts/setup does)"


class BrokerError(RuntimeError):
    """The test broker did not start or stop as expected; the message carries its log."""


def require_tool(name: str) -> str:
    """Absolute path of a Mosquitto program, or a clear error saying how to get it."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise BrokerError(f"{name!r} not found: {SETUP_HINT}")
    return found


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Stop a child we started, by its pid: SIGTERM, then SIGKILL after `timeout` s; reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Broker:
    """One Mosquitto process for a configuration file; start, stop (by pid) and restart it.

    A restart reuses the same conf, so the same port and persistence directory.
    """

    def __init__(self, conf_path: Path, host: str, port: int, *, region: str = REGION,
                 passwords: Mapping[str, str] | None = None, log_path: Path | None = None):
        self.conf_path = Path(conf_path)
        self.directory = self.conf_path.parent
        self.host = host
        self.port = port
        self.region = region
        self.passwords = dict(passwords or {})
        self.log_path = log_path
        self.output_path = self.directory / "mosquitto.out"  # stdout/stderr: errors before the log opens
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    @classmethod
    def generate(cls, directory: Path, *, region: str = REGION, gateway_user: str = GATEWAY_USER,
                 cars: Sequence[str] = CARS, stations: Sequence[str] = STATIONS,
                 passwords: Mapping[str, str] | None = None, host: str = "127.0.0.1",
                 port: int | None = None) -> Broker:
        """Write a broker directory with gateway.broker_config (not started yet)."""
        passwords = dict(PASSWORDS if passwords is None else passwords)
        port = free_port(host) if port is None else port
        # The broker runs as whoever runs the tests (as root it would otherwise switch to the
        # 'mosquitto' account, which cannot enter pytest's private temporary directories).
        me = pwd.getpwuid(os.geteuid()).pw_name
        conf = broker_config.write_broker_dir(directory, region, port, passwords, list(cars),
                                              list(stations), gateway_user, host, run_as=me)
        return cls(conf, host, port, region=region, passwords=passwords,
                   log_path=conf.parent / broker_config.LOG_NAME)

    @classmethod
    def launch(cls, directory: Path, attempts: int = 3, **kwargs) -> Broker:
        """generate() and start(); picks another port if the free one was taken meanwhile."""
        for attempt in range(1, attempts + 1):
            broker = cls.generate(directory, **kwargs)
            try:
                broker.start()
            except BrokerError:
                if attempt < attempts and "Address already in use" in broker.log():
                    continue
                raise
            return broker

    # ------------------------------------------------------------ process

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto and wait until it accepts connections (at most `timeout` s)."""
        if self.running:
            raise BrokerError(f"broker pid {self.pid} is already running")
        binary = require_tool("mosquitto")
        self._log_start = self._log_size()
        with open(self.output_path, "ab") as out:
            self._proc = subprocess.Popen([binary, "-c", str(self.conf_path)], stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self._proc.pid
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise BrokerError(f"mosquitto exited with {code} while starting; {self._log_excerpt()}")
            if self._accepts() and self._proc.poll() is None:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"mosquitto (pid {self.pid}) did not accept connections on "
                                  f"{self.host}:{self.port} within {timeout} s; {self._log_excerpt()}")
            time.sleep(0.02)

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                pass
        except OSError:
            return False
        # Someone else may hold the port: ours logs "running" once its listeners are open.
        if self.log_path is None:
            return True
        with open(self.log_path, "rb") as f:
            f.seek(self._log_start)
            return b" running" in f.read()

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size if self.log_path is not None else 0
        except FileNotFoundError:
            return 0

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to our pid, SIGKILL if it has not exited after `timeout` s. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, timeout)

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start again: same port, same persistence directory, new pid."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ diagnostics

    def log(self) -> str:
        """The broker's log file plus what it printed to stdout/stderr."""
        parts = []
        for p in (self.log_path, self.output_path):
            if p is not None and p.exists():
                parts.append(p.read_text(errors="replace"))
        return "".join(parts)

    def _log_excerpt(self, lines: int = 40) -> str:
        text = "\n".join(self.log().splitlines()[-lines:])
        return f"conf {self.conf_path}, log:\n{text or '(empty)'}"

    def password(self, user: str) -> str:
        return self.passwords[user]


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
