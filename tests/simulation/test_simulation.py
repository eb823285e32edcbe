"""The city simulation's bookkeeping (recarga/simulation/): energy, slots, cars, determinism, output.

Small: the stations within 1 km of the centre and a few hours of cars, so each run takes a
fraction of a second to a few seconds.
"""
from __future__ import annotations

import math
import re
from dataclasses import replace
from itertools import pairwise

import numpy as np
import pytest

from recarga.core import evmodels
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.core.selection import POLICIES
from recarga.core.stations import load_stations
from recarga.gateway.engine import Engine, EngineConfig
from recarga.simulation import demand, loop, metrics
from recarga.simulation.cli import DEFAULT_STATIONS, select_stations

HEADLINE = re.compile(r"^mean wait vs best baseline at high load: [-+]\d+% \(ours \d+\.\d min, "
                      r"best baseline \d+\.\d min, p95 ours \d+\.\d min\)$")


@pytest.fixture(scope="module")
def stations():
    return select_stations(load_stations(DEFAULT_STATIONS), 1.0)


@pytest.fixture(scope="module")
def models():
    return evmodels.load_models()


def plans_for(stations, models, seed=3, per_slot=10.0, hours=4.0, no_show=0.1):
    """A few hours of busy afternoon (a flat profile at per_slot cars per slot per day)."""
    slots = sum(len(s.slots) for s in stations)
    p = demand.DemandParams(cars_per_day=per_slot * slots, hours=hours, no_show=no_show, profile=(1.0,) * 24)
    return demand.generate(seed, p, stations, models, 1.3)


def run(policy, stations, plans, **kw):
    cfg = loop.SimConfig(policy, loop.engine_config(policy), **kw)
    return loop.simulate(cfg, stations, plans)


@pytest.fixture(scope="module")
def results(stations, models):
    plans = plans_for(stations, models)
    return {p: run(p, stations, plans) for p in POLICIES}


# ----------------------------------------------------------------------------- car models

def test_models_fit_the_protocol(models):
    assert len(models) > 150
    for m in models:
        assert 5 <= m.consumption_kwh_100km <= 80 and 1 <= m.battery_kwh <= 300
        assert m.max_ac_kw > 0 or m.max_dc_kw > 0
        assert (m.max_dc_kw > 0) == bool(m.dc_curve)
    # Wh/km entries are read as kWh/100 km
    q4 = [m for m in models if m.name.startswith("Audi Q4")]
    assert q4 and all(15 <= m.consumption_kwh_100km <= 22 for m in q4)


def test_charge_time_is_the_integral_of_the_curve(models):
    for m in models[:40]:
        for kw, dc in ((150.0, True), (50.0, True), (11.0, False), (3.7, False)):
            if (m.max_dc_kw if dc else m.max_ac_kw) <= 0:
                continue
            curve = m.power_curve(kw, dc)
            assert max(p for _, p in curve) <= kw + 1e-9
            exact = evmodels.charge_seconds(curve, m.battery_kwh, 0.15, 0.8)
            s = np.linspace(0.15, 0.8, 20001)
            power = np.maximum(np.interp(s, [x for x, _ in curve], [p for _, p in curve]), 0.05)
            numeric = np.trapezoid(m.battery_kwh * 3600.0 / power, s)
            assert exact == pytest.approx(numeric, rel=1e-4)
            assert evmodels.soc_after(curve, m.battery_kwh, 0.15, exact) == pytest.approx(0.8, abs=1e-6)


def test_single_phase_car_draws_less_than_the_point_offers(models):
    m = next(m for m in models if m.name == "Aiways U5")
    assert m.ac_power(11.0) == 3.7 and m.ac_power(22.0) == 6.6 and m.ac_power(2.3) == 2.3


# ----------------------------------------------------------------------------- demand

def test_demand_is_a_function_of_the_seed(stations, models):
    a, b = plans_for(stations, models, seed=5), plans_for(stations, models, seed=5)
    assert a == b
    assert a != plans_for(stations, models, seed=6)


def test_arrivals_follow_the_daily_profile():
    rng = np.random.default_rng(0)
    t = demand.arrival_times(rng, demand.DemandParams(cars_per_day=200_000))
    per_hour = np.bincount((t // 3600).astype(int), minlength=24)
    prof = np.array(demand.DAILY_PROFILE) / sum(demand.DAILY_PROFILE)
    assert per_hour.sum() == pytest.approx(200_000, rel=0.01)
    assert np.allclose(per_hour / per_hour.sum(), prof, atol=0.002)


# ----------------------------------------------------------------------------- bookkeeping

@pytest.mark.parametrize("policy", POLICIES)
def test_energy_is_conserved_per_car(results, policy):
    r = results[policy]
    checked = 0
    for c in r.cars:
        if c.state == loop.PENDING:
            continue
        m = c.plan.model
        assert c.plan.soc_start * m.battery_kwh - c.energy_driven_kwh + c.energy_charged_kwh == \
            pytest.approx(c.soc * m.battery_kwh, abs=1e-9)
        assert c.soc >= 0.0
        if c.state == loop.FINISHED:
            # what the slot's power curve delivers over the session is what the battery gained
            site = next(s for s in r.stations if s.id == c.station)
            slot = site.slots[c.slot - 1]
            curve = m.power_curve(slot.power_kw, slot.dc)
            gained = evmodels.soc_after(curve, m.battery_kwh, c.soc_plug, c.leave_s - c.plug_s) - c.soc_plug
            assert gained * m.battery_kwh == pytest.approx(c.energy_charged_kwh, abs=1e-3)
            assert c.soc == pytest.approx(max(c.plan.target_soc, c.soc_plug))
            # the drive to the station used what the distance costs
            assert c.energy_driven_kwh == pytest.approx(c.drive_km * m.consumption_kwh_100km / 100.0)
            checked += 1
    assert checked > 50


@pytest.mark.parametrize("policy", POLICIES)
def test_no_slot_serves_two_cars_at_once(results, policy):
    by_slot: dict[tuple[str, int], list[loop.Session]] = {}
    for s in results[policy].sessions:
        by_slot.setdefault((s.station, s.slot), []).append(s)
    for sessions in by_slot.values():
        sessions.sort(key=lambda s: s.start)
        for a, b in pairwise(sessions):
            assert b.start >= a.end
    assert len({s.car for s in results[policy].sessions}) == len(results[policy].sessions)


@pytest.mark.parametrize("policy", POLICIES)
def test_every_car_is_accounted_for(results, policy):
    r = results[policy]
    states = [c.state for c in r.cars]
    assert set(states) <= loop.FINAL | {loop.DRIVING, loop.HEADING, loop.WAITING, loop.CHARGING}
    if policy == "least_completion":
        assert set(states) <= loop.FINAL  # the drain after the day emptied the city
    # a session is recorded when the car unplugs; cars still charging hold their slot
    assert states.count(loop.FINISHED) == len(r.sessions)
    plugged = {(c.station, c.slot) for c in r.cars if c.state == loop.CHARGING}
    assert len(plugged) == states.count(loop.CHARGING)
    assert not r.anomalies
    m = metrics.measure(r, 1.0)
    assert m.finished + m.stranded + m.gave_up + m.no_show + m.unfinished == m.cars == len(r.cars)


def test_a_run_cut_short_counts_cars_still_on_the_road(stations, models):
    plans = plans_for(stations, models, hours=4.0)
    r = run("least_completion", stations, plans, drain_s=0.0)
    in_progress = [c for c in r.cars if c.state not in loop.FINAL]
    assert in_progress  # cars still driving, waiting or charging when the day ended
    m = metrics.measure(r, 1.0)
    assert m.unfinished == len(in_progress)
    assert m.finished + m.stranded + m.gave_up + m.no_show + m.unfinished == len(plans)


def test_same_seed_same_results(stations, models):
    for policy in ("least_completion", "shortest_queue"):
        a = run(policy, stations, plans_for(stations, models, seed=11, hours=2.0))
        b = run(policy, stations, plans_for(stations, models, seed=11, hours=2.0))
        ma, mb = metrics.measure(a, 1.0), metrics.measure(b, 1.0)
        timing = {"decisions_per_s", "wall_s"}
        assert {k: v for k, v in ma.row().items() if k not in timing} == \
               {k: v for k, v in mb.row().items() if k not in timing}
        assert a.sessions == b.sessions


def test_a_car_that_can_reach_nothing_is_stranded(stations, models):
    plans = plans_for(stations, models, hours=1.0, no_show=0.0)[:20]
    far = [replace(p, origin=(52.30, 13.0), ask_at=(52.30, 13.0), soc_ask=0.06, soc_start=0.06 + 0.0,
                   leg_km=0.0) for p in plans[:3]]
    r = run("least_completion", stations, far + plans[3:])
    assert [c.state for c in r.cars[:3]] == [loop.STRANDED] * 3
    assert all(c.state != loop.STRANDED for c in r.cars[3:])


# ----------------------------------------------------------------------------- how apps are modelled

@pytest.mark.parametrize("policy", ["nearest", "most_free", "shortest_queue"])
def test_baselines_hold_nothing_and_serve_first_come_first_served(stations, models, policy):
    # drivers who never give up, so that the queues they join do reach the slots
    r = run(policy, stations, plans_for(stations, models), patience_s=math.inf)
    assert all(c.expired == 0 for c in r.cars)
    site_of = {s.id: s.site or s.id for s in r.stations}
    site_slots: dict[str, list] = {}
    for s in r.stations:
        site_slots.setdefault(site_of[s.id], []).extend(s.slots)
    plugged = [c for c in r.cars if c.plug_s is not None]
    by_site: dict[str, list[loop.CarRun]] = {}
    for c in plugged:
        by_site.setdefault(site_of[c.station], []).append(c)
    waited = 0
    for site, cars in by_site.items():
        universal = [c for c in cars if all((c.plan.model.max_dc_kw if sl.dc else c.plan.model.max_ac_kw) > 0
                                            for sl in site_slots[site])]
        for a in universal:  # nobody who arrived later at the site overtook a car that could use any unit
            for b in universal:
                if b.arrive_s > a.arrive_s:
                    assert b.plug_s >= a.plug_s
        waited += sum(c.plug_s > c.arrive_s for c in cars)
    assert waited > 0  # the scenario does make cars queue


def test_reserving_cars_charge_on_their_own_reservation(results):
    r = results["least_completion"]
    assert not r.anomalies  # every plug-in checked in exactly that car's reservation
    no_shows = [c for c in r.cars if c.state == loop.NO_SHOW]
    assert no_shows and all(c.plug_s is None for c in no_shows)


def test_free_slots_speedup_gives_the_engine_s_answer_summed_per_site(stations):
    assert len({s.site for s in stations}) < len(stations)  # some sites have several stations
    cfg = EngineConfig(region="sim", policy="most_free")
    fast = loop._SiteAwareEngine(cfg, stations, lambda sid: 0)
    plain = Engine(cfg, stations)
    rng = np.random.default_rng(1)
    for step in range(4):
        for s in stations:
            states = [str(x) for x in rng.choice(["free", "occupied", "reserved", "out_of_service"], len(s.slots))]
            for e in (fast, plain):
                if step == 0:
                    e.station_online(s.id, W.online_message(True), 0.0)
                e.station_status(s.id, W.encode(D.station_status(states)), float(step))
        site_free = {}
        for s in stations:  # the baselines' view: a station's figure is its site's
            site_free[s.site or s.id] = site_free.get(s.site or s.id, 0) + plain.free_slots(s.id)
        assert [fast.free_slots(s.id) for s in stations] == [site_free[s.site or s.id] for s in stations]


# ----------------------------------------------------------------------------- command line

def test_gateway_cli_simulate_subcommand(tmp_path, capsys):
    from recarga.commands import gateway as main

    rc = main(["simulate", "--radius-km", "1", "--hours", "2", "--loads", "16", "--jobs", "1",
               "--policies", "least_completion,nearest", "--out", str(tmp_path), "--no-plots", "--no-progress"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert HEADLINE.match(lines[-1])
    assert (tmp_path / "simulation.csv").exists()
