"""The project's station JSON: its schema (data/stations.schema.json), the documented example
(docs/stations.md) and the loader agree."""
from __future__ import annotations

import json
import re

import jsonschema
import pytest

from harness import ROOT
from recarga.core.model import SlotMeta
from recarga.core.stations import load_bnetza_csv, stations_from_dict, stations_to_dict

SCHEMA = json.loads((ROOT / "data" / "stations.schema.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def _documented_examples() -> list[dict]:
    text = (ROOT / "docs" / "stations.md").read_text(encoding="utf-8")
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.S)]
    return [b for b in blocks if isinstance(b, dict) and "stations" in b]


def _shipped_station_files() -> list:
    return [p for p in sorted((ROOT / "data").glob("*.json"))
            if p.name != "stations.schema.json"
            and isinstance(doc := json.loads(p.read_text(encoding="utf-8")), dict) and "stations" in doc]


def test_schema_is_a_valid_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_documented_example_is_valid_and_loads():
    (doc,) = _documented_examples()
    VALIDATOR.validate(doc)
    hub1, hub2, hotel = stations_from_dict(doc)
    assert hub1.site == hub2.site == "hub-north" and hotel.site == ""
    assert hotel.access == "restricted" and hub1.access == "public"
    assert hub2.slots == (SlotMeta(50.0, True),)  # dc omitted: by power


@pytest.mark.parametrize("path", _shipped_station_files(), ids=lambda p: p.name)
def test_shipped_station_files_are_valid_and_load(path):
    doc = json.loads(path.read_text(encoding="utf-8"))
    VALIDATOR.validate(doc)
    assert stations_from_dict(doc)


def test_berlin_written_as_json_is_valid_and_reads_back():
    stations = load_bnetza_csv(ROOT / "data" / "berlin_charging_stations_bnetza.csv")
    doc = json.loads(json.dumps(stations_to_dict(stations)))
    VALIDATOR.validate(doc)
    assert stations_from_dict(doc) == stations


def _st(**kw) -> dict:
    return {"id": "A", "lat": 52.5, "lon": 13.4, "slots": [{"power_kw": 22}], **kw}


# Documents both must refuse (a duplicate id is the loader's alone: a schema cannot say it).
BAD = [
    [_st()],
    {"v": 1, "lat": 52.5, "lon": 13.4, "slots": [{"power_kw": 22}]},
    {"v": 2, "stations": []},
    {"v": True, "stations": []},
    {"v": 1},
    {"v": 1, "stations": [], "city": "Berlin"},
    {"v": 1, "stations": [_st(v=1)]},
    {"v": 1, "stations": [_st(colour="red")]},
    {"v": 1, "stations": [_st(id="slash/1")]},
    {"v": 1, "stations": [_st(id="x" * 33)]},
    {"v": 1, "stations": [_st(lat=90.5)]},
    {"v": 1, "stations": [_st(lon="13.4")]},
    {"v": 1, "stations": [_st(slots=[])]},
    {"v": 1, "stations": [_st(slots=[{"power_kw": 0.5}])]},
    {"v": 1, "stations": [_st(slots=[{"power_kw": 4001}])]},
    {"v": 1, "stations": [_st(slots=[{"power_kw": True}])]},
    {"v": 1, "stations": [_st(slots=[{"power_kw": 22, "dc": "no"}])]},
    {"v": 1, "stations": [_st(slots=[{"power_kw": 22, "phases": 3}])]},
    {"v": 1, "stations": [_st(price_per_kwh=-0.1)]},
    {"v": 1, "stations": [_st(operator=7)]},
    {"v": 1, "stations": [_st(site="a site")]},
    {"v": 1, "stations": [_st(site="")]},
    {"v": 1, "stations": [_st(access="private")]},
]


@pytest.mark.parametrize("doc", BAD)
def test_schema_and_loader_refuse_alike(doc):
    assert not VALIDATOR.is_valid(doc)
    with pytest.raises(ValueError):
        stations_from_dict(doc)
