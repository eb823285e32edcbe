"""The scenario matrix (recarga/simulation/matrix.py): its runs, how seeds pool into a row, how
a row is judged, and a tiny real matrix."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from recarga.core import evmodels
from recarga.core.selection import POLICIES
from recarga.core.stations import dump_stations_json
from recarga.simulation import city, demand, labels, matrix, report
from recarga.simulation.metrics import Metrics

LABELS = labels.Labels("Town", "source: town.json", "source: cars.json")

_ZERO = Metrics(
    policy="", cars_per_day=0.0, cars=0, finished=0, stranded=0, gave_up=0, no_show=0, unfinished=0, came=0,
    mean_lost_min=0.0, p95_lost_min=0.0, mean_wait_min=0.0, p95_wait_min=0.0, max_wait_min=0.0,
    mean_drive_min=0.0, mean_charge_min=0.0, energy_kwh=0.0, utilisation=0.0, slots_used=0.0, gini=0.0,
    sites=1, expired_waiting=0, charge_vs_estimate=0.0, decisions_per_s=0.0, wall_s=0.0)


def m(policy, lost=50.0, wait=1.0, p95=5.0, came=100, stranded=0, gave_up=0):
    return replace(_ZERO, policy=policy, cars=came + stranded, came=came, finished=came - gave_up,
                   stranded=stranded, gave_up=gave_up, mean_lost_min=lost, mean_wait_min=wait, p95_wait_min=p95)


def case(key="town", **kw):
    return matrix.Case(key, key.title(), "town.json", LABELS, 2.0, **kw)


def test_a_window_turns_the_daily_profile_to_start_at_its_hour():
    fields = case(hours=6.0, start_hour=14).demand_fields()
    assert fields["profile"][:6] == demand.DAILY_PROFILE[14:20]
    assert sorted(fields["profile"]) == sorted(demand.DAILY_PROFILE)  # the day's rates, not more cars
    assert "profile" not in case().demand_fields()
    own = tuple(range(24))
    assert case(start_hour=3, demand={"profile": own}).demand_fields()["profile"][0] == 3
    assert case(hours=6.0, start_hour=14).window() == "6 h from 14:00 (the busiest hours)"


def test_jobs_cover_every_case_multiple_seed_and_policy():
    cases = [case("a"), case("b", site_distance_m=0.0, radius_km=3.0)]
    js = matrix.jobs(cases, (1.0, 8.0), (1, 2, 3), "cars.json")
    assert len(js) == 2 * 2 * 3 * len(POLICIES)
    assert len({j["id"] for j in js}) == len(js)
    assert {(j["case"], j["multiple"], j["seed"], j["policy"]) for j in js} == {
        (c, x, s, p) for c in ("a", "b") for x in (1.0, 8.0) for s in (1, 2, 3) for p in POLICIES}
    b8 = [j for j in js if j["case"] == "b" and j["multiple"] == 8.0]
    assert {j["load"] for j in b8} == {16.0} and {j["site_distance_m"] for j in b8} == {0.0}
    assert {j["radius_km"] for j in b8} == {3.0}


def test_run_returns_each_job_with_its_own_metrics_whatever_order_it_ran_in():
    js = matrix.jobs([case()], (1.0, 2.0, 4.0), (1,), "cars.json", ("least_completion", "nearest"))
    ran = []

    def sweep(jobs, workers, progress):
        ran.extend(j["id"] for j in jobs)
        return [report.Point(j["load"], m(j["policy"], lost=j["id"]), np.zeros(1)) for j in jobs]

    out = matrix.run(js, 1, False, sweep)
    assert [j["id"] for j, _ in out] == [j["id"] for j in js]
    assert all(mm.mean_lost_min == j["id"] for j, mm in out)
    assert ran[0] in {j["id"] for j in js if j["multiple"] == 4.0}  # the costliest first


def test_pooling_weights_means_by_cars_and_sums_counts():
    p = matrix.pool([m("x", lost=10, wait=2, p95=4, came=100, stranded=1, gave_up=3),
                     m("x", lost=40, wait=8, p95=10, came=300, stranded=0, gave_up=5)])
    assert p.mean_lost_min == pytest.approx((10 * 100 + 40 * 300) / 400)
    assert p.mean_wait_min == pytest.approx((2 * 100 + 8 * 300) / 400)
    assert p.p95_wait_min == pytest.approx(7.0)
    assert (p.came, p.stranded, p.gave_up, p.cars) == (400, 1, 8, 401)
    with pytest.raises(ValueError):
        matrix.pool([])


def _results(per_seed):
    """(job, metrics) pairs from {seed: [metrics, ...]} for one case at 1x."""
    return [({"case": "town", "multiple": 1.0, "seed": s}, mm) for s, ms in per_seed.items() for mm in ms]


def test_a_row_meets_the_goal_when_recarga_loses_least_and_cuts_a_long_wait():
    good = [m("least_completion", lost=40, wait=4), m("nearest", lost=90, wait=30), m("most_free", lost=60, wait=12)]
    (row,) = matrix.rows([case()], _results({1: good, 2: good}))
    assert row.status == "met" and row.outcome() == "met" and (row.seeds_met, row.seeds) == (2, 2)
    assert set(row.pooled) == {"least_completion", "nearest", "most_free"}


@pytest.mark.parametrize("ours, missed", [
    (m("least_completion", lost=70, wait=4), "mean time lost"),
    (m("least_completion", lost=40, wait=8), "mean wait"),  # best baseline 12 min: cut only 33 %
    (m("least_completion", lost=40, wait=4, gave_up=2), "stranded and gave up"),
])
def test_a_row_missing_a_goal_says_which(ours, missed):
    base = [m("nearest", lost=90, wait=30), m("most_free", lost=60, wait=12)]
    (row,) = matrix.rows([case()], _results({1: [ours, *base]}))
    assert row.status == "NOT met" and row.outcome() == f"NOT met: {missed}"
    assert matrix.summary([row]) == "goal met in 0 of 1 rows (NOT met: 1, n/a: 0)"


def test_short_waits_need_no_cut_but_the_time_lost_still_counts():
    (row,) = matrix.rows([case()], _results({1: [m("least_completion", lost=40, wait=3),
                                                 m("nearest", lost=45, wait=4)]}))
    assert row.status == "met"
    assert next(v for v in row.verdicts if v.goal == "mean wait").status == "n/a"


def test_an_empty_run_is_na_never_met():
    (row,) = matrix.rows([case()], _results({1: [m("least_completion", came=0), m("nearest", came=0)]}))
    assert row.status == "n/a" and row.outcome().startswith("n/a (no car asked and came")
    assert matrix.summary([row]) == "goal met in 0 of 1 rows (NOT met: 0, n/a: 1)"


def test_seeds_met_counts_each_seed_on_its_own():
    good = [m("least_completion", lost=40, wait=4), m("nearest", lost=90, wait=30)]
    bad = [m("least_completion", lost=95, wait=4), m("nearest", lost=90, wait=30)]
    (row,) = matrix.rows([case()], _results({1: good, 2: good, 3: bad}))
    assert (row.seeds_met, row.seeds) == (2, 3)
    assert row.status == "met"  # pooled: 58.3 min against 90


def test_the_table_has_a_line_per_row_with_every_policy_and_the_verdict():
    good = [m("least_completion", lost=40, wait=4, p95=9), m("nearest", lost=90, wait=30, gave_up=2)]
    rows = matrix.rows([case()], _results({1: good}))
    lines = matrix.table(rows).splitlines()
    assert lines[0] == ("| scenario | load | cars | Recarga | nearest | wait vs best baseline | seeds met | goal |")
    assert lines[2] == "| Town | 1x | 100 | 40.0 / 4.0 / 9.0 / 0 / 0 | 90.0 / 30.0 / 5.0 / 0 / 2 | -87% | 1/1 | met |"


@pytest.fixture(scope="module")
def town_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("town") / "small_city.json"
    town = city.stations(1)
    dump_stations_json(town, path)
    return path, sum(len(s.slots) for s in town)


def test_a_tiny_real_matrix_judges_every_row(town_file):
    path, slots = town_file
    c = replace(matrix.small_city_case(str(path), slots, LABELS), hours=1.0)
    assert c.load_1x * slots == pytest.approx(city.SESSIONS_PER_DAY)
    results = matrix.run(matrix.jobs([c], (1.0, 4.0), (1,), str(evmodels.DEFAULT_PATH)), 1, False)
    rows = matrix.rows([c], results)
    assert [r.multiple for r in rows] == [1.0, 4.0]
    for r in rows:
        assert set(r.pooled) == set(POLICIES)
        assert all(math.isfinite(x.mean_lost_min) and x.cars > 0 for x in r.pooled.values())
        assert r.status in ("met", "NOT met", "n/a")
    assert rows[1].pooled["nearest"].cars > rows[0].pooled["nearest"].cars


def test_a_case_groups_its_devices_as_its_runs_do(town_file):
    path, slots = town_file
    by_site = matrix.small_city_case(str(path), slots, LABELS)
    by_device = replace(by_site, site_distance_m=0.0)
    devices, sites, n_slots, dc = matrix.describe(matrix.load_case_stations(by_site))
    assert (devices, n_slots) == (37, 60) and sites < devices and dc > 0
    assert matrix.describe(matrix.load_case_stations(by_device))[1] == devices
    # the runs group alike: per-site evenness is over as many sites
    for c, want in ((by_site, sites), (by_device, devices)):
        (job,) = matrix.jobs([replace(c, hours=0.5)], (1.0,), (1,), str(evmodels.DEFAULT_PATH), ("nearest",))
        (_, got), = matrix.run([job], 1, False)
        assert got.sites == want
