"""What people read (recarga/simulation/report.py, labels.py): the table, the CSV, the goals
and the headline lines, labelled with the city and its data's attribution."""
from __future__ import annotations

import csv
import re
from dataclasses import replace

import numpy as np
import pytest

from recarga.core import resources
from recarga.simulation import labels, metrics, report

HEADLINE = re.compile(r"^mean wait vs best baseline at high load: [-+]\d+% \(ours \d+\.\d min, "
                      r"best baseline \d+\.\d min, p95 ours \d+\.\d min\)$")
HEADLINE_LOST = re.compile(r"^mean time lost vs best baseline at high load: [-+]\d+% \(ours \d+\.\d min, "
                           r"best baseline \d+\.\d min\)$")

_ZERO = metrics.Metrics(
    policy="", cars_per_day=0.0, cars=0, finished=0, stranded=0, gave_up=0, no_show=0, unfinished=0, came=0,
    mean_lost_min=0.0, p95_lost_min=0.0, mean_wait_min=0.0, p95_wait_min=0.0, max_wait_min=0.0,
    mean_drive_min=0.0, mean_charge_min=0.0, energy_kwh=0.0, utilisation=0.0, slots_used=0.0, gini=0.0,
    sites=1, expired_waiting=0, charge_vs_estimate=0.0, decisions_per_s=0.0, wall_s=0.0)

OTHER = labels.Labels("Porto", "source: porto.json", "source: cars.json")


def point(policy, load=1.0, util=0.1, wait=1.0, lost=None, stranded=0, gave_up=0, cars=100, p95=None):
    m = replace(_ZERO, policy=policy, cars=cars, came=cars - stranded, finished=cars - stranded - gave_up,
                stranded=stranded, gave_up=gave_up, mean_wait_min=wait, p95_wait_min=2 * wait if p95 is None else p95,
                mean_lost_min=40 + wait if lost is None else lost, utilisation=util)
    return report.Point(load, m, np.zeros(1))


def test_high_load_is_the_busiest_level_without_stranding():
    pts = [point("least_completion", 1, 0.1, 1), point("nearest", 1, 0.2, 10),
           point("least_completion", 2, 0.3, 2), point("nearest", 2, 0.4, 20),
           point("least_completion", 3, 0.5, 3), point("nearest", 3, 0.6, 30, stranded=2)]
    assert report.high_load(pts) == 2
    line = report.headline(pts)
    assert line == "mean wait vs best baseline at high load: -90% (ours 2.0 min, best baseline 20.0 min, p95 ours 4.0 min)"
    assert HEADLINE.match(line)
    lost = report.headline_time_lost(pts)
    assert lost == "mean time lost vs best baseline at high load: -30% (ours 42.0 min, best baseline 60.0 min)"
    assert HEADLINE_LOST.match(lost)


def _verdicts(pts):
    return {v.goal: v for v in report.check([p.metrics for p in pts])}


def test_goals_met_and_missed():
    v = _verdicts([point("least_completion", wait=5), point("nearest", wait=20), point("most_free", wait=25)])
    assert {g: x.status for g, x in v.items()} == {
        "mean time lost": "met", "mean wait": "met", "p95 wait": "", "stranded and gave up": "met"}
    assert "cut 75%" in v["mean wait"].detail and "cut 75%" in v["p95 wait"].detail
    # less than half the cut, a longer time lost, one more car gave up
    v = _verdicts([point("least_completion", wait=15, lost=70, gave_up=1), point("nearest", wait=20, lost=60)])
    assert [v[g].status for g in ("mean time lost", "mean wait", "stranded and gave up")] == ["NOT met"] * 3
    # where the best baseline waits 10 min or less the wait goal does not apply
    v = _verdicts([point("least_completion", wait=8), point("nearest", wait=9)])
    assert v["mean wait"].status == "n/a" and "> 10 min" in v["mean wait"].detail


def test_goals_and_headlines_say_na_for_an_empty_run():
    pts = [point("least_completion", cars=0), point("nearest", cars=0)]
    why = "n/a (no car asked and came under least_completion, nearest)"
    assert report.goals(pts) == [
        "goals at high load (1 cars/slot/day):",
        f"  mean time lost: {why}", f"  mean wait: {why}", f"  stranded and gave up: {why}",
        "levels missing a goal: none"]
    assert report.headline_time_lost(pts) == f"mean time lost vs best baseline at high load: {why}"
    assert report.headline(pts) == f"mean wait vs best baseline at high load: {why}"


def test_a_baseline_of_about_zero_has_nothing_to_cut():
    residue = 1.4e-14  # what a percentile of zero waits can come out as
    pts = [point("least_completion", wait=0.2, p95=0.5), point("nearest", wait=residue, p95=residue)]
    v = _verdicts(pts)
    assert v["mean wait"].status == "n/a" and v["p95 wait"].status == "n/a"
    for x in (v["mean wait"], v["p95 wait"]):
        assert "nothing to cut" in x.detail and "%" not in x.detail
    assert report.headline(pts) == ("mean wait vs best baseline at high load: n/a (best baseline ~0: nothing to "
                                    "cut; ours 0.2 min, best baseline 0.0 min, p95 ours 0.5 min)")
    assert report.cut(1.0, 1 / 60 - 1e-9) is None and report.cut(1.0, 2.0) == pytest.approx(0.5)


def test_table_and_csv_carry_the_city_the_attribution_and_the_new_metrics(tmp_path):
    pts = [point("least_completion", gave_up=2), point("nearest", wait=20)]
    text = report.table(pts, OTHER)
    lines = text.splitlines()
    assert lines[0].startswith("Porto: ")
    assert lines[1].split()[:2] == ["policy", "cars/slot/day"]
    assert "lost min" in lines[1] and "gave up" in lines[1] and "MWh" in lines[1]
    assert lines[-1] == "Stations: source: porto.json. Car models: source: cars.json."
    assert "Berlin" not in text and "Bundesnetzagentur" not in text
    report.write_csv(pts, tmp_path / "s.csv", OTHER)
    with open(tmp_path / "s.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["city"], r["policy"], r["gave_up"]) for r in rows] == [("Porto", "least_completion", "2"),
                                                                       ("Porto", "nearest", "0")]
    assert {"mean_lost_min", "p95_lost_min", "energy_kwh", "sites", "came"} <= set(rows[0])


def test_labels_come_from_the_data():
    berlin = labels.labels_for(resources.BERLIN_STATIONS, resources.EV_MODELS)
    assert berlin.city == "Berlin" and "Bundesnetzagentur" in berlin.stations_source
    assert "Open EV Data" in berlin.models_source
    other = labels.labels_for("/data/porto_charge-points.json", "/data/cars.json")
    assert other == labels.Labels("porto charge points", "source: porto_charge-points.json", "source: cars.json")
    given = labels.labels_for("/data/x.json", resources.EV_MODELS, city="Porto", attribution="Mobi.E, CC BY 4.0")
    assert (given.city, given.stations_source) == ("Porto", "Mobi.E, CC BY 4.0")
    # another register extract is the register's data, but not Berlin
    assert labels.labels_for("/data/hamburg.csv", resources.EV_MODELS).stations_source == labels.BNETZA
