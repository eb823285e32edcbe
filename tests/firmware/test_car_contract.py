"""Contract: every request and telemetry message the car logic emits on the real MicroPython
passes the gateway's own validators (recarga.core.protocol, docs/protocol.md) on CPython; the
replies it reads across regions are the ones recarga.core.protocol.central builds (overflow_reply,
with_overflow_note)."""
from __future__ import annotations

import json

import pytest
from test_car_logic import MODEL, run_car

from recarga.core.protocol import central as PC
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W


def _template(msg: dict) -> str:
    """A recarga.core.protocol reply as a JSON text whose rid the scenario fills in on MicroPython."""
    return json.dumps(json.dumps(msg))


# recarga.core.protocol.central's replies across regions: a slot held in region south (an overflow answer),
# and a local refusal saying why overflow did not help
RES = {"id": "r4", "station": "st-s", "slot": 2, "state": "held", "distance_km": 3.5, "eta": 1795000000,
       "wait_min": 0.0, "charge_min": 25.0, "energy_kwh": 30.0, "power_kw": 50.0, "price_eur": 12.0,
       "hold_until": 1795000180}
OVERFLOW = _template(PC.overflow_reply("RID", RES, "south", {"host": "127.0.0.1", "port": 1884}))
NOTE = _template(PC.with_overflow_note(D.error_reply("RID", W.NO_CAPACITY, "nothing reachable",
                                                    earliest_free=None),
                                      PC.OVERFLOW_UNAVAILABLE, "no link to central"))

# One long drive through everything the car can say: ask, confirm, re-ask after expiry,
# adopt a fault offer, plug in, charge, finish, unplug, a no_capacity refusal with an overflow
# note, a timeout, an overflow answer (confirm in the other region), leaving a region.
SCENARIO = """
def from_gateway(text):
    m = json.loads(text)
    m["rid"] = last_request()["rid"]
    deliver(m)

run(2000, 0.6)
run(4000, 0.19)
reply_ok(res("r1"))
run(5000, 0.19)
reply_ok(res("r1", "confirmed"))
run(6000, 0.18)
event("expired", res("r1", "expired"))
run(7000, 0.18)
reply_ok(res("r2"))
run(8000, 0.18)
event("faulted", res("r2", "faulted"), offer=res("r3", station="st-2", slot=2))
run(9000, 0.18)
reply_ok(res("r3", "confirmed"))
event("checked_in", res("r3", "checked_in"))
soc = 0.18
t = 9000
while soc < 0.81:
    soc += 0.03
    t += 1000
    run(t, soc)
event("completed", res("r3", "completed"))
run(t + 2000, soc)
run(t + 4000, 0.001)                       # empty battery: soc 0
from_gateway(NOTE)
run(t + 40000, 0.0)                        # re-asks (no reply: timeouts too)
from_gateway(OVERFLOW)
show_res()
run(t + 41000, 0.0)
car.leave_region(T[0])
run(t + 75000, 0.0, step=500)              # telemetry every 30 s
""".replace("NOTE", NOTE).replace("OVERFLOW", OVERFLOW)


def check_all(out: list[dict], car: str) -> tuple[list, list]:
    reqs, teles = [], []
    for o in out:
        if o["k"] != "send":
            continue
        raw = o["payload"].encode()
        assert len(raw) <= D.MAX_PAYLOAD, raw
        if o["leaf"] == "request":
            reqs.append(D.parse_car_request(car, raw))
        else:
            assert o["leaf"] == "telemetry"
            teles.append(D.parse_car_telemetry(raw))
    return reqs, teles


def test_every_message_of_a_long_drive_passes_the_gateway_validators(tmp_path):
    out = run_car(tmp_path, SCENARIO)
    reqs, teles = check_all(out, "car-a")
    ops = [r.op for r in reqs]
    assert set(ops) == {"reserve", "confirm"}, ops  # the car gives nothing back: no cancel
    # a fresh rid for every question; a repeated rid is the same request again (an unanswered confirm)
    by_rid = {}
    for r in reqs:
        assert by_rid.setdefault(r.rid, r) == r
    reserves = [r.rid for r in reqs if r.op == "reserve"]
    assert len(set(reserves)) == len(reserves)
    assert len({r.rid for r in reqs if r.op == "confirm"}) == 4  # one per reservation
    for r in reqs:
        if r.op == "reserve":
            assert r.fields["soc"] < r.fields["target_soc"]
            assert {k: r.fields[k] for k in ("battery_kwh", "consumption_kwh_100km", "max_ac_kw", "max_dc_kw",
                                               "target_soc")} == {k: MODEL[k] for k in ("battery_kwh",
                                                                   "consumption_kwh_100km", "max_ac_kw",
                                                                   "max_dc_kw", "target_soc")}
    assert sorted({r.fields["reservation"] for r in reqs if r.op == "confirm"}) == ["r1", "r2", "r3", "r4"]
    says = [o["line"] for o in out if o["k"] == "say"]
    assert "no overflow to another region: overflow_unavailable (no link to central)" in says
    assert "overflow: slot held in region south, handing over to its broker 127.0.0.1:1884" in says
    [kept] = [o["res"] for o in out if o["k"] == "res"]
    assert kept["id"] == "r4" and kept["region"] == ["south", "127.0.0.1", 1884]
    assert {t["state"] for t in teles} == set(D.CAR_STATES)
    assert any(t["soc"] == 0 for t in teles)


@pytest.mark.parametrize("lat,lon", [(-89.99999, -179.99999), (89.99999, 179.99999), (0.0, 0.0)])
def test_extreme_values_and_longest_ids_stay_valid_and_small(tmp_path, lat, lon):
    car = "C" * 32  # the longest id the protocol allows
    model = {"battery_kwh": 300.0, "consumption_kwh_100km": 79.99, "max_ac_kw": 0.0, "max_dc_kw": 500.0,
             "target_soc": 1.0}
    out = run_car(tmp_path, f"""
car = CarLogic(CAR_ID, {json.dumps(model)}, send, say, Backoff(2000, 30000), boot_id="ffffff",
               telemetry_ms=30000)
POS[0] = {lat}
POS[1] = {lon}
run(1000, 0.0)
reply_ok(res("r" + "x" * 60))
run(2000, 0.0)
""", car_id=car)
    reqs, teles = check_all(out, car)
    assert [r.op for r in reqs] == ["reserve", "confirm"]
    assert reqs[0].fields["max_ac_kw"] == 0 and reqs[0].fields["lat"] == pytest.approx(lat)
    assert teles[-1]["reservation"] == "r" + "x" * 60
    assert max(len(o["payload"]) for o in out if o["k"] == "send") < D.MAX_PAYLOAD
