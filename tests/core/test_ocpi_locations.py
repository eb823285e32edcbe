"""OCPI 2.2.1 Locations: a Location is a station (a site), its EVSEs are the slots."""
from __future__ import annotations

import copy
import json
import logging

import pytest

from recarga.core.model import SlotMeta
from recarga.core.ocpi_locations import station_id, stations_from_ocpi
from recarga.core.protocol import wire as W
from recarga.core.stations import DEFAULT_PRICE_AC, DEFAULT_PRICE_DC, load_stations


def _connector(cid: str = "1", power_type: str = "AC_3_PHASE", **kw) -> dict:
    return {"id": cid, "standard": "IEC_62196_T2", "format": "SOCKET", "power_type": power_type,
            "max_voltage": 230, "max_amperage": 16, "last_updated": "2024-05-01T10:00:00Z", **kw}


def _evse(uid: str, *connectors: dict, **kw) -> dict:
    return {"uid": uid, "evse_id": f"DE*ABC*E{uid}", "status": "AVAILABLE",
            "connectors": list(connectors) or [_connector()], "last_updated": "2024-05-01T10:00:00Z", **kw}


def _location(lid: str = "LOC1", *evses: dict, **kw) -> dict:
    return {"country_code": "DE", "party_id": "ABC", "id": lid, "publish": True,
            "name": "Hub Nord", "address": "Hauptstr. 1", "city": "Kiel", "country": "DEU",
            "coordinates": {"latitude": "54.323290", "longitude": "10.122765"},
            "operator": {"name": "Kiel Energie"}, "time_zone": "Europe/Berlin",
            "evses": list(evses) or [_evse("1")], "last_updated": "2024-05-01T10:00:00Z", **kw}


HUB = _location(
    "LOC1",
    # a DC unit with a CCS (150 kW) and a CHAdeMO (50 kW) connector: one car at a time, 150 kW
    _evse("1", _connector("1", "DC", max_voltage=920, max_amperage=400, max_electric_power=150000,
                          standard="IEC_62196_T2_COMBO", format="CABLE"),
          _connector("2", "DC", max_voltage=500, max_amperage=125, max_electric_power=50000,
                     standard="CHADEMO", format="CABLE")),
    _evse("2", _connector("1", "AC_3_PHASE")),  # 230 V x 16 A x 3 = 11.04 kW, no max_electric_power
    _evse("3", _connector("1", "AC_1_PHASE", max_amperage=32)),  # 7.36 kW
    _evse("4", _connector("1", "AC_3_PHASE"), status="REMOVED"),
)


def test_location_becomes_one_station_with_evses_as_slots():
    (s,) = stations_from_ocpi([HUB])
    assert (s.id, s.site, s.access) == ("LOC1", "LOC1", "public")
    assert (s.lat, s.lon) == (54.32329, 10.122765)
    assert s.slots == (SlotMeta(150.0, True), SlotMeta(230 * 16 * 3 / 1000, False),
                       SlotMeta(230 * 32 / 1000, False))
    assert (s.operator, s.name, s.price_per_kwh) == ("Kiel Energie", "Hub Nord", DEFAULT_PRICE_DC)


def test_response_envelope_and_single_location():
    envelope = {"data": [HUB], "status_code": 1000, "status_message": "Success",
                "timestamp": "2024-05-01T10:00:00Z"}
    assert stations_from_ocpi(envelope) == stations_from_ocpi([HUB])
    assert stations_from_ocpi({"data": HUB, "status_code": 1000}) == stations_from_ocpi([HUB])
    with pytest.raises(ValueError, match="status_code 2001"):
        stations_from_ocpi({"data": [], "status_code": 2001, "status_message": "Invalid"})


def test_operator_name_falls_back_to_party_and_name_to_address():
    loc = copy.deepcopy(HUB)
    del loc["operator"], loc["name"]
    (s,) = stations_from_ocpi([loc])
    assert (s.operator, s.name) == ("ABC", "Hauptstr. 1")
    assert s.price_per_kwh == DEFAULT_PRICE_DC
    (ac,) = stations_from_ocpi([_location("AC1")])
    assert ac.price_per_kwh == DEFAULT_PRICE_AC


def test_access():
    assert stations_from_ocpi([_location(publish=False)])[0].access == "restricted"
    customers = _location("H1", _evse("1", parking_restrictions=["CUSTOMERS"]),
                          _evse("2", parking_restrictions=["EV_ONLY", "DISABLED"]))
    assert stations_from_ocpi([customers])[0].access == "restricted"
    mixed = _location("H2", _evse("1", parking_restrictions=["CUSTOMERS"]),
                      _evse("2", parking_restrictions=["EV_ONLY"]))
    assert stations_from_ocpi([mixed])[0].access == "public"


def test_station_ids_are_protocol_ids_and_stable():
    assert station_id("LOC1", "DE*ABC", unique=True) == "LOC1"
    odd = station_id("BE-BEC/Gent Zuid #1", "BE*BEC", unique=True)
    assert W.ID_RE.match(odd) and odd.startswith("BE-BEC_Gent_Zuid_1-") and len(odd) == 27
    assert odd == station_id("BE-BEC/Gent Zuid #1", "BE*BEC", unique=True)
    long = station_id("3f2504e0-4f89-11d3-9a0c-0305e82c3301", "NL*EVB", unique=True)
    assert W.ID_RE.match(long) and len(long) == 32
    # the same id from two parties (a hub's feed): both hashed, so neither takes the other's id
    other = _location("LOC1", party_id="XYZ")
    a, b = stations_from_ocpi([HUB, other])
    assert a.id != b.id and a.id.startswith("LOC1-") and b.id.startswith("LOC1-")
    assert all(W.ID_RE.match(s.id) for s in (a, b))


def test_data_quality_problems_skip_with_warning(caplog):
    locations = [
        _location("ok"),
        _location("nocoords", coordinates={"latitude": "", "longitude": "10.1"}),
        _location("junk", coordinates={"latitude": "north", "longitude": "10.1"}),
        _location("range", coordinates={"latitude": "95.000000", "longitude": "10.1"}),
        _location("nopower", _evse("7", _connector(max_voltage=None, max_amperage=None))),
        _location("huge", _evse("8", _connector("1", "DC", max_electric_power=5e9))),
        _location("gone", _evse("9", status="REMOVED")),
        _location("ok"),
        _location("partly", _evse("1"), _evse("2", _connector(power_type="AC_9_PHASE"))),
    ]
    with caplog.at_level(logging.WARNING, logger="recarga.core.ocpi_locations"):
        stations = stations_from_ocpi(locations, source="feed.json")
    assert [s.id for s in stations] == ["ok", "partly"]
    assert len(stations[1].slots) == 1
    text = caplog.text
    assert "feed.json: locations[1] (id 'nocoords') has unusable coordinates" in text
    assert "locations[2] (id 'junk')" in text and "locations[3] (id 'range')" in text
    assert "locations[4] (id 'nopower') evses[0] (uid '7') has no connector with a power" in text
    assert "locations[5] (id 'huge') evses[0] (uid '8') skipped: power 5e+06 kW outside 1..4000 kW" in text
    assert "locations[6] (id 'gone') has no usable EVSE" in text
    assert "locations[7] (id 'ok'): duplicate Location skipped" in text
    assert "locations[8] (id 'partly') evses[1] (uid '2') has no connector with a power" in text


@pytest.mark.parametrize("doc, words", [
    ({"locations": []}, ["not OCPI Locations"]),
    ({"data": "LOC1", "status_code": 1000}, ["data must be a list"]),
    ([HUB, "LOC2"], ["locations[1]", "Location object"]),
    ([HUB, {**HUB, "id": 7}], ["locations[1]", "id", "7"]),
    ([{**HUB, "id": "LOC9", "evses": {"uid": "1"}}], ["locations[0] (id 'LOC9')", "evses must be a list"]),
    ([_location("LOC9", "EVSE-1")], ["locations[0] (id 'LOC9') evses[0]", "EVSE object"]),
    ([_location("LOC9", _evse("1", "CCS"))], ["locations[0] (id 'LOC9') evses[0]", "connectors[0]"]),
])
def test_malformed_document_is_refused(doc, words):
    with pytest.raises(ValueError) as e:
        stations_from_ocpi(doc)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_load_stations_reads_ocpi_by_content(tmp_path):
    p = tmp_path / "kiel_locations.json"
    p.write_text(json.dumps({"data": [HUB, _location("LOC2", publish=False)], "status_code": 1000}),
                 encoding="utf-8")
    hub, other = load_stations(p)
    assert (hub.id, hub.site, len(hub.slots)) == ("LOC1", "LOC1", 3)
    assert (other.id, other.site, other.access) == ("LOC2", "LOC2", "restricted")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([HUB, "LOC2"]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.json: locations\[1\]"):
        load_stations(bad)
