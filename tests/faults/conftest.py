"""The fault-injection suite: each scenario runs a real Mosquitto and the real gateway (and
central where it takes part), injects one fault, and ends with the invariants of
invariants.py checked against the gateway's database and what the devices saw."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from invariants import Ledger, Snapshot, assert_invariants

from harness.broker import REGION
from harness.clients import MqttClient
from harness.region import Region, station_set
from recarga.core.model import StationMeta
from recarga.core.protocol import device as D


@dataclass
class Scenario:
    """A started region (broker, gateway, stations) and the ledger of its cars."""

    region: Region
    ledger: Ledger

    @property
    def gw(self):
        return self.region.gw

    def station(self, sid: str) -> MqttClient:
        return next(c for c in self.region.clients if c.username == sid)

    def car(self, cid: str, **kw: Any) -> MqttClient:
        """A car with a persistent session (client id = its user), as the boards connect, so
        replies published while it is away reach it when it is back."""
        return self.ledger.car(self.region.client(cid, client_id=cid, clean_session=False, **kw))

    def check(self) -> Snapshot:
        return assert_invariants(self.gw.db, self.ledger)

    def stations_cmds(self, sid: str) -> list[bytes]:
        return [m.payload for m in self.station(sid).messages(D.station_topic(REGION, sid, "cmd"))]


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Callable[..., Scenario]]:
    """scenario(cars, stations=station_set(2, 2), start=True, **gateway options): a region
    under tmp_path (or root=...); stations report all slots free; start=False leaves the
    gateway to the test. Everything is stopped by pid when the test ends."""
    made: list[Region] = []

    def make(cars: list[str], stations: list[StationMeta] | None = None, *, start: bool = True,
             root: Path | None = None, **gw: Any) -> Scenario:
        region = Region(root or tmp_path / f"region{len(made)}", cars, stations or station_set(2, 2), **gw)
        made.append(region)
        s = Scenario(region, Ledger())
        for st in region.stations:
            region.station_up(st.id, ["free"] * len(st.slots))
            s.ledger.statuses[st.id] = ["free"] * len(st.slots)
        if start:
            region.gw.start().wait_connected()
        return s

    try:
        yield make
    finally:
        for r in made:
            r.close()
