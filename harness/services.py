"""Local gateway and central processes for tests, benchmarks and the demo.

`ServiceProcess` runs `python -m <module> run --config <toml>` from the checkout as a child
process (harness.process: its own session, output to a log file, stopped by its pid); callers
wait for its log lines. `GatewayProcess` writes a gateway's configuration, station file and
password into a directory first; harness.central.CentralProcess does the same for central.
Production runs both under systemd instead (docs/deployment.md, docs/central.md).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from harness import ROOT
from harness.process import ChildProcess
from recarga.core.model import StationMeta
from recarga.core.stations import dump_stations_json


def write_secret(path: Path, value: str) -> None:
    """A password file only its owner may read, as the services' *_password_file expect."""
    path.write_text(value + "\n")
    os.chmod(path, 0o600)


def tls_ca_line(ca_file: Path | None) -> str:
    """A [broker] table's tls_ca line for a broker with this CA file (TLS), or nothing (plain)."""
    return "" if ca_file is None else f"tls_ca = {json.dumps(str(ca_file))}\n"


def gateway_reservations(config: Path, *args: str) -> list[dict]:
    """The reservations in a gateway's database, as `recarga-gateway reservations --json`
    lists them (args: more of its options, such as --active)."""
    out = subprocess.run([sys.executable, "-m", "recarga.gateway.cli", "reservations", "--config", str(config),
                          "--json", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        raise subprocess.SubprocessError(f"recarga.gateway.cli reservations failed ({out.returncode}): "
                                         f"{out.stderr.strip()}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


class ServiceProcess(ChildProcess):
    """`python -m <module> run --config <config>` as a child process, output to `log`.

    start() again after stop() or kill() is a restart: same config and database, log appended.
    """

    def __init__(self, who: str, module: str, config: Path, log: Path):
        self.module = module
        self.config = Path(config)
        # from the checkout, unbuffered: its log lines are there as soon as it logs them
        super().__init__(who, [sys.executable, "-m", module, "run", "--config", str(self.config)], log,
                         cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))


GATEWAY_TOML = """\
# Written by harness.services.GatewayProcess (tests, benchmarks, the demo). Paths are relative to this file.
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
{tls}
[reservations]
hold_s = {hold_s}
grace_s = {grace_s}
"""


class GatewayProcess(ServiceProcess):
    """A gateway with its own config, station file, password and database under `root`,
    on a broker at 127.0.0.1:`port`, over TLS when `tls_ca` (the broker's ca_file) is given.
    `extra` is TOML inserted before [broker]: top-level keys, or whole sections such as
    [overflow]. SQLite's `synchronous` is NORMAL unless given (a killed process loses
    nothing either way; FULL adds the fsyncs)."""

    def __init__(self, root: Path, region: str, port: int, user: str, password: str,
                 stations: Sequence[StationMeta], hold_s: float = 60, grace_s: float = 300,
                 tick_s: float = 0.2, extra: str = "", who: str | None = None, synchronous: str = "NORMAL",
                 tls_ca: Path | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = self.root / "gateway.db"
        dump_stations_json(list(stations), self.root / "stations.json")
        write_secret(self.root / "gateway.password", password)
        config = self.root / "gateway.toml"
        config.write_text(GATEWAY_TOML.format(region=json.dumps(region), tick_s=tick_s, extra=extra, port=port,
                                              user=user, hold_s=hold_s, grace_s=grace_s,
                                              synchronous=synchronous, tls=tls_ca_line(tls_ca)))
        super().__init__(who or f"gateway {region}", "recarga.gateway.cli", config, self.root / "gateway.log")

    def wait_connected(self, timeout: float = 10) -> None:
        """Until it has connected to its broker."""
        self.wait_log("connected to", timeout)

    def reservations(self, *args: str) -> list[dict]:
        """The reservations in its database (gateway_reservations)."""
        return gateway_reservations(self.config, *args)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """`recarga-gateway <args> --config <its config>`, as an operator runs it (exit status
        and output in the result, not raised)."""
        return subprocess.run([sys.executable, "-m", "recarga.gateway.cli", *args, "--config", str(self.config)],
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
