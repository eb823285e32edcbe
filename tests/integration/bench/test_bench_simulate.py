"""bench/simulate.py as a user runs it: its output lines, files and labels, and its errors."""
from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys

import pytest

from harness import ROOT
from recarga.core.selection import POLICIES

HEADLINE = re.compile(r"^mean wait vs best baseline at high load: [-+]\d+% \(ours \d+\.\d min, "
                      r"best baseline \d+\.\d min, p95 ours \d+\.\d min\)$")
HEADLINE_LOST = re.compile(r"^mean time lost vs best baseline at high load: [-+]\d+% \(ours \d+\.\d min, "
                           r"best baseline \d+\.\d min\)$")


def simulate(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "simulate.py"), "--no-progress", "--jobs", "1", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL,
                          check=False)


def test_bench_simulate_quick_output_format(tmp_path):
    out = simulate("--quick", "--radius-km", "1", "--hours", "3", "--loads", "16,32", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert HEADLINE.match(lines[-1]), lines[-1]
    assert HEADLINE_LOST.match(lines[-2]), lines[-2]
    assert lines[0].startswith("Berlin: ")
    header = next(i for i, line in enumerate(lines) if line.startswith("policy "))
    assert lines[header - 1].startswith("Berlin: ") and lines[header].split()[:2] == ["policy", "cars/slot/day"]
    assert sum(line.split()[0] in POLICIES for line in lines if line.strip()) >= 8
    assert any(line.startswith("Stations: Bundesnetzagentur") for line in lines)
    with open(tmp_path / "simulation.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["policy"] for r in rows} == set(POLICIES)
    assert {r["city"] for r in rows} == {"Berlin"}
    assert all(math.isfinite(float(r["mean_wait_min"])) and math.isfinite(float(r["mean_lost_min"])) for r in rows)
    for png in ("wait_vs_utilisation.png", "station_load_map.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _stations(path, n=6):
    """A few 22 kW posts and a DC hub somewhere that is not Berlin (Porto)."""
    doc = {"v": 1, "stations": [
        {"id": f"p{i}", "lat": 41.15 + 0.004 * i, "lon": -8.61 + 0.003 * (i % 3),
         "slots": [{"power_kw": 50.0, "dc": True}] * 2 if i == 0 else [{"power_kw": 22.0, "dc": False}]}
        for i in range(n)]}
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_another_city_is_labelled_with_its_own_name_and_source(tmp_path):
    stations = _stations(tmp_path / "porto_stations.json")
    out = simulate("--stations", str(stations), "--hours", "2", "--loads", "4", "--no-plots",
                   "--policies", "least_completion,nearest", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("porto stations: 6 stations, 7 slots")
    assert "Stations: source: porto_stations.json. Car models: Open EV Data by Chargeprice, MIT." in lines
    text = out.stdout + (tmp_path / "simulation.csv").read_text(encoding="utf-8")
    assert "Berlin" not in text and "Bundesnetzagentur" not in text
    out = simulate("--stations", str(stations), "--hours", "1", "--loads", "1", "--no-plots", "--city", "Porto",
                   "--attribution", "Mobi.E open data", "--policies", "least_completion,nearest",
                   "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Porto: 6 stations")
    assert "Stations: Mobi.E open data. Car models: Open EV Data by Chargeprice, MIT." in out.stdout


def _bad(tmp_path, kind):
    if kind == "missing stations":
        return ["--stations", str(tmp_path / "nowhere.csv")], "stations file", "No such file or directory"
    if kind == "bare list":
        p = tmp_path / "list.json"
        p.write_text('[{"id": "a", "lat": 1, "lon": 2, "slots": []}]', encoding="utf-8")
        return ["--stations", str(p)], "stations file", str(p)
    if kind == "missing models":
        return ["--models", str(tmp_path / "cars.json")], "car models file", "No such file or directory"
    p = tmp_path / "cars.json"
    p.write_text("not json", encoding="utf-8")
    return ["--models", str(p)], "car models file", "Expecting value"


@pytest.mark.parametrize("kind", ["missing stations", "bare list", "missing models", "bad models"])
def test_a_missing_or_bad_file_is_one_clear_line_and_exit_2(tmp_path, kind):
    args, what, detail = _bad(tmp_path, kind)
    out = simulate(*args, "--hours", "1", "--loads", "1", "--no-plots", "--out", str(tmp_path / "out"))
    assert out.returncode == 2, out.stdout + out.stderr
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in out.stderr, out.stderr
    assert err[0].startswith(f"simulate: {what} ") and detail in err[0], err[0]
    assert out.stdout == ""


def test_an_unwritable_output_directory_is_one_clear_line_and_exit_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    stations = _stations(tmp_path / "porto.json", n=2)
    out = simulate("--stations", str(stations), "--hours", "1", "--loads", "1", "--no-plots",
                   "--policies", "least_completion,nearest", "--out", str(blocker / "out"))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip() == f"simulate: cannot write the outputs to {blocker / 'out'}: Not a directory"
