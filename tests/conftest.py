"""Shared fixtures. Integration tests start their own Mosquitto (tests/brokers.py) and stop it
by pid when the test ends, also when it fails."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# pytest puts tests/ on sys.path (rootdir-less "prepend" import mode), so helpers import plainly.
from brokers import Broker, MqttClient, connect_client


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A running broker for region "test": user "gateway", cars car-a/car-b, stations st-1/st-2,
    passwords from brokers.PASSWORDS, auth and ACL on, on a free loopback port."""
    b = Broker.launch(tmp_path / "broker")
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def mqtt_client(broker: Broker) -> Iterator[Callable[..., MqttClient]]:
    """Factory: mqtt_client("car-a") is a paho client connected to `broker` as car-a (known
    password unless given); every client is disconnected at the end of the test."""
    clients: list[MqttClient] = []

    def make(username: str, password: str | None = None, **kwargs) -> MqttClient:
        c = connect_client(broker, username, password, **kwargs)
        clients.append(c)
        return c

    try:
        yield make
    finally:
        for c in clients:
            c.close()
