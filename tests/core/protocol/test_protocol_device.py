"""recarga.core.protocol.device: the region's topics and filters, telemetry validation."""
from __future__ import annotations

import json

import paho.mqtt.client as mqtt
import pytest

from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W


def test_topics_and_parse_round_trip():
    t = D.car_topic("berlin", "car-1", "request")
    assert t == "recarga/v1/berlin/car/car-1/request"
    assert D.parse_topic("berlin", t) == D.TopicRef("car", "car-1", "request")
    assert D.parse_topic("berlin", "recarga/v1/hamburg/car/car-1/request") is None
    assert D.parse_topic("berlin", "recarga/v1/berlin/car/car+1/request") is None
    with pytest.raises(ValueError, match="bad car id"):
        D.car_topic("berlin", "a/b", "reply")


def test_filters_match_every_device():
    assert mqtt.topic_matches_sub(D.car_filter("x", "reply"), D.car_topic("x", "c9", "reply"))
    assert mqtt.topic_matches_sub(D.station_filter("x", "cmd"), D.station_topic("x", "s9", "cmd"))
    assert not mqtt.topic_matches_sub(D.station_filter("x", "cmd"), D.station_topic("y", "s9", "cmd"))


def test_telemetry_validation():
    ok = b'{"v":1,"soc":0.4,"lat":52.5,"lon":13.4,"state":"charging","reservation":null}'
    assert D.parse_car_telemetry(ok)["state"] == "charging"
    for bad, code in [
        (ok.replace(b"charging", b"flying"), W.OUT_OF_RANGE),
        (ok.replace(b'"soc":0.4', b'"soc":4'), W.OUT_OF_RANGE),
        (ok.replace(b'"v":1,', b'"v":1,"x":1,'), W.UNKNOWN_FIELD),
        (ok.replace(b'"lat":52.5,', b""), W.MISSING_FIELD),
    ]:
        with pytest.raises(W.ProtocolError) as e:
            D.parse_car_telemetry(bad)
        assert e.value.code == code


@pytest.mark.parametrize("power", [0.5, 4000.5, 1e300])
def test_a_station_s_meta_keeps_slot_powers_within_the_station_files_bounds(power):
    msg = {"v": 1, "lat": 52.5, "lon": 13.4, "slots": [{"power_kw": power}]}
    with pytest.raises(W.ProtocolError) as e:
        D.parse_station_meta(json.dumps(msg).encode())
    assert e.value.code == W.OUT_OF_RANGE and e.value.field == "power_kw"
    D.parse_station_meta(json.dumps({**msg, "slots": [{"power_kw": 3.7}, {"power_kw": 3750}]}).encode())


def test_a_reserve_may_name_the_car_model_by_its_id():
    msg = D.reserve_request("q1", "c1", lat=52.5, lon=13.4, soc=0.2, battery_kwh=50, consumption_kwh_100km=17,
                            max_ac_kw=11, max_dc_kw=100, target_soc=0.8,
                            model="72475a6a-aae2-da13-1d17-94cc07e5104f")
    req = D.parse_car_request("c1", W.encode(msg))
    assert req.fields["model"] == "72475a6a-aae2-da13-1d17-94cc07e5104f"
    for bad, code in (("", W.OUT_OF_RANGE), ("a b", W.OUT_OF_RANGE), ("x" * 65, W.OUT_OF_RANGE), (7, W.BAD_TYPE)):
        with pytest.raises(W.ProtocolError) as e:
            D.parse_car_request("c1", W.encode(dict(msg, model=bad)))
        assert (e.value.code, e.value.field) == (code, "model")
