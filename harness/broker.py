"""A local Mosquitto process for tests, benchmarks and the demo.

`Broker` writes a configuration with recarga.core.broker_config (auth and ACL on) and runs
`mosquitto -c <conf>` as a child process (harness.process) on a loopback port; it is stopped
by its pid. With tls=True its one listener is TLS, with a CA of its own made by
recarga.core.certs (`ca_file`; the server certificate names SERVER_NAME and 127.0.0.1), and
the harness's clients (harness.clients, harness.services, harness.central) use it. Without users given, it is the test suite's region: REGION, GATEWAY_USER, CARS,
STATIONS with PASSWORDS. Production brokers run under systemd instead (docs/deployment.md).
"""
from __future__ import annotations

import os
import pwd
import shutil
import socket
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Self

from harness.process import ChildProcess, ProcessExited
from harness.wait import wait_until
from recarga.core import broker_config, certs
from recarga.core.broker_dir import LOG_NAME
from recarga.core.protocol import device as D

SETUP_HINT = "install Debian's mosquitto and mosquitto-clients packages (scripts/setup does)"

# the test suite's region, what Broker.generate gives without users
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


MONITOR_USER = "monitor"  # a read-only user a test adds to watch a broker (extra_acl=monitor_acl(...))


def monitor_acl(region: str) -> dict[str, list[tuple[str, str]]]:
    """extra_acl for MONITOR_USER: read everything of `region` on its broker."""
    return {MONITOR_USER: [("read", f"{D.region_root(region)}/#")]}


SERVER_NAME = "localhost"  # the DNS name in a TLS test broker's certificate (with IP 127.0.0.1)
TLS_DIR = "tls"


def make_tls(directory: Path, name: str = "broker") -> broker_config.TlsListener:
    """A CA and a server certificate for SERVER_NAME and 127.0.0.1 in `directory` (made once,
    reused after), as a TlsListener on port 0: set the port with dataclasses.replace."""
    ca = certs.ca_files(directory)
    if not ca.cert.exists():
        certs.make_ca(directory, common_name=f"Recarga test CA {directory.name}")
    server = certs.server_files(directory, name)
    if not server.cert.exists():
        certs.make_server_cert(directory, name, [SERVER_NAME, "127.0.0.1"])
    return broker_config.TlsListener(ca.cert, server.cert, server.key, port=0, host="127.0.0.1")


class BrokerError(RuntimeError):
    """The test broker did not start or stop as expected; the message carries its log."""


def require_tool(name: str) -> str:
    """Absolute path of a Mosquitto program, or a clear error saying how to get it."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise BrokerError(f"{name!r} not found: {SETUP_HINT}")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tls_listener(directory: Path, host: str, port: int,
                 tls: bool | Path) -> tuple[int | None, broker_config.TlsListener | None]:
    """(plain port, TLS listener) for a test broker's one listener on host:port. `tls` True:
    a CA of its own in directory/tls; a Path: the CA in that directory, which several brokers
    share (as one project CA signs every broker, so a car trusts the region it hands over to)."""
    if tls is False:
        return port, None
    ca_dir = Path(directory) / TLS_DIR if tls is True else Path(tls)
    return None, replace(make_tls(ca_dir, f"broker-{port}"), port=port, host=host)


def run_as_me() -> str:
    """The account the broker runs as: whoever runs the harness (as root, Mosquitto would
    otherwise switch to 'mosquitto', which cannot enter pytest's private temporary directories)."""
    return pwd.getpwuid(os.geteuid()).pw_name


class Broker(ChildProcess):
    """One Mosquitto process for a configuration file; start, stop (by pid) and restart it.

    A restart reuses the same conf, so the same port and persistence directory.
    """

    def __init__(self, conf_path: Path, host: str, port: int, *, region: str,
                 passwords: Mapping[str, str] | None = None, log_path: Path | None = None,
                 ca_file: Path | None = None):
        self.conf_path = Path(conf_path)
        self.ca_file = ca_file  # set: `port` is a TLS listener whose certificate this CA signed
        self.server_name = SERVER_NAME
        self.directory = self.conf_path.parent
        self.host = host
        self.port = port
        self.region = region
        self.passwords = dict(passwords or {})
        self.log_path = log_path  # Mosquitto's own log file
        self._log_start = 0  # where this start's lines begin in log_path
        # `log` (ChildProcess) gets what it prints to stdout/stderr: errors before log_path opens
        super().__init__(f"mosquitto {region}", [], self.directory / "mosquitto.out")

    @classmethod
    def generate(cls, directory: Path, *, region: str = REGION, gateway_user: str = GATEWAY_USER,
                 cars: Sequence[str] = CARS, stations: Sequence[str] = STATIONS,
                 passwords: Mapping[str, str] | None = None, host: str = "127.0.0.1",
                 port: int | None = None,
                 extra_acl: Mapping[str, Sequence[tuple[str, str]]] | None = None,
                 tls: bool | Path = False) -> Self:
        """Write a broker directory with recarga.core.broker_config (not started yet); with
        `tls` its listener is TLS (tls_listener)."""
        passwords = dict(PASSWORDS if passwords is None else passwords)
        port = free_port(host) if port is None else port
        plain, listener = tls_listener(directory, host, port, tls)
        conf = broker_config.write_broker_dir(directory, region, plain, passwords, list(cars),
                                              list(stations), gateway_user, host, run_as=run_as_me(),
                                              extra_acl=extra_acl, tls=listener)
        return cls(conf, host, port, region=region, passwords=passwords,
                   log_path=conf.parent / LOG_NAME, ca_file=Path(listener.cafile) if listener else None)

    @classmethod
    def launch(cls, directory: Path, attempts: int = 3, **kwargs) -> Self:
        """generate() and start(); picks another port if the free one was taken meanwhile."""
        for _ in range(attempts - 1):
            broker = cls.generate(directory, **kwargs)
            try:
                return broker.start()
            except BrokerError:
                if "Address already in use" not in broker.log_text():
                    raise
        return cls.generate(directory, **kwargs).start()

    # ------------------------------------------------------------ process

    def start(self, timeout: float = 10.0) -> Self:
        """Start mosquitto and wait until it accepts connections (at most `timeout` s)."""
        self.argv = [require_tool("mosquitto"), "-c", str(self.conf_path)]
        self._log_start = self._log_size()
        super().start()
        try:
            wait_until(self._accepts, timeout, f"{self.who} accepting connections on {self.host}:{self.port}",
                       self.alive, every=0.02)
        except ProcessExited as e:
            self.stop()  # reaped already: this closes its output file
            raise BrokerError(f"{e}\n(conf {self.conf_path})") from None
        except TimeoutError as e:
            self.stop()
            raise BrokerError(f"{e}; conf {self.conf_path}, log:\n{self._log_excerpt()}") from None
        return self

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                pass
        except OSError:
            return False
        # Someone else may hold the port: ours logs "running" once its listeners are open.
        if self.log_path is None:
            return True
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                return b" running" in f.read()
        except FileNotFoundError:
            return False

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size if self.log_path is not None else 0
        except FileNotFoundError:
            return 0

    def restart(self, timeout: float = 10.0) -> Self:
        """Stop and start again: same port, same persistence directory, new pid."""
        self.stop()
        return self.start(timeout)

    # ------------------------------------------------------------ diagnostics

    def log_text(self) -> str:
        """Mosquitto's log file plus what it printed to stdout/stderr."""
        own = self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""
        return own + super().log_text()

    def _log_excerpt(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(empty)"

    def password(self, user: str) -> str:
        return self.passwords[user]
