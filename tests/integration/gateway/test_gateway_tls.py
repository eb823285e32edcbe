"""TLS on a region broker (real Mosquitto, auth and ACL on) and the real gateway process over it.

The broker's one listener is TLS with a CA made for the test (recarga.core.certs via
harness.broker.make_tls); a plain client and a client that trusts another CA are refused, by
paho and by Mosquitto's own clients alike, and what they publish never arrives.
"""
from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest

from harness.broker import REGION, Broker, make_tls
from harness.clients import CliSubscriber, cli_publish, try_connect
from harness.process import ProcessExited
from harness.region import ask, reserve_msg, station_set
from harness.services import GatewayProcess
from recarga.core.protocol import device as D

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_broker(tmp_path: Path):
    with Broker.launch(tmp_path / "broker", tls=True) as broker:
        yield broker


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    """A CA of the same make that did not sign the broker's certificate."""
    return Path(make_tls(tmp_path / "other").cafile)


def test_paho_connects_only_with_tls_and_the_brokers_ca(tls_broker: Broker, other_ca: Path):
    password = tls_broker.password("car-a")
    assert try_connect(tls_broker, "car-a", password) == 0  # TLS with the right CA: accepted
    with pytest.raises(ConnectionResetError, match="without a CONNACK"):
        try_connect(tls_broker, "car-a", password, tls=False)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        try_connect(tls_broker, "car-a", password, ca_file=other_ca)


def test_mosquitto_clients_are_refused_in_plain_and_with_another_ca(tls_broker: Broker, other_ca: Path, mqtt_client):
    gateway = mqtt_client("gateway", broker=tls_broker)
    gateway.subscribe(D.car_filter(REGION, "request"))
    topic = D.car_topic(REGION, "car-a", "request")
    plain = cli_publish(tls_broker, "car-a", topic, "plain", tls=False)
    assert plain.returncode != 0 and "connection was lost" in plain.stderr.lower()
    other = cli_publish(tls_broker, "car-a", topic, "other-ca", ca_file=other_ca)
    assert other.returncode != 0 and "tls error" in other.stderr.lower()
    ok = cli_publish(tls_broker, "car-a", topic, "over-tls")
    assert ok.returncode == 0, ok.stderr
    assert gateway.expect(topic).payload == b"over-tls"
    # the refused clients tried first: had either got through, its message would stand before this one
    assert [m.payload for m in gateway.messages(topic)] == [b"over-tls"]
    with pytest.raises(ProcessExited, match="TLS error"):
        CliSubscriber(tls_broker, "car-b", [D.car_topic(REGION, "car-b", "reply")], ca_file=other_ca).start(timeout=3)
    sub = CliSubscriber(tls_broker, "car-b", [D.car_topic(REGION, "car-b", "reply")]).start()
    sub.stop()


def test_gateway_serves_a_reservation_end_to_end_over_tls(region_factory):
    region = region_factory(["car-a"], station_set(2, 1), tls=True)
    assert region.broker.ca_file is not None
    assert f'tls_ca = "{region.broker.ca_file}"' in region.gw.config.read_text()
    car = region.client("car-a")
    car.subscribe(D.car_topic(REGION, "car-a", "reply"))
    reply = ask(car, reserve_msg("car-a", "t1"))
    assert reply["ok"] and reply["reservation"]["state"] == "held"
    station = next(c for c in region.clients if c.username == reply["reservation"]["station"])
    cmd = station.expect(D.station_topic(REGION, reply["reservation"]["station"], "cmd"))
    assert json.loads(cmd.payload)["cmd"] == "reserve"
    assert [r["id"] for r in region.reservations()] == [reply["reservation"]["id"]]


def test_gateway_that_trusts_another_ca_refuses_the_broker_and_says_why(tls_broker: Broker, other_ca: Path,
                                                                       tmp_path: Path):
    gw = GatewayProcess(tmp_path / "gw", REGION, tls_broker.port, "gateway", tls_broker.password("gateway"),
                        station_set(1, 1), tls_ca=other_ca)
    with gw:
        gw.wait_log("certificate verify failed", 15)
        gw.wait_log("next attempt in", 5)  # retried with backoff, still running
        gw.alive()  # raises if it has exited
        assert "connected to" not in gw.log_text()
