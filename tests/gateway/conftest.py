"""GatewayService without a broker, for tests/gateway/test_service*.py: a region "t" with one
station s1 (one 22 kW slot), its database in the test's tmp_path, its paho client an Outbox
that records what the service publishes and acknowledges, and its store's commits and the
process exit it asks for recorded in the same list."""
from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.client import ConnectFlags
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from recarga.core.model import SlotMeta, StationMeta
from recarga.core.stations import dump_stations_json
from recarga.gateway import config as C
from recarga.gateway import service as S


class Outbox:
    """Stands in for the service's paho client: publish(), ack() and subscribe() append to
    `events` ((topic, payload), "ack <mid>" and ("subscribe", [topic, ...])); the service sets
    its callbacks on it as on paho's."""

    def __init__(self, events: list[Any]) -> None:
        self.events = events

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> mqtt.MQTTMessageInfo:
        self.events.append((topic, payload))
        return mqtt.MQTTMessageInfo(0)

    def ack(self, mid: int, qos: int) -> mqtt.MQTTErrorCode:
        self.events.append(f"ack {mid}")
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def subscribe(self, topics: list[tuple[str, int]]) -> tuple[mqtt.MQTTErrorCode, int]:
        self.events.append(("subscribe", [t for t, _ in topics]))
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS, 0

    def connected(self) -> None:
        """The broker accepted the connection: paho calls on_connect."""
        self.on_connect(self, None, ConnectFlags(False), ReasonCode(PacketTypes.CONNACK, "Success"), None)

    def deliver(self, msg: mqtt.MQTTMessage) -> None:
        """The message as paho hands it over when it has read it."""
        self.on_message(self, None, msg)


def exiting(events: list[Any]) -> Callable[[int], None]:
    """The process exit, recorded as "exit <code>"; on the loop's (the test's) thread also
    raised as SystemExit, which ends the call that asked for it as the exit would. The
    syncer's thread ends by itself after asking."""

    def exit_process(code: int) -> None:
        events.append(f"exit {code}")
        if threading.current_thread() is threading.main_thread():
            sys.exit(code)

    return exit_process


@pytest.fixture
def make_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], S.GatewayService]]:
    """make_service(settings): a GatewayService with `settings` (TOML lines) in its
    configuration; its client an Outbox whose `events` also get "commit" for each store
    commit and "exit <code>" for an exit. Closed when the test ends."""
    made: list[S.GatewayService] = []
    dump_stations_json([StationMeta("s1", 52.52, 13.40, (SlotMeta(22.0, False),))], tmp_path / "st.json")

    def make(settings: str = "") -> S.GatewayService:
        path = tmp_path / f"gw{len(made)}.toml"
        path.write_text(f'region = "t"\ndatabase = "gw{len(made)}.db"\nstations = "st.json"\n{settings}\n')
        events: list[Any] = []
        svc = S.GatewayService(C.load(path), client_factory=lambda broker, region: Outbox(events),
                               exit_process=exiting(events))
        made.append(svc)
        commit_all = svc.store.commit_all
        monkeypatch.setattr(svc.store, "commit_all", lambda *a: (events.append("commit"), commit_all(*a)))
        return svc

    yield make
    for svc in made:
        svc.close()


@pytest.fixture
def message() -> Callable[..., mqtt.MQTTMessage]:
    """message(topic, payload, mid, retain=False): a QoS 1 message as paho delivers it
    (retain: the broker's replay of a retained message on subscribe)."""

    def make(topic: str | bytes, payload: bytes, mid: int, retain: bool = False) -> mqtt.MQTTMessage:
        m = mqtt.MQTTMessage(mid, topic if isinstance(topic, bytes) else topic.encode())
        m.payload, m.qos, m.retain = payload, 1, retain
        return m

    return make
