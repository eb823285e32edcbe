"""Local brokers for tests, benchmarks and the demo: the central broker and region brokers
bridged to it, each a real Mosquitto on a free loopback port with auth and ACL on.

Built on gateway.localbroker.Broker (started and stopped by pid); the configuration comes
from gateway.broker_config (write_central_broker_dir, write_broker_dir with a bridge).
"""
from __future__ import annotations

import os
import pwd
from collections.abc import Mapping, Sequence
from pathlib import Path

from gateway import broker_config
from gateway.localbroker import Broker, free_port

CENTRAL_USER = "central"


def _me() -> str:
    # as root the broker would switch to 'mosquitto', which cannot enter private temp dirs
    return pwd.getpwuid(os.geteuid()).pw_name


def central_passwords(regions: Sequence[str], central_password: str = "central-secret") -> dict[str, str]:
    """Test passwords: the central user's and one per region's bridge user."""
    return {CENTRAL_USER: central_password,
            **{broker_config.bridge_user(r): f"{r}-bridge-secret" for r in regions}}


class CentralBroker(Broker):
    """The central broker; users CENTRAL_USER and bridge_user(r) per region.

    CentralBroker.launch(directory, regions=[...]) generates and starts it."""

    @classmethod
    def generate(cls, directory: Path, *, regions: Sequence[str], passwords: Mapping[str, str] | None = None,
                 extra_acl: Mapping[str, Sequence[tuple[str, str]]] | None = None) -> CentralBroker:
        passwords = dict(passwords or central_passwords(regions))
        port = free_port()
        conf = broker_config.write_central_broker_dir(directory, port, passwords, CENTRAL_USER, list(regions),
                                                      run_as=_me(), extra_acl=extra_acl)
        return cls(conf, "127.0.0.1", port, region="central", passwords=passwords,
                   log_path=conf.parent / broker_config.LOG_NAME)


class BridgedBroker(Broker):
    """A region's broker bridged to a CentralBroker as bridge_user(region).

    BridgedBroker.launch(directory, region=..., central=..., gateway_user=..., passwords=...)
    generates and starts it; `passwords` holds the region's own users."""

    @classmethod
    def generate(cls, directory: Path, *, region: str, central: Broker, gateway_user: str,
                 passwords: Mapping[str, str], cars: Sequence[str] = (), stations: Sequence[str] = (),
                 restart_s: int = 1) -> BridgedBroker:
        user = broker_config.bridge_user(region)
        bridge = broker_config.BridgeSettings(host=central.host, port=central.port, password=central.password(user),
                                              restart_min_s=restart_s, restart_max_s=max(restart_s, 2))
        port = free_port()
        conf = broker_config.write_broker_dir(directory, region, port, passwords, list(cars), list(stations),
                                              gateway_user, run_as=_me(), bridge=bridge)
        return cls(conf, "127.0.0.1", port, region=region, passwords=passwords,
                   log_path=conf.parent / broker_config.LOG_NAME)
