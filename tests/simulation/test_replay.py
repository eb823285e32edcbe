"""Replaying a real session log (recarga/simulation/replay.py): header detection, explicit
mapping, bad rows skipped with their row numbers, each session's time, place and energy kept."""
from __future__ import annotations

import csv
from datetime import datetime

import pytest

from recarga.core import evmodels
from recarga.core.model import SlotMeta, StationMeta
from recarga.simulation import loop, replay
from recarga.simulation.cli import main

STATIONS = [StationMeta("pa-hamilton-1", 37.4445, -122.1604, (SlotMeta(7.0, False),) * 2,
                        name="PALO ALTO CA / HAMILTON #1"),  # a log names it by its name
            StationMeta("pa-bryant-1", 37.4465, -122.1616, (SlotMeta(7.0, False),) * 2,
                        name="PALO ALTO CA / BRYANT #1"),
            StationMeta("DC-1", 37.4425, -122.1630, (SlotMeta(50.0, True),))]

# the shape of a public open-data export (Palo Alto's)
HEADER = ["Station Name", "Start Date", "End Date", "Total Duration (hh:mm:ss)",
          "Charging Time (hh:mm:ss)", "Energy (kWh)", "Latitude", "Longitude"]
ROWS = [
    ["PALO ALTO CA / HAMILTON #1", "7/29/2011 20:17", "7/29/2011 23:20", "3:03:32", "1:54:03", "6.249", "", ""],
    ["PALO ALTO CA / BRYANT #1", "7/30/2011 0:00", "7/30/2011 0:02", "0:02:06", "0:01:54", "0.106", "", ""],
    ["SOMEWHERE ELSE", "7/30/2011 8:16", "7/30/2011 12:34", "4:17:32", "4:17:28", "14.951", "37.43", "-122.15"],
    ["PALO ALTO CA / HAMILTON #1", "not a date", "", "", "", "5", "", ""],  # row 5
    ["PALO ALTO CA / HAMILTON #1", "7/30/2011 9:00", "", "", "", "-2", "", ""],  # row 6
    ["NOWHERE", "7/30/2011 9:00", "", "", "", "3", "", ""],  # row 7
]


def write(tmp_path, header, rows, name="sessions.csv"):
    p = tmp_path / name
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return p


def test_an_open_data_export_is_read_with_its_headers_detected(tmp_path):
    log = replay.read_log(write(tmp_path, HEADER, ROWS), STATIONS)
    assert log.columns == {"start": "Start Date", "end": "End Date", "duration": "Total Duration (hh:mm:ss)",
                           "charging_time": "Charging Time (hh:mm:ss)", "energy": "Energy (kWh)",
                           "station": "Station Name", "lat": "Latitude", "lon": "Longitude"}
    assert [s.row for s in log.sessions] == [2, 3, 4]
    first = log.sessions[0]
    assert first.start == datetime(2011, 7, 29, 20, 17) and first.energy_kwh == 6.249
    assert (first.lat, first.lon) == (37.4445, -122.1604)  # the charge point's station
    assert first.dwell_s == pytest.approx(3 * 3600 + 3 * 60 - (3600 + 54 * 60 + 3))  # end - start - charging
    assert (log.sessions[2].lat, log.sessions[2].lon) == (37.43, -122.15)  # its own position
    reasons = dict(log.skipped)
    assert set(reasons) == {5, 6, 7}
    assert "time 'not a date' not understood" in reasons[5]
    assert "energy -2 kWh is not above 0" in reasons[6]
    assert "unknown charge point 'NOWHERE' and no position" in reasons[7]
    assert "3 sessions, 3 rows skipped: row 5:" in log.summary()


def test_an_explicit_mapping_and_time_format(tmp_path):
    rows = [["a", "2024-03-01T08:30:00+01:00", "45", "DC-1"], ["b", "2024-03-01 09:00", "30", "DC-1"]]
    p = write(tmp_path, ["id", "Beginn", "Menge", "Ladepunkt"], rows)
    log = replay.read_log(p, STATIONS, {"start": "Beginn", "energy": "Menge", "station": "Ladepunkt"})
    assert [s.energy_kwh for s in log.sessions] == [45.0, 30.0]
    assert log.sessions[0].start == datetime(2024, 3, 1, 8, 30)  # the log's own wall clock
    p2 = write(tmp_path, ["when", "kWh", "station"], [["01.03.2024 08:30", "12", "DC-1"]], "de.csv")
    log2 = replay.read_log(p2, STATIONS, {"start": "when"}, time_format="%d.%m.%Y %H:%M")
    assert log2.sessions[0].start == datetime(2024, 3, 1, 8, 30)


@pytest.mark.parametrize("header, rows, columns, message", [
    (["Start Date", "Energy (kWh)"], [["7/29/2011 20:17", "5"]], None, "no column for station or lat and lon"),
    (["Station", "kWh"], [["DC-1", "5"]], None, "no column for start"),
    (HEADER, ROWS, {"begin": "Start Date"}, "unknown column role\\(s\\) \\['begin'\\]"),
    (HEADER, ROWS, {"start": "Anfang"}, "column\\(s\\) \\['Anfang'\\] not in the header"),
    (HEADER, [ROWS[3], ROWS[4]], None, "no usable session \\(time 'not a date' not understood"),
    (HEADER, [], None, "no usable session"),
])
def test_unusable_logs_are_refused_clearly(tmp_path, header, rows, columns, message):
    with pytest.raises(replay.ReplayError, match=message):
        replay.read_log(write(tmp_path, header, rows), STATIONS, columns)


def test_a_missing_log_is_named(tmp_path):
    with pytest.raises(replay.ReplayError, match=f"session log {tmp_path / 'none.csv'} not found"):
        replay.read_log(tmp_path / "none.csv", STATIONS)


def test_plans_keep_each_session_s_time_place_and_energy(tmp_path):
    models = evmodels.load_models()
    log = replay.read_log(write(tmp_path, HEADER, ROWS), STATIONS)
    plans = replay.plans(log, models, (), 0.8, seed=1)
    assert [p.appear_s for p in plans] == [20 * 3600 + 17 * 60, 24 * 3600, 32 * 3600 + 16 * 60]
    for p, s in zip(plans, log.sessions):
        assert p.ask_at == (s.lat, s.lon) and p.leg_km == 0.0
        assert (p.target_soc - p.soc_ask) * p.model.battery_kwh == pytest.approx(s.energy_kwh)
        assert p.dwell_s == s.dwell_s
    doubled = replay.plans(log, models, (), 0.8, seed=1, copies=2.0)
    assert len(doubled) == 6
    assert replay.span_hours(plans) == 33


def test_a_replay_runs_through_the_simulator_and_the_cli(tmp_path, capsys):
    models = evmodels.load_models()
    log = replay.read_log(write(tmp_path, HEADER, ROWS), STATIONS)
    plans = replay.plans(log, models, (), 0.8, seed=1)
    for policy in ("least_completion", "nearest"):
        r = loop.simulate(loop.SimConfig(policy, loop.engine_config(policy)), STATIONS, plans)
        assert len(r.sessions) == len(log.sessions)
        for s in r.sessions:  # the session's energy, plus what driving to the chosen station used
            car = r.cars[s.car]
            assert s.energy_kwh == pytest.approx(log.sessions[s.car].energy_kwh + car.energy_driven_kwh)
    st = tmp_path / "st.json"
    st.write_text('{"v": 1, "stations": [{"id": "DC-1", "lat": 37.4425, "lon": -122.1630, '
                  '"slots": [{"power_kw": 50.0, "dc": true}]}]}')
    rows = [["DC-1", "3/1/2024 8:00", "3/1/2024 9:00", "", "0:40:00", "20", "", ""],
            ["DC-1", "3/1/2024 8:10", "3/1/2024 8:50", "", "0:30:00", "15", "", ""], ROWS[0], ROWS[1], ROWS[3]]
    rc = main(["--stations", str(st), "--replay", str(write(tmp_path, HEADER, rows)), "--loads", "1,2",
               "--jobs", "1", "--no-plots", "--no-progress", "--out", str(tmp_path / "out"),
               "--policies", "least_completion,nearest"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "sessions.csv: 2 sessions, 3 rows skipped: row 4: unknown charge point" in out.out
    with open(tmp_path / "out" / "simulation.csv", encoding="utf-8") as f:
        got = list(csv.DictReader(f))
    assert len(got) == 4 and {int(r["cars"]) for r in got} == {2, 4}


def many_sessions(tmp_path, n=1000):
    """n sessions at DC-1, one a minute from 6:00."""
    rows = [["DC-1", f"3/1/2024 {6 + i // 60 % 18}:{i % 60:02d}", "", "", "", "12", "", ""] for i in range(n)]
    return replay.read_log(write(tmp_path, HEADER, rows), STATIONS)


def test_plans_apply_the_no_show_and_no_app_shares_from_the_seed(tmp_path):
    models = evmodels.load_models()
    log = many_sessions(tmp_path)
    plans = replay.plans(log, models, (), 0.8, seed=3, copies=2.0, no_show=0.2, no_app=0.3)
    n = len(plans)
    assert n == 2000
    # binomial spread for n = 2000: sd about 18 and 20 cars; 5 sd of tolerance
    assert abs(sum(p.no_show for p in plans) - 0.2 * n) < 90
    assert abs(sum(not p.app for p in plans) - 0.3 * n) < 100
    assert replay.plans(log, models, (), 0.8, seed=3, copies=2.0, no_show=0.2, no_app=0.3) == plans
    other = replay.plans(log, models, (), 0.8, seed=4, copies=2.0, no_show=0.2, no_app=0.3)
    assert [p.no_show for p in other] != [p.no_show for p in plans]
    # the shares change only who comes and who uses the app, not the sessions' cars
    plain = replay.plans(log, models, (), 0.8, seed=3, copies=2.0)
    strip = [(p.car, p.appear_s, p.ask_at, p.model, p.soc_ask, p.target_soc, p.dwell_s) for p in plans]
    assert strip == [(p.car, p.appear_s, p.ask_at, p.model, p.soc_ask, p.target_soc, p.dwell_s) for p in plain]


def test_a_replayed_driver_comes_and_uses_the_app_unless_told_otherwise(tmp_path):
    log = many_sessions(tmp_path)
    plans = replay.plans(log, evmodels.load_models(), (), 0.8, seed=3)
    assert replay.DEFAULT_NO_SHOW == 0.0  # a log holds only sessions that happened
    assert not any(p.no_show for p in plans) and all(p.app for p in plans)


@pytest.mark.parametrize("share, message", [({"no_show": 1.5}, "no_show 1.5 is not a share"),
                                            ({"no_app": -0.1}, "no_app -0.1 is not a share"),
                                            ({"no_show": float("nan")}, "no_show nan is not a share")])
def test_shares_outside_0_and_1_are_refused(tmp_path, share, message):
    log = replay.read_log(write(tmp_path, HEADER, ROWS), STATIONS)
    with pytest.raises(replay.ReplayError, match=message):
        replay.plans(log, evmodels.load_models(), (), 0.8, seed=1, **share)


@pytest.mark.parametrize("flags, shares", [(["--no-show", "0.3", "--no-app", "0.4"], (0.3, 0.4)),
                                           ([], (0.0, 0.0))])
def test_the_cli_replays_the_same_cars_for_every_policy_with_its_shares(tmp_path, capsys, monkeypatch,
                                                                         flags, shares):
    seen: dict[str, list] = {}
    simulate = loop.simulate

    def record(cfg, stations, plans, *rest, **kw):
        seen[cfg.policy] = plans
        return simulate(cfg, stations, plans, *rest, **kw)

    monkeypatch.setattr(loop, "simulate", record)
    st = tmp_path / "st.json"
    st.write_text('{"v": 1, "stations": [{"id": "DC-1", "lat": 37.4425, "lon": -122.1630, '
                  '"slots": [{"power_kw": 50.0, "dc": true}, {"power_kw": 50.0, "dc": true}]}]}')
    rows = [["DC-1", f"3/1/2024 {6 + i // 4}:{i % 4 * 15:02d}", "", "", "", "10", "", ""] for i in range(60)]
    rc = main(["--stations", str(st), "--replay", str(write(tmp_path, HEADER, rows)), "--loads", "1",
               "--jobs", "1", "--no-plots", "--no-progress", "--out", str(tmp_path / "out"), "--seed", "5",
               "--policies", "least_completion,nearest", *flags])
    assert rc == 0, capsys.readouterr().err
    assert set(seen) == {"least_completion", "nearest"}
    plans = seen["least_completion"]
    assert seen["nearest"] == plans and len(plans) == 60
    log = replay.read_log(tmp_path / "sessions.csv", STATIONS)
    expected = replay.plans(log, evmodels.load_models(), (), 0.8, seed=5, no_show=shares[0], no_app=shares[1])
    assert [(p.no_show, p.app) for p in plans] == [(p.no_show, p.app) for p in expected]
    if shares[0]:
        assert 0 < sum(p.no_show for p in plans) < 60 and 0 < sum(not p.app for p in plans) < 60
