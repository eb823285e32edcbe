"""Station metadata loaders: the BNetzA register, the JSON format, synthetic sets."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import pytest

from harness import ROOT
from recarga.core.model import SlotMeta, StationMeta
from recarga.core.stations import (
    DEFAULT_PRICE_AC,
    DEFAULT_PRICE_DC,
    dump_stations_json,
    load_bnetza_csv,
    load_stations,
    load_stations_json,
    synthetic_radius_km,
    synthetic_stations,
)

BERLIN_CSV = ROOT / "data" / "berlin_charging_stations_bnetza.csv"


@pytest.fixture(scope="module")
def berlin() -> list[StationMeta]:
    return load_bnetza_csv(BERLIN_CSV)


# ------------------------------------------------------------------ the real register

def test_berlin_counts_match_sources(berlin):
    # data/SOURCES.md: 4,528 devices with 7,019 charging points, all with coordinates.
    assert len(berlin) == 4528
    assert sum(len(s.slots) for s in berlin) == 7019
    assert len({s.id for s in berlin}) == 4528
    assert all(1 <= len(s.slots) <= 6 for s in berlin)


def test_berlin_coordinates_and_powers_are_plausible(berlin):
    assert all(52.35 < s.lat < 52.65 and 13.12 < s.lon < 13.73 for s in berlin)
    powers = [slot.power_kw for s in berlin for slot in s.slots]
    assert min(powers) > 0 and max(powers) <= 400
    # 703 devices are registered as fast chargers; every one of them has a DC slot.
    assert sum(any(sl.dc for sl in s.slots) for s in berlin) >= 703


def test_berlin_sample_rows(berlin):
    by_id = {s.id: s for s in berlin}
    lantern = by_id["1144860"]  # decimal comma in coordinates and power
    assert lantern.lat == pytest.approx(52.52979) and lantern.lon == pytest.approx(13.377059)
    assert lantern.slots == (SlotMeta(3.7, False),)
    assert lantern.operator.startswith("ubitricity")
    assert lantern.name == "Schwarzer Weg 0"
    assert lantern.price_per_kwh == DEFAULT_PRICE_AC

    wallbox = by_id["1017513"]
    assert wallbox.slots == (SlotMeta(11.0, False), SlotMeta(11.0, False))

    hpc = by_id["1031974"]  # 'DC Combo 2 (CCS); DC CHAdeMO' with '175; 175'
    assert hpc.slots[0] == SlotMeta(175.0, True)
    assert hpc.price_per_kwh == DEFAULT_PRICE_DC

    coupler = by_id["1064118"]  # 'AC Typ 2 Fahrzeugkupplung' at 43 kW: AC, whatever its power
    assert coupler.slots[0] == SlotMeta(43.0, False)


def test_names_have_no_line_breaks(berlin):
    assert all("\n" not in s.name and "\r" not in s.name for s in berlin)
    assert all(s.name for s in berlin)


# ------------------------------------------------------------------ hand-made CSV

HEADER = ["Ladeeinrichtungs-ID", "Betreiber", "Anzeigename (Karte)", "Status",
          "Art der Ladeeinrichtung", "Anzahl Ladepunkte", "Nennleistung Ladeeinrichtung [kW]",
          "Straße", "Hausnummer", "Breitengrad", "Längengrad"]
for _n in range(1, 7):
    HEADER += [f"Steckertypen{_n}", f"Nennleistung Stecker{_n}", f"EVSE-ID{_n}", f"Public Key{_n}"]


def _row(**fields: str) -> list[str]:
    return [fields.get(h, "") for h in HEADER]


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    import csv
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        w = csv.writer(f, delimiter=";", quoting=csv.QUOTE_MINIMAL)
        w.writerow(HEADER)
        w.writerows(rows)
    return path


def test_csv_decimal_comma_multi_plug_and_quoted_newlines(tmp_path):
    path = _write_csv(tmp_path / "r.csv", [
        _row(**{"Ladeeinrichtungs-ID": "1", "Betreiber": "Op A", "Anzeigename (Karte)": "Hof\nNord",
                "Anzahl Ladepunkte": "2", "Nennleistung Ladeeinrichtung [kW]": "22",
                "Breitengrad": "52,5", "Längengrad": "13,25",
                "Steckertypen1": "AC Typ 2 Steckdose", "Nennleistung Stecker1": "3,7",
                "Steckertypen2": "AC Typ 2 Steckdose; AC Schuko", "Nennleistung Stecker2": "11; 22"}),
        _row(**{"Ladeeinrichtungs-ID": "2", "Betreiber": "Op B", "Straße": "Weg", "Hausnummer": "5a",
                "Anzahl Ladepunkte": "1", "Nennleistung Ladeeinrichtung [kW]": "50",
                "Breitengrad": "52,4", "Längengrad": "13,1",
                "Steckertypen1": "DC Fahrzeugkupplung Typ Combo 2 (CCS)",
                "Nennleistung Stecker1": ""}),  # missing plug power: device rating
        _row(**{"Ladeeinrichtungs-ID": "3", "Anzahl Ladepunkte": "1",
                "Nennleistung Ladeeinrichtung [kW]": "11",
                "Breitengrad": "52,4", "Längengrad": "13,1",
                "Steckertypen1": "AC Typ 2 Steckdose; DC CHAdeMO", "Nennleistung Stecker1": "11"}),
    ])
    by_id = {s.id: s for s in load_bnetza_csv(path)}
    a = by_id["1"]
    assert (a.lat, a.lon) == (52.5, 13.25)
    assert a.slots == (SlotMeta(3.7, False), SlotMeta(22.0, False))
    assert a.name == "Hof Nord" and a.operator == "Op A"
    assert a.price_per_kwh == DEFAULT_PRICE_AC
    b = by_id["2"]
    assert b.slots == (SlotMeta(50.0, True),)
    assert b.name == "Weg 5a" and b.price_per_kwh == DEFAULT_PRICE_DC
    assert by_id["3"].slots == (SlotMeta(11.0, True),)  # a DC plug makes the point DC


def test_csv_skips_unusable_rows_with_warning(tmp_path, caplog):
    good = {"Anzahl Ladepunkte": "1", "Steckertypen1": "AC Typ 2 Steckdose",
            "Nennleistung Stecker1": "11"}
    path = _write_csv(tmp_path / "r.csv", [
        _row(**{"Ladeeinrichtungs-ID": "ok", "Breitengrad": "52,5", "Längengrad": "13,4"}, **good),
        _row(**{"Ladeeinrichtungs-ID": "nolat", "Breitengrad": "", "Längengrad": "13,4"}, **good),
        _row(**{"Ladeeinrichtungs-ID": "junk", "Breitengrad": "abc", "Längengrad": "13,4"}, **good),
        _row(**{"Ladeeinrichtungs-ID": "range", "Breitengrad": "152,5", "Längengrad": "13,4"}, **good),
        _row(**{"Ladeeinrichtungs-ID": "nopower", "Breitengrad": "52,5", "Längengrad": "13,4",
                "Anzahl Ladepunkte": "1", "Steckertypen1": "AC Typ 2 Steckdose"}),
        _row(**{"Ladeeinrichtungs-ID": "ok", "Breitengrad": "52,5", "Längengrad": "13,4"}, **good),
        _row(**{"Ladeeinrichtungs-ID": "slash/1", "Breitengrad": "52,5", "Längengrad": "13,4"}, **good),
        _row(**{"Ladeeinrichtungs-ID": "huge", "Breitengrad": "52,5", "Längengrad": "13,4",
                "Anzahl Ladepunkte": "1", "Steckertypen1": "DC CCS", "Nennleistung Stecker1": "1e300"}),
        _row(**{"Ladeeinrichtungs-ID": "tiny", "Breitengrad": "52,5", "Längengrad": "13,4",
                "Anzahl Ladepunkte": "1", "Steckertypen1": "AC Schuko", "Nennleistung Stecker1": "0,0001"}),
    ])
    with caplog.at_level(logging.WARNING, logger="recarga.core.stations"):
        stations = load_bnetza_csv(path)
    assert [s.id for s in stations] == ["ok"]
    text = caplog.text
    for sid in ("nolat", "junk", "range", "nopower"):
        assert sid in text
    assert "duplicate" in text
    assert "r.csv:8: station id 'slash/1' skipped" in text  # the row's line in the file
    assert "r.csv:9: station huge skipped: charging point power 1e+300 kW outside 1..4000 kW" in text
    assert "r.csv:10: station tiny skipped: charging point power 0.0001 kW outside 1..4000 kW" in text


# ------------------------------------------------------------------ JSON

def _doc(*stations: dict) -> dict:
    return {"v": 1, "stations": list(stations)}


def _st(sid: str = "A", **kw) -> dict:
    d = {"id": sid, "lat": 52.5, "lon": 13.4, "slots": [{"power_kw": 22, "dc": False}]}
    d.update(kw)
    return d


def _write_json(tmp_path: Path, doc) -> Path:
    p = tmp_path / "s.json"
    p.write_text(json.dumps(doc), encoding="utf-8")
    return p


def test_json_round_trip(tmp_path):
    original = [
        StationMeta("A", 52.5, 13.4, (SlotMeta(22.0, False), SlotMeta(150.0, True)),
                    operator="Op", price_per_kwh=0.61, name="Ä-Platz"),
        StationMeta("B", -33.9, 151.2, (SlotMeta(3.7, False),)),
        StationMeta("C", 52.5, 13.4, (SlotMeta(11.0, False),), site="hub-1", access="restricted"),
    ]
    p = tmp_path / "s.json"
    dump_stations_json(original, p)
    assert load_stations_json(p) == original
    # load_stations also groups the stations that name no site: each is a site of its own here
    assert load_stations(p) == [replace(original[0], site="A"), replace(original[1], site="B"),
                                original[2]]


def test_json_defaults(tmp_path):
    p = _write_json(tmp_path, _doc(_st("A", slots=[{"power_kw": 11}, {"power_kw": 150}])))
    (a,) = load_stations_json(p)
    assert a.slots == (SlotMeta(11.0, False), SlotMeta(150.0, True))
    assert a.price_per_kwh == DEFAULT_PRICE_DC and a.operator == "" and a.name == ""


@pytest.mark.parametrize("doc, words", [
    (_doc(_st("A"), _st("A")), ["'A'", "duplicate"]),
    (_doc(_st("A", lat=90.5)), ["'A'", "lat", "-90..90"]),
    (_doc(_st("A", lat=-91)), ["'A'", "lat"]),
    (_doc(_st("B", lon=180.01)), ["'B'", "lon", "-180..180"]),
    (_doc(_st("B", lon="13.4")), ["'B'", "lon"]),
    (_doc(_st("C", slots=[])), ["'C'", "slots"]),
    (_doc(_st("C", slots=None)), ["'C'", "slots"]),
    (_doc(_st("D", slots=[{"power_kw": 22}, {"power_kw": 0}])), ["'D'", "slot 2", "power_kw"]),
    (_doc(_st("D", slots=[{"power_kw": -3}])), ["'D'", "slot 1", "power_kw"]),
    (_doc(_st("D", slots=[{"power_kw": True}])), ["'D'", "power_kw"]),
    (_doc(_st("E", slots=[{"power_kw": 22, "dc": "no"}])), ["'E'", "dc"]),
    (_doc(_st("F", price_per_kwh=-1)), ["'F'", "price_per_kwh"]),
    (_doc(_st("G", colour="red")), ["'G'", "colour"]),
    # ids name MQTT topics: none that a topic could never match
    (_doc(_st("slash/1")), ["stations[0]", "id", "'slash/1'"]),
    (_doc(_st("plus+1")), ["stations[0]", "id"]),
    (_doc(_st("with space")), ["stations[0]", "id"]),
    (_doc(_st("x" * 33)), ["stations[0]", "id"]),
    # a charging point's power within physical bounds
    (_doc(_st("H", slots=[{"power_kw": 1e300}])), ["'H'", "slot 1", "power_kw must be 1..4000", "1e+300"]),
    (_doc(_st("H", slots=[{"power_kw": 0.0001}])), ["'H'", "slot 1", "power_kw must be 1..4000"]),
    (_doc({"lat": 1, "lon": 2, "slots": [{"power_kw": 1}]}), ["stations[0]", "id"]),
    ({"v": 2, "stations": []}, ["v"]),
    ({"v": 1}, ["stations"]),
])
def test_json_errors_name_station_and_field(tmp_path, doc, words):
    p = _write_json(tmp_path, doc)
    with pytest.raises(ValueError) as e:
        load_stations_json(p)
    for w in words:
        assert w in str(e.value)


def test_json_not_json(tmp_path):
    p = tmp_path / "s.json"
    p.write_text("{nope", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_stations_json(p)


def test_load_stations_dispatch(tmp_path):
    assert len(load_stations(BERLIN_CSV)) == 4528
    with pytest.raises(ValueError, match="unknown station file type"):
        load_stations(tmp_path / "stations.xml")


# ------------------------------------------------------------------ synthetic

def test_synthetic_is_deterministic_and_berlin_like():
    a = synthetic_stations(3000, seed=7)
    assert a == synthetic_stations(3000, seed=7)
    assert a != synthetic_stations(3000, seed=8)
    assert len(a) == 3000 and len({s.id for s in a}) == 3000
    slots = [sl for s in a for sl in s.slots]
    ac = [sl for sl in slots if not sl.dc]
    dc = [sl for sl in slots if sl.dc]
    assert 0.75 < len(ac) / len(slots) < 0.9  # Berlin: ~84 % of points are AC
    assert {sl.power_kw for sl in ac} == {3.7, 11.0, 22.0}
    assert {sl.power_kw for sl in dc} == {50.0, 150.0, 300.0}
    assert 1.3 < len(slots) / len(a) < 1.8  # Berlin: 7,019 / 4,528 = 1.55


def test_synthetic_area_grows_with_n():
    from recarga.core.geo import haversine_km
    # Berlin-like density: a Berlin-sized set covers Berlin's area (891 km^2).
    assert math.pi * synthetic_radius_km(4528) ** 2 == pytest.approx(891, rel=1e-6)
    assert synthetic_radius_km(100_000) == pytest.approx(synthetic_radius_km(10_000) * math.sqrt(10))
    center = (50.0, 8.0)
    r = synthetic_radius_km(2000)
    stations = synthetic_stations(2000, seed=1, center=center)
    dists = [haversine_km(*center, s.lat, s.lon) for s in stations]
    assert max(dists) <= r * 1.01
    assert max(dists) > r * 0.9  # fills the disc, not just its middle
    small = synthetic_stations(100, seed=1, radius_km=1.0)
    assert all(haversine_km(52.52, 13.405, s.lat, s.lon) <= 1.01 for s in small)


# ------------------------------------------------------------------ access, sites, formats

def test_berlin_access_from_parking_information(berlin):
    # data/SOURCES.md's register: 127 devices say "Nur für Kunden/Besucher" (customers only)
    restricted = [s for s in berlin if s.access == "restricted"]
    assert len(restricted) == 127
    assert {s.access for s in berlin} == {"public", "restricted"}


def test_csv_without_register_columns_is_refused(tmp_path):
    p = tmp_path / "sessions.csv"
    p.write_text("start;end;kwh\n2024-01-01 08:00;2024-01-01 09:00;10\n", encoding="utf-8")
    with pytest.raises(ValueError) as e:
        load_stations(p)
    assert "sessions.csv" in str(e.value) and "Ladeeinrichtungs-ID" in str(e.value)
    assert "not the Bundesnetzagentur register" in str(e.value)


def test_json_bare_list_shows_the_expected_shape(tmp_path):
    p = _write_json(tmp_path, [_st("A")])
    with pytest.raises(ValueError) as e:
        load_stations(p)
    assert "s.json" in str(e.value) and "bare list" in str(e.value)
    assert '{"v": 1, "stations": [{"id": ' in str(e.value)


def test_json_meta_message_is_named_as_such(tmp_path):
    meta = {"v": 1, "lat": 52.5, "lon": 13.4, "operator": "Op", "name": "N", "price_per_kwh": 0.49,
            "slots": [{"power_kw": 22, "dc": False}, {"power_kw": 150, "dc": True}]}
    with pytest.raises(ValueError, match=r"station's meta message .*not a station file"):
        load_stations(_write_json(tmp_path, meta))
    # the meta message pasted into a station file's entry
    doc = _doc({"id": "A", **meta})
    with pytest.raises(ValueError) as e:
        load_stations(_write_json(tmp_path, doc))
    assert "stations[0] (station 'A')" in str(e.value) and "'v'" in str(e.value)
    assert "meta message" in str(e.value)


def test_json_unknown_field_names_index_and_field(tmp_path):
    p = _write_json(tmp_path, _doc(_st("A"), _st("B", colour="red")))
    with pytest.raises(ValueError, match=r"stations\[1\] \(station 'B'\): unknown field\(s\) \['colour'\]"):
        load_stations_json(p)


def test_json_site_and_access(tmp_path):
    p = _write_json(tmp_path, _doc(_st("A", site="hub", access="restricted"), _st("B")))
    a, b = load_stations_json(p)
    assert (a.site, a.access) == ("hub", "restricted")
    assert (b.site, b.access) == ("", "public")
    for bad, words in ((_st("C", access="private"), ["'C'", "access", "'private'"]),
                       (_st("C", site="a/b"), ["'C'", "site", "'a/b'"]),
                       (_st("C", site=3), ["'C'", "site"])):
        with pytest.raises(ValueError) as e:
            load_stations_json(_write_json(tmp_path, _doc(bad)))
        assert all(w in str(e.value) for w in words), str(e.value)


def test_load_stations_groups_sites_for_every_format(tmp_path):
    near = _doc(_st("A", operator="Op"), _st("B", lat=52.5002, operator="Op"),  # ~22 m apart
                _st("C", lat=52.5002, operator="Other"))
    p = _write_json(tmp_path, near)
    assert [s.site for s in load_stations(p)] == ["A", "A", "C"]
    assert [s.site for s in load_stations(p, site_distance_m=10.0)] == ["A", "B", "C"]
    ocpi = [{"id": "LOC1", "country_code": "DE", "party_id": "ABC",
             "coordinates": {"latitude": "52.500000", "longitude": "13.400000"},
             "evses": [{"uid": "1", "status": "AVAILABLE",
                        "connectors": [{"id": "1", "power_type": "DC", "max_electric_power": 50000}]}]}]
    p = _write_json(tmp_path, ocpi)
    (loc,) = load_stations(p)
    assert (loc.id, loc.site, loc.slots) == ("LOC1", "LOC1", (SlotMeta(50.0, True),))
    assert {s.site for s in load_stations(BERLIN_CSV)} != {""}


def test_load_stations_refuses_a_document_that_is_neither(tmp_path):
    with pytest.raises(ValueError, match=r"s\.json: unknown station document \(keys \['type'\]\)"):
        load_stations(_write_json(tmp_path, {"type": "FeatureCollection"}))
    with pytest.raises(ValueError, match=r"s\.json: .*must be a JSON object"):
        load_stations(_write_json(tmp_path, 42))
