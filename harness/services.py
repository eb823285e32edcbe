"""Local gateway and central processes for tests, benchmarks and the demo.

`ServiceProcess` runs `python -m <package>.cli run --config <toml>` as a child process in
its own session (a Ctrl-C in the terminal reaches only the parent, which stops its children
in order), logging to a file; callers wait for its log lines, and it is stopped by its pid
(SIGTERM, then SIGKILL), as gateway.localbroker's brokers are. `GatewayProcess` writes a
gateway's configuration, station file and password into a directory first;
central.localnet.CentralProcess does the same for central. Production runs both under
systemd instead (docs/deployment.md, docs/central.md).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Self, TypeVar

from harness import ROOT  # the checkout: `-m gateway.cli` resolves here
from harness.broker import stop_process
from recarga.core.model import StationMeta
from recarga.core.stations import dump_stations_json

T = TypeVar("T")


class ProcessExited(subprocess.SubprocessError):
    """A service process ended while it was being waited for; the message ends with its log."""


def wait_for(pred: Callable[[], T], timeout: float, what: str, alive: Callable[[], None] = lambda: None) -> T:
    """pred()'s first truthy value, polled every 50 ms; TimeoutError naming `what` after
    `timeout` s. alive() runs on every poll and raises when waiting longer is pointless."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)


def write_secret(path: Path, value: str) -> None:
    """A password file only its owner may read, as the services' *_password_file expect."""
    path.write_text(value + "\n")
    os.chmod(path, 0o600)


class ServiceProcess:
    """`python -m <module> run --config <config>` as a child process, output to `log`.

    start() again after stop() or kill() is a restart: same config and database, log appended.
    """

    def __init__(self, who: str, module: str, config: Path, log: Path):
        self.who = who  # names it in errors: "gateway a", "central"
        self.module = module
        self.config = Path(config)
        self.log = Path(log)
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> Self:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.who} (pid {self.proc.pid}) is already running")
        self._close_log()
        self._out = open(self.log, "ab")  # noqa: SIM115 (open while the process runs)
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, "run", "--config", str(self.config)],
                                     cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> None:
        """Raise ProcessExited, with the end of its log, if the process has ended."""
        if self.proc is not None and self.proc.poll() is not None:
            tail = "\n".join(self.log_text().splitlines()[-15:])
            raise ProcessExited(f"{self.who} exited with status {self.proc.returncode}; its log ends:\n{tail}")

    def wait_log(self, line: str, timeout: float = 20.0, count: int = 1) -> None:
        """Until `line` stands `count` times in its log; ProcessExited if it ends first."""
        wait_for(lambda: self.log_text().count(line) >= count, timeout, f"{self.who}: {line!r} in its log",
                 self.alive)

    def kill(self) -> None:
        """SIGKILL by pid: no clean shutdown, as in a crash or a power cut."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by pid, SIGKILL if it has not exited after `timeout` s. Idempotent."""
        if self.proc is not None:
            stop_process(self.proc, timeout)
        self._close_log()

    def _close_log(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


GATEWAY_TOML = """\
# Written by gateway.localnet.GatewayProcess (tests, benchmarks, the demo). Paths are relative to this file.
region = {region}
database = "gateway.db"
stations = "stations.json"
tick_s = {tick_s}
log_level = "INFO"
synchronous = "{synchronous}"
{extra}
[broker]
host = "127.0.0.1"
port = {port}
username = "{user}"
password_file = "gateway.password"
reconnect_min_s = 1
reconnect_max_s = 2

[reservations]
hold_s = {hold_s}
grace_s = {grace_s}
"""


class GatewayProcess(ServiceProcess):
    """A gateway with its own config, station file, password and database under `root`,
    on a broker at 127.0.0.1:`port`. `extra` is TOML inserted before [broker]: top-level
    keys, or whole sections such as [overflow]. SQLite's `synchronous` is NORMAL unless
    given (a killed process loses nothing either way; FULL adds the fsyncs)."""

    def __init__(self, root: Path, region: str, port: int, user: str, password: str,
                 stations: Sequence[StationMeta], hold_s: float = 60, grace_s: float = 300,
                 tick_s: float = 0.2, extra: str = "", who: str | None = None, synchronous: str = "NORMAL"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = self.root / "gateway.db"
        dump_stations_json(list(stations), self.root / "stations.json")
        write_secret(self.root / "gateway.password", password)
        config = self.root / "gateway.toml"
        config.write_text(GATEWAY_TOML.format(region=json.dumps(region), tick_s=tick_s, extra=extra, port=port,
                                              user=user, hold_s=hold_s, grace_s=grace_s,
                                              synchronous=synchronous))
        super().__init__(who or f"gateway {region}", "recarga.gateway.cli", config, self.root / "gateway.log")

    def wait_connected(self, timeout: float = 10) -> None:
        """Until it has connected to its broker."""
        self.wait_log("connected to", timeout)
