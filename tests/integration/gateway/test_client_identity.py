"""A region broker's client ids belong to their users: a logged-in device cannot take the
gateway's connection or another device's stored session by asking for its client id
(the broker uses each connection's user name as its client id). Real Mosquitto, the real
gateway process."""
from __future__ import annotations

import json
from pathlib import Path

from harness.broker import GATEWAY_USER, REGION, Broker
from harness.clients import MqttClient, connect_client
from harness.services import GatewayProcess
from recarga.core.model import SlotMeta, StationMeta
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

STATION = StationMeta("st-1", 52.52, 13.40, (SlotMeta(22.0, False),) * 2, operator="op")


def reserve(car: str, rid: str) -> bytes:
    return W.encode(D.reserve_request(rid, car, lat=52.521, lon=13.401, soc=0.2, battery_kwh=58,
                                      consumption_kwh_100km=16.6, max_ac_kw=11, max_dc_kw=100, target_soc=0.8))


def test_a_car_asking_for_the_gateways_client_id_does_not_disconnect_the_gateway(tmp_path: Path, mqtt_client):
    broker = Broker.launch(tmp_path / "broker")
    try:
        st = mqtt_client("st-1", broker=broker)
        st.publish(D.station_topic(REGION, "st-1", "online"), W.online_message(True), retain=True)
        st.publish(D.station_topic(REGION, "st-1", "status"), W.encode(D.station_status(["free", "free"])),
                   retain=True)
        gw = GatewayProcess(tmp_path / "gw", REGION, broker.port, GATEWAY_USER, broker.password(GATEWAY_USER),
                            [STATION], tick_s=0.2)
        with gw:  # started; stopped by pid at the end
            gw.wait_connected()
            car_b = mqtt_client("car-b", broker=broker)
            reply_topic = D.car_topic(REGION, "car-b", "reply")
            car_b.subscribe(reply_topic)
            # car A's own credentials, with each client id a gateway has had (its user name,
            # recarga-gateway-<region>), connected while car B asks
            for n, cid in enumerate((GATEWAY_USER, f"recarga-gateway-{REGION}")):
                thief = connect_client(broker, "car-a", client_id=cid)
                try:
                    rids = [f"b-{n}-{i}" for i in range(5)]
                    for rid in rids:
                        car_b.publish(D.car_topic(REGION, "car-b", "request"), reserve("car-b", rid))
                    car_b.wait(lambda want=set(rids): {json.loads(m.payload)["rid"] for m in
                                                       car_b.messages(reply_topic)} >= want,
                               15, f"a reply to each request while car-a is connected as {cid}")
                finally:
                    thief.close()
            log = broker.log_text()
            assert f"Client {GATEWAY_USER} already connected" not in log
            assert f"Client recarga-gateway-{REGION} already connected" not in log
            assert gw.log_text().count("connected to") == 1  # the gateway never lost its connection
    finally:
        broker.stop()


def test_a_car_asking_for_another_cars_client_id_does_not_wipe_its_session(tmp_path: Path, mqtt_client):
    broker = Broker.launch(tmp_path / "broker")
    try:
        reply_topic = D.car_topic(REGION, "car-b", "reply")
        # car B: a persistent session holding its reply subscription, then away
        car_b = connect_client(broker, "car-b", client_id="car-b", clean_session=False)
        car_b.subscribe(reply_topic)
        car_b.close()
        mqtt_client(GATEWAY_USER, broker=broker).publish(reply_topic, b'{"rid":"r1","ok":false,"event":"expired"}')
        # car A, with its own credentials, asks for car B's client id and a clean session
        thief = MqttClient(broker, "car-a", client_id="car-b", clean_session=True).connect()
        thief.close()
        back = mqtt_client("car-b", broker=broker, client_id="car-b", clean_session=False)
        assert json.loads(back.expect(reply_topic).payload)["event"] == "expired"  # still queued for car B
        assert "Client car-b already connected" not in broker.log_text()
    finally:
        broker.stop()
