"""A local Mosquitto process for tests, benchmarks and the demo.

`Broker` writes a configuration with gateway.broker_config (auth and ACL on) and runs
`mosquitto -c <conf>` as a child process on a loopback port; it stops that process by its
pid (SIGTERM, then SIGKILL after a timeout). Production brokers run under systemd instead
(docs/deployment.md).
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from recarga.core import broker_config

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

    def __init__(self, conf_path: Path, host: str, port: int, *, region: str,
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
    def generate(cls, directory: Path, *, region: str, gateway_user: str, cars: Sequence[str],
                 stations: Sequence[str], passwords: Mapping[str, str], host: str = "127.0.0.1",
                 port: int | None = None,
                 extra_acl: Mapping[str, Sequence[tuple[str, str]]] | None = None) -> Broker:
        """Write a broker directory with gateway.broker_config (not started yet)."""
        passwords = dict(passwords)
        port = free_port(host) if port is None else port
        # The broker runs as whoever runs the tests (as root it would otherwise switch to the
        # 'mosquitto' account, which cannot enter pytest's private temporary directories).
        me = pwd.getpwuid(os.geteuid()).pw_name
        conf = broker_config.write_broker_dir(directory, region, port, passwords, list(cars),
                                              list(stations), gateway_user, host, run_as=me,
                                              extra_acl=extra_acl)
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
