"""Run the real gateway (`python -m gateway.cli run`) as a child process for tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.model import StationMeta
from gateway.stations import dump_stations_json


class GatewayProcess:
    """A gateway child process with its own config, station file and database under `root`."""

    def __init__(self, root: Path, region: str, port: int, user: str, password: str,
                 stations: list[StationMeta], hold_s: float = 60, grace_s: float = 300,
                 tick_s: float = 0.2, extra: str = ""):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = self.root / "gateway.db"
        self.log = self.root / "gateway.log"
        dump_stations_json(stations, self.root / "stations.json")
        (self.root / "gateway.password").write_text(password)
        self.config = self.root / "gateway.toml"
        self.config.write_text(f"""\
region = "{region}"
database = "gateway.db"
stations = "stations.json"
tick_s = {tick_s}
log_level = "INFO"
synchronous = "NORMAL"
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
""")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "GatewayProcess":
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config)],
                                     stdout=self._logf, stderr=subprocess.STDOUT, env=env)
        return self

    def wait_connected(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "connected to" in self.log_text():
                return
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.05)
        raise TimeoutError(f"gateway did not connect within {timeout}s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as in a crash or power cut of the process."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if getattr(self, "_logf", None):
            self._logf.close()
