"""bench/simulate_matrix.py as a user runs it: a tiny matrix's Markdown, its verdicts and last
line, its files, and its errors."""
from __future__ import annotations

import csv
import re
import subprocess
import sys

from harness import ROOT
from recarga.core.selection import POLICIES
from recarga.core.stations import load_stations

SUMMARY = re.compile(r"^goal met in (\d+) of (\d+) rows \(NOT met: (\d+), n/a: (\d+)\)$")


def matrix(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "simulate_matrix.py"), "--no-progress",
                           "--jobs", "1", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          stdin=subprocess.DEVNULL, check=False)


def test_a_tiny_matrix_prints_its_scenarios_rows_verdicts_and_count(tmp_path):
    out = matrix("--scenarios", "berlin_centre,small_city", "--loads", "1,2", "--seeds", "1,2",
                 "--hours", "1", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    m = SUMMARY.match(lines[-1])
    assert m, lines[-1]
    met, total, missed, na = map(int, m.groups())
    assert total == 4 and met + missed + na == 4
    scen = lines.index("| scenario | devices | sites | slots (DC) | 1x: cars/slot/day | 1x: cars/day | cars appear over |")
    assert lines[scen + 2].startswith("| Berlin's centre by site (3 km) | ")
    assert lines[scen + 3].startswith("| small city with hubs (synthetic) | 37 | ")
    head = lines.index("| scenario | load | cars | Recarga | nearest | most_free | shortest_queue "
                       "| wait vs best baseline | seeds met | goal |")
    rows = lines[head + 2:head + 6]
    assert [r.split(" | ")[:2] for r in rows] == [
        ["| Berlin's centre by site (3 km)", "1x"], ["| Berlin's centre by site (3 km)", "2x"],
        ["| small city with hubs (synthetic)", "1x"], ["| small city with hubs (synthetic)", "2x"]]
    goals = [r.rstrip(" |").rsplit(" | ", 1)[1] for r in rows]
    assert all(g == "met" or g.startswith(("NOT met: ", "n/a (")) for g in goals), goals
    assert sum(g == "met" for g in goals) == met
    assert all(re.search(r"\| [0-2]/2 \|", r) for r in rows)
    assert any(line.startswith("Berlin: Stations: Bundesnetzagentur") for line in lines)
    assert "small city with hubs (synthetic): Stations: synthetic, recarga.simulation.city (seed 1). " \
           "Car models: Open EV Data by Chargeprice, MIT." in lines
    with open(tmp_path / "matrix.csv", encoding="utf-8") as f:
        runs = list(csv.DictReader(f))
    assert len(runs) == 2 * 2 * 2 * len(POLICIES)
    assert {r["policy"] for r in runs} == set(POLICIES) and {r["seed"] for r in runs} == {"1", "2"}
    assert sum(len(s.slots) for s in load_stations(tmp_path / "small_city.json")) == 60


def test_an_unknown_scenario_or_unwritable_output_is_one_clear_line_and_exit_2(tmp_path):
    out = matrix("--scenarios", "paris", "--out", str(tmp_path))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == ("bench/simulate_matrix.py: unknown scenario(s) ['paris']; valid: "
                                  "berlin_device, berlin_site, berlin_centre, small_city")
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    out = matrix("--scenarios", "small_city", "--out", str(blocker / "out"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == f"bench/simulate_matrix.py: cannot write to {blocker / 'out'}: Not a directory"
    out = matrix("--loads", "0", "--out", str(tmp_path))
    assert out.returncode == 2 and "load multiples must be > 0" in out.stderr
