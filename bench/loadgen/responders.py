"""The two responders the fleet measures, as harness.services.ServiceProcess children: the
gateway exactly as deployed (`python -m recarga.gateway.cli run`) and the echo
(`python -m bench.loadgen.echo run`), both on one gateway configuration.

The configuration is deploy/gateway.example.toml's settings except hold_s 3600 and
max_wait_s 86400, so that offers neither lapse during a bench nor are refused for a long
queue, and the per-car rate limit at the top of its bounds: in the closed loop each car asks
again as soon as it has its answer, hundreds of times a minute, which a real car never does. It is written here rather than by harness.services.GatewayProcess, whose template has
neither those [reservations] keys nor a station file other than its own stations.json.
"""
from __future__ import annotations

from pathlib import Path

from bench.loadgen.workload import BERLIN_CSV
from harness.services import ServiceProcess, write_secret
from recarga.core.model import StationMeta
from recarga.core.stations import dump_stations_json

GATEWAY_MODULE = "recarga.gateway.cli"
ECHO_MODULE = "bench.loadgen.echo"


def gateway_toml(region: str, host: str, port: int, user: str, synchronous: str, stations: str,
                 sync_thread: bool = False) -> str:
    stations = stations.replace("\\", "\\\\").replace('"', '\\"')
    return f"""\
# written by bench/gateway_load.py: deploy/gateway.example.toml's settings, longer holds
region = "{region}"
database = "gateway.db"
stations = "{stations}"
log_level = "INFO"
tick_s = 1.0
synchronous = "{synchronous}"
sync_thread = {str(sync_thread).lower()}

[broker]
host = "{host}"
port = {port}
username = "{user}"
password_file = "gateway.password"

[reservations]
hold_s = 3600
grace_s = 600
max_wait_s = 86400
expected_session_s = 3600

[selection]
policy = "least_completion"

[rate_limit]
requests_per_min = 60000
burst = 10000
"""


def responder_dir(d: Path, *, region: str, host: str, port: int, user: str, password: str,
                  online: list[StationMeta], synchronous: str = "FULL", register: bool = True,
                  sync_thread: bool = False) -> Path:
    """A new directory `d` with gateway.toml, the password file and, unless `register` (the
    whole register's CSV), a station file of the online stations only."""
    d.mkdir(parents=True)
    write_secret(d / "gateway.password", password)
    if register:
        stations = str(BERLIN_CSV)
    else:
        dump_stations_json(online, d / "stations.json")
        stations = "stations.json"
    (d / "gateway.toml").write_text(gateway_toml(region, host, port, user, synchronous, stations, sync_thread))
    return d


def responder(kind: str, d: Path) -> ServiceProcess:
    """The gateway ("gateway") or the echo ("echo") on responder_dir `d`'s configuration,
    logging to d/<kind>.log; not started yet."""
    module = {"gateway": GATEWAY_MODULE, "echo": ECHO_MODULE}[kind]
    return ServiceProcess(kind, module, d / "gateway.toml", d / f"{kind}.log")
