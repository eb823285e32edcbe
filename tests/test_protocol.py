"""The protocol module: topics, filters, ACL lists, telemetry validation."""
from __future__ import annotations

import pytest

from gateway import protocol as P


def test_topics_and_parse_round_trip():
    t = P.car_topic("berlin", "car-1", "request")
    assert t == "recarga/v1/berlin/car/car-1/request"
    assert P.parse_topic("berlin", t) == P.TopicRef("car", "car-1", "request")
    assert P.parse_topic("berlin", "recarga/v1/hamburg/car/car-1/request") is None
    assert P.parse_topic("berlin", "recarga/v1/berlin/car/car+1/request") is None
    with pytest.raises(ValueError, match="bad car id"):
        P.car_topic("berlin", "a/b", "reply")


def test_filters_match_every_device():
    import paho.mqtt.client as mqtt
    assert mqtt.topic_matches_sub(P.car_filter("x", "reply"), P.car_topic("x", "c9", "reply"))
    assert mqtt.topic_matches_sub(P.station_filter("x", "cmd"), P.station_topic("x", "s9", "cmd"))
    assert not mqtt.topic_matches_sub(P.station_filter("x", "cmd"), P.station_topic("y", "s9", "cmd"))


def test_device_acls_are_confined_to_their_own_subtree():
    for access, topic in P.acl_car("r", "c1"):
        assert topic.startswith("recarga/v1/r/car/c1/")
    for access, topic in P.acl_station("r", "s1"):
        assert topic.startswith("recarga/v1/r/station/s1/")


def test_telemetry_validation():
    ok = b'{"v":1,"soc":0.4,"lat":52.5,"lon":13.4,"state":"charging","reservation":null}'
    assert P.parse_car_telemetry(ok)["state"] == "charging"
    for bad, code in [
        (ok.replace(b"charging", b"flying"), P.OUT_OF_RANGE),
        (ok.replace(b'"soc":0.4', b'"soc":4'), P.OUT_OF_RANGE),
        (ok.replace(b'"v":1,', b'"v":1,"x":1,'), P.UNKNOWN_FIELD),
        (ok.replace(b'"lat":52.5,', b""), P.MISSING_FIELD),
    ]:
        with pytest.raises(P.ProtocolError) as e:
            P.parse_car_telemetry(bad)
        assert e.value.code == code
