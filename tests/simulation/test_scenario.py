"""Scenario files and the demand options (recarga/simulation/scenario.py, cli.demand_settings):
every key checked with a message naming it; the command line overrides the file."""
from __future__ import annotations

import pytest

from recarga.core.config_file import ConfigError
from recarga.simulation import scenario
from recarga.simulation.cli import build_parser, demand_settings, main


def write(tmp_path, text: str):
    p = tmp_path / "city.toml"
    p.write_text(text)
    return p


GOOD = """
stations = "stations.json"
[demand]
centre = [38.72, -9.14]
centre_sigma_km = 2
profile = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2]
energy_kwh = [6, 14]
car_mix = { "Nissan Leaf" = 6, "Renault Zoe" = 1.5 }
no_show = 0.02
dwell_min = [0, 30]
no_app = 0.1
[replay]
file = "sessions.csv"
time_format = "%m/%d/%Y %H:%M"
[replay.columns]
start = "Begin"
"""


def test_a_scenario_file_gives_demand_fields_and_a_replay(tmp_path):
    s = scenario.load(write(tmp_path, GOOD))
    assert s.demand["centre"] == (38.72, -9.14)
    assert s.demand["profile"][-1] == 2.0 and len(s.demand["profile"]) == 24
    assert s.demand["energy_kwh"] == (6.0, 14.0)
    assert s.demand["car_mix"] == (("Nissan Leaf", 6.0), ("Renault Zoe", 1.5))
    assert s.demand["dwell_min"] == (0.0, 30.0) and s.demand["no_app"] == 0.1
    assert s.stations == tmp_path / "stations.json"
    assert s.replay == scenario.ReplaySpec(tmp_path / "sessions.csv", {"start": "Begin"}, "%m/%d/%Y %H:%M")


@pytest.mark.parametrize("text, message", [
    ("[demand]\nnoshow = 0.1", "unknown key 'noshow' at \\[demand\\]"),
    ("[demnd]\nno_show = 0.1", "unknown section \\[demnd\\]"),
    ("[demand]\nno_show = '5%'", "\\[demand\\] no_show has the wrong type"),
    ("[demand]\nno_app = 1.5", "\\[demand\\] no_app = 1.5 outside 0..1"),
    ("[demand]\nleg_km = [15, 2]", "\\[demand\\] leg_km must be \\[low, high\\]"),
    ("[demand]\nask_soc = [0.1, 'x']", "\\[demand\\] ask_soc must be a list of numbers"),
    ("[demand]\nprofile = [1, 2, 3]", "\\[demand\\] profile must be 24 weights"),
    ("[demand]\ncentre = [95, 10]", "\\[demand\\] centre must be \\[lat, lon\\]"),
    ("[demand]\ncar_mix = { 'Nissan Leaf' = 0 }", "car_mix weight of 'Nissan Leaf' must be a number above 0"),
    ("[demand]\nask_soc = [0.1, 0.9]\ntarget_soc = 0.8", "ask_soc 0.9 must be below target_soc 0.8"),
    ("[replay]\ntime_format = '%Y'", "\\[replay\\] needs file"),
])
def test_bad_scenario_values_are_refused_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as e:
        scenario.load(write(tmp_path, text))
    assert str(tmp_path / "city.toml") in str(e.value)


def test_a_missing_scenario_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        scenario.load(tmp_path / "none.toml")


def test_the_command_line_overrides_the_file(tmp_path):
    path = write(tmp_path, GOOD)
    args = build_parser().parse_args(["--scenario", str(path), "--no-app", "0.3", "--energy-kwh", "5,9",
                                      "--car", "Tesla Model 3=2", "--replay-columns", "energy=kWh"])
    fields, spec, _ = demand_settings(args)
    assert fields["no_app"] == 0.3 and fields["energy_kwh"] == (5.0, 9.0)
    assert fields["car_mix"] == (("Tesla Model 3", 2.0),)
    assert fields["no_show"] == 0.02  # from the file
    assert spec["columns"] == {"start": "Begin", "energy": "kWh"} and spec["file"].endswith("sessions.csv")


@pytest.mark.parametrize("argv, message", [
    (["--no-app", "2"], "--no-app no_app = 2.0 outside 0..1"),
    (["--dwell-min", "abc"], "--dwell-min: not a number or list of numbers"),
    (["--car", "Leaf"], "--car 'Leaf': expected MODEL=WEIGHT"),
    (["--profile", "1,2"], "--profile profile must be 24 weights"),
])
def test_bad_demand_options_are_refused_naming_the_option(tmp_path, capsys, argv, message):
    rc = main(argv + ["--hours", "1", "--loads", "1", "--no-progress", "--out", str(tmp_path)])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_an_unknown_car_model_is_refused_before_any_run(tmp_path, capsys):
    rc = main(["--car", "No Such Car=1", "--radius-km", "1", "--hours", "1", "--loads", "1",
               "--no-progress", "--out", str(tmp_path)])
    assert rc == 2
    assert "unknown car model 'No Such Car'" in capsys.readouterr().err
