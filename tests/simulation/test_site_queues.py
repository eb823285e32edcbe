"""Sites in the loop (recarga/simulation/loop.py, physical.py): a driver at a site takes any
free unit of the site the car can use and queues for the site as a whole; Recarga's cars
name their model and ask again when a refusal's retry_after says."""
from __future__ import annotations

import json
import math

import pytest

from recarga.core import evmodels
from recarga.core.model import SlotMeta, StationMeta
from recarga.core.protocol import wire as W
from recarga.simulation import loop
from recarga.simulation.demand import CarPlan
from recarga.simulation.physical import build

LAT, LON = 40.0, -8.0
EAST_10M = 10.0 / (111_195.0 * math.cos(math.radians(LAT)))  # degrees of longitude in 10 m


def station(sid: str, dlon: float, *slots: SlotMeta, site: str = "hub") -> StationMeta:
    return StationMeta(sid, LAT, LON + dlon, slots, site=site)


AC11 = SlotMeta(11.0, False)
DC150 = SlotMeta(150.0, True)


@pytest.fixture(scope="module")
def models():
    ms = evmodels.load_models()
    return {
        "ac": next(m for m in ms if not m.phev and m.max_ac_kw >= 11 and m.max_dc_kw > 0),
        "phev": next(m for m in ms if m.phev),
        # a DC curve that tapers: a constant-power estimate would be well short
        "taper": next(m for m in ms if m.model_id == "04baeaa4-6bfc-4700-a553-20748aab54be"),
    }


def plan(n: int, model: evmodels.CarModel, soc: float, at: float = 0.0, app: bool = True,
         target: float = 0.8) -> CarPlan:
    """A car that appears at time `at` at the first station (10 m from nothing else) and asks there."""
    here = (LAT, LON)
    return CarPlan(car=f"c{n}", appear_s=at, origin=here, ask_at=here, leg_km=0.0, model=model,
                   soc_start=soc, soc_ask=soc, target_soc=target, no_show=False, app=app)


def simulate(policy: str, stations: list[StationMeta], plans: list[CarPlan]) -> loop.Simulation:
    cfg = loop.SimConfig(policy, loop.engine_config(policy), day_s=3600.0, patience_s=math.inf)
    sim = loop.Simulation(cfg, stations, plans)
    sim.result = sim.run()
    assert not sim.result.anomalies
    return sim


def test_physical_sites_group_the_stations_of_one_site():
    devices = build([station("a", 0.0, AC11), station("b", EAST_10M, AC11),
                     station("c", 1.0, AC11, site=""), station("d", 2.0, AC11, site="")])
    assert devices["a"].site is devices["b"].site
    assert [d.meta.id for d in devices["a"].site.devices] == ["a", "b"]
    assert devices["c"].site is not devices["d"].site  # no site: a site of its own


@pytest.mark.parametrize("policy", ["nearest", "most_free", "shortest_queue"])
def test_a_baseline_driver_takes_the_free_unit_of_another_station_of_the_site(models, policy):
    # both cars are sent to the hub; the first takes a unit, the second the other station's
    sim = simulate(policy, [station("a", 0.0, AC11), station("b", EAST_10M, AC11)],
                   [plan(0, models["ac"], 0.2), plan(1, models["ac"], 0.2, at=1.0)])
    first, second = sim.cars
    assert {first.station, second.station} == {"a", "b"}
    assert second.plug_s == second.arrive_s  # it did not queue behind the first


def test_a_driver_without_the_app_takes_any_free_unit_of_the_site(models):
    # under Recarga the first car reserves and charges at the nearest station, a; the second
    # has no app, drives to the nearest station too, and takes the free unit at b
    sim = simulate("least_completion", [station("a", 0.0, AC11), station("b", EAST_10M, AC11)],
                   [plan(0, models["ac"], 0.2), plan(1, models["ac"], 0.2, at=60.0, app=False)])
    first, second = sim.cars
    assert (first.station, second.station) == ("a", "b")
    assert second.plug_s == second.arrive_s


def test_the_site_queue_is_first_come_first_served_across_its_stations(models):
    # two units of one site busy: a long charge at a, a short one at b; the third and fourth
    # cars queue for the site: the third takes b when it frees, the fourth waits for the next
    m = models["ac"]
    sim = simulate("nearest", [station("a", 0.0, AC11), station("b", EAST_10M, AC11)],
                   [plan(0, m, 0.1), plan(1, m, 0.7, at=1.0), plan(2, m, 0.5, at=2.0), plan(3, m, 0.5, at=3.0)])
    long_, short, third, fourth = sim.cars
    assert (long_.station, short.station) == ("a", "b")
    assert short.charge_end_s < long_.charge_end_s
    assert (third.station, third.plug_s) == ("b", short.charge_end_s)
    assert fourth.plug_s == min(long_.charge_end_s, third.charge_end_s) > third.plug_s
    assert all(c.state == loop.FINISHED for c in sim.cars)


def test_the_head_of_the_site_queue_lets_a_car_that_can_use_the_freed_unit_go_first(models):
    # the first car takes the fastest unit, DC at b, and frees it first; the plug-in hybrid at
    # the head of the queue cannot use it, the battery-electric car behind it can
    m = models["ac"]
    sim = simulate("nearest", [station("a", 0.0, AC11), station("b", EAST_10M, DC150)],
                   [plan(0, m, 0.5), plan(1, m, 0.1, at=1.0),
                    plan(2, models["phev"], 0.2, at=2.0), plan(3, m, 0.5, at=3.0)])
    fast, long_, phev, bev = sim.cars
    assert (fast.station, long_.station) == ("b", "a")
    assert fast.charge_end_s < long_.charge_end_s
    assert (bev.station, bev.plug_s) == ("b", fast.charge_end_s)
    assert (phev.station, phev.plug_s) == ("a", long_.charge_end_s)


def test_a_recarga_car_names_its_model_and_the_estimate_follows_its_curve(models):
    sim = simulate("least_completion", [station("a", 0.0, DC150, site="")],
                   [plan(0, models["taper"], 0.2)])
    (car,) = sim.cars
    charged = car.charge_end_s - car.plug_s
    assert car.est_charge_s == pytest.approx(charged, abs=6.0)  # the answer's 0.1 min rounding
    assert charged > 1.1 * 0.6 * models["taper"].battery_kwh / 125.0 * 3600.0  # not constant power


def test_a_refused_recarga_car_asks_again_when_retry_after_says(models):
    m = models["ac"]
    sent: list[tuple[float, dict]] = []
    cfg = loop.SimConfig("least_completion", loop.engine_config("least_completion"), day_s=3600.0,
                         patience_s=math.inf)
    sim = loop.Simulation(cfg, [station("a", 0.0, AC11, site="")],
                          [plan(0, m, 0.1, target=1.0), plan(1, m, 0.2, at=60.0)])
    car_message = sim.engine.car_message

    def recording(car, payload, now):
        res = car_message(car, payload, now)
        if car == "c1" and json.loads(payload)["op"] == "reserve":
            sent.append((now, res.reply))
        return res

    sim.engine.car_message = recording
    r = sim.run()
    assert not r.anomalies
    (t0, refusal), (t1, _) = sent[:2]
    assert refusal["error"]["code"] == W.NO_CAPACITY
    # the first car charges for hours: retry_after is the gateway's bound, not the car's own
    assert refusal["error"]["retry_after"] == sim.engine.cfg.retry_max_s
    assert t1 - t0 == refusal["error"]["retry_after"]
