"""A local central network for tests, benchmarks and the demo: the central broker and region
brokers bridged to it, each a real Mosquitto on a free loopback port with auth and ACL on,
and `recarga-central run` as a child process.

Built on harness.broker.Broker and harness.services.ServiceProcess (both started and stopped
by pid); the brokers' configuration comes from recarga.core.central_broker
(write_central_broker_dir) and recarga.core.broker_config (write_broker_dir with a bridge).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.broker import MONITOR_USER, Broker, free_port, run_as_me, tls_listener
from harness.services import ServiceProcess, tls_ca_line, write_secret
from recarga.core import broker_config
from recarga.core.bridge import BridgeSettings, bridge_user
from recarga.core.broker_dir import LOG_NAME
from recarga.core.central_broker import central_user, write_central_broker_dir
from recarga.core.protocol import central as PC
from recarga.core.protocol import wire as W

# central instances a test central broker has users for (the broker takes user names as
# client ids, so every instance logs in as its own user, central_user)
INSTANCES = ("c1", "c2", "c3", "c4")
CENTRAL_USER = central_user(INSTANCES[0])  # the first instance's: CentralProcess's default
# extra_acl for CentralBroker: a user that reads every region's central/ subtree, so a test
# or benchmark can count central's messages on the wire without being one of the parties
MONITOR_ACL = {MONITOR_USER: [("read", PC.subtree("+", "#"))]}
CAR_NEED = {"lat": 52.52, "lon": 13.40, "soc": 0.3, "battery_kwh": 58.0, "consumption_kwh_100km": 16.6,
            "max_ac_kw": 11.0, "max_dc_kw": 100.0, "target_soc": 0.8}


def central_passwords(regions: Sequence[str], instances: Sequence[str] = INSTANCES) -> dict[str, str]:
    """Test passwords: one per central instance's user and one per region's bridge user."""
    return {**{central_user(i): f"central-{i}-secret" for i in instances},
            **{bridge_user(r): f"{r}-bridge-secret" for r in regions}}


class CentralBroker(Broker):
    """The central broker; users central_user(i) per instance i in INSTANCES and bridge_user(r)
    per region.

    CentralBroker.launch(directory, regions=[...]) generates and starts it."""

    @classmethod
    def generate(cls, directory: Path, *, regions: Sequence[str], passwords: Mapping[str, str] | None = None,
                 extra_acl: Mapping[str, Sequence[tuple[str, str]]] | None = None,
                 tls: bool | Path = False) -> CentralBroker:
        passwords = dict(passwords or central_passwords(regions))
        port = free_port()
        plain, listener = tls_listener(directory, "127.0.0.1", port, tls)
        users = [central_user(i) for i in INSTANCES]
        conf = write_central_broker_dir(directory, plain, passwords, users, list(regions),
                                        run_as=run_as_me(), extra_acl=extra_acl, tls=listener)
        return cls(conf, "127.0.0.1", port, region="central", passwords=passwords,
                   log_path=conf.parent / LOG_NAME,
                   ca_file=Path(listener.cafile) if listener else None)


class BridgedBroker(Broker):
    """A region's broker bridged to a CentralBroker as bridge_user(region).

    BridgedBroker.launch(directory, region=..., central=..., gateway_user=..., passwords=...)
    generates and starts it; `passwords` holds the region's own users. The bridge is TLS
    (verifying central's CA and host) when central has TLS; `tls` makes this broker's own
    listener TLS."""

    @classmethod
    def generate(cls, directory: Path, *, region: str, central: Broker, gateway_user: str,
                 passwords: Mapping[str, str], cars: Sequence[str] = (), stations: Sequence[str] = (),
                 restart_s: int = 1, tls: bool | Path = False,
                 extra_acl: Mapping[str, Sequence[tuple[str, str]]] | None = None) -> BridgedBroker:
        user = bridge_user(region)
        bridge = BridgeSettings(host=central.host, port=central.port, password=central.password(user),
                                restart_min_s=restart_s, restart_max_s=max(restart_s, 2),
                                cafile=central.ca_file)
        port = free_port()
        plain, listener = tls_listener(directory, "127.0.0.1", port, tls)
        conf = broker_config.write_broker_dir(directory, region, plain, passwords, list(cars), list(stations),
                                              gateway_user, run_as=run_as_me(), bridge=bridge, tls=listener,
                                              extra_acl=extra_acl)
        return cls(conf, "127.0.0.1", port, region=region, passwords=passwords,
                   log_path=conf.parent / LOG_NAME,
                   ca_file=Path(listener.cafile) if listener else None)


def overflow_request(origin: str, car: str, deadline: float,
                     need: Mapping[str, float] = CAR_NEED) -> tuple[str, bytes]:
    """(xid, payload) of the overflow request `origin`'s gateway forwards for `car`'s first
    reserve request: what a test or benchmark plays as the region's side on the central broker."""
    xid = PC.overflow_id(origin, car, f"{car}-0-1")
    return xid, W.encode(PC.overflow_request(xid, origin, car, deadline, dict(need)))


CENTRAL_TOML = """\
# Written by harness.central.CentralProcess (tests, benchmarks, the demo). Paths are relative to this file.
instance = {instance}
database = {database}
tick_s = 0.2
log_level = "INFO"
synchronous = "NORMAL"

[broker]
host = "{host}"
port = {port}
username = "{user}"
password_file = "central.password"
session_expiry_s = 60
reconnect_min_s = 1
reconnect_max_s = 2
{tls}"""


class CentralProcess(ServiceProcess):
    """`recarga-central run` (`python -m recarga.central.cli run`) on `broker` as its instance's
    user (central_user), with its config, password and log under `root`.

    `regions` maps each region to its broker's port on 127.0.0.1 (what central's answers send
    cars to); `neighbours` limits where a region's cars may go (default: every other region).
    Instances that share `database` (a path relative to `root`, or absolute) split the work.
    """

    def __init__(self, root: Path, broker: Broker, regions: Mapping[str, int], *, instance: str = "c1",
                 database: Path | str = "central.db", neighbours: Mapping[str, Sequence[str]] | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        user = central_user(instance)
        write_secret(self.root / "central.password", broker.password(user))
        neighbours = neighbours or {}
        toml = CENTRAL_TOML.format(instance=json.dumps(instance), database=json.dumps(str(database)),
                                   host=broker.host, port=broker.port, user=user,
                                   tls=tls_ca_line(broker.ca_file))
        for region, port in regions.items():
            toml += f'\n[regions.{region}]\nbroker_host = "127.0.0.1"\nbroker_port = {port}\n'
            if region in neighbours:
                toml += f"neighbours = {json.dumps(list(neighbours[region]))}\n"
        config = self.root / "central.toml"
        config.write_text(toml)
        super().__init__(f"central {instance}", "recarga.central.cli", config, self.root / "central.log")
