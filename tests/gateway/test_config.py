"""Gateway configuration: defaults, and clear errors for bad files."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness import ROOT
from recarga.core import resources
from recarga.core.model import SlotMeta, StationMeta
from recarga.core.stations import dump_stations_json
from recarga.gateway import config as C

BASE = 'region = "berlin"\ndatabase = "gw.db"\nstations = "st.json"\n'


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gateway.toml"
    p.write_text(text)
    return p


def test_log_level_in_any_case(tmp_path):
    assert C.load(write(tmp_path, BASE + 'log_level = "debug"\n')).log_level == "DEBUG"


def test_minimal_config_gets_defaults(tmp_path):
    cfg = C.load(write(tmp_path, BASE))
    assert cfg.engine.region == "berlin" and cfg.engine.policy == "least_completion"
    assert cfg.engine.hold_s == 120 and cfg.engine.grace_s == 600 and cfg.engine.max_wait_s == 1800
    assert cfg.database == tmp_path / "gw.db" and cfg.synchronous == "FULL"
    assert cfg.broker.port == 1883
    assert cfg.stations == tmp_path / "st.json"  # relative to the config file
    assert cfg.site_distance_m == 50.0


def test_site_distance_is_set_at_the_top_level(tmp_path):
    assert C.load(write(tmp_path, BASE + "site_distance_m = 120\n")).site_distance_m == 120.0
    assert C.load(write(tmp_path, BASE + "site_distance_m = 0\n")).site_distance_m == 0.0


def test_without_a_station_file_the_shipped_berlin_register_is_loaded(tmp_path):
    cfg = C.load(write(tmp_path, 'region = "berlin"\ndatabase = "gw.db"\n'))
    assert cfg.stations == resources.BERLIN_STATIONS
    assert cfg.stations.read_bytes() == (ROOT / "data" / "berlin_charging_stations_bnetza.csv").read_bytes()


def test_overflow_section_off_by_default_with_the_documented_defaults(tmp_path):
    assert not C.load(write(tmp_path, BASE)).overflow.enabled
    o = C.load(write(tmp_path, BASE + "[overflow]\nenabled = true\nwait_limit_s = 600\n")).overflow
    assert o.enabled and o.wait_limit_s == 600 and o.answer_within_s == 5
    assert o.summary_min_interval_s == 5 and o.summary_refresh_s == 60


def test_sections_and_password_file(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    cfg = C.load(write(tmp_path, BASE + '[broker]\nport = 1999\npassword_file = "pw"\n'
                                        '[reservations]\nhold_s = 30\n[selection]\npolicy = "nearest"\nroad_factor = 1.5\n'))
    assert cfg.broker.password == "s3cret" and cfg.broker.port == 1999
    assert cfg.engine.hold_s == 30 and cfg.engine.policy == "nearest"
    assert cfg.engine.selection.road_factor == 1.5


@pytest.mark.parametrize("text,message", [
    ('region = "berlin"\n', "missing required key 'database'"),
    (BASE + "colour = 1\n", "unknown key 'colour'"),
    (BASE + "[brokr]\nport = 1\n", "unknown section [brokr]"),
    (BASE + '[broker]\nport = "x"\n', "port has the wrong type"),
    (BASE + "[broker]\nport = 70000\n", "port must be 1..65535"),
    (BASE + "[reservations]\nhold_s = -1\n", "hold_s must not be negative"),
    (BASE + '[selection]\npolicy = "random"\n', "policy 'random' unknown"),
    (BASE.replace("berlin", "bad/region"), "bad region id"),
    (BASE + 'synchronous = "OFF"\n', "synchronous must be FULL or NORMAL"),
    ("region = \n", "gateway.toml"),
    (BASE + '[broker]\npassword_file = "missing"\n', "password_file"),
    (BASE + "[overflow]\nenabled = 1\n", "enabled has the wrong type"),
    (BASE + "[overflow]\nwait_limit_s = true\n", "wait_limit_s has the wrong type"),
    (BASE + "[overflow]\nanswer_within_s = 12\n", "answer_within_s must be above 0 and below 10"),
    (BASE + "[overflow]\nanswer_within_s = 0\n", "answer_within_s must be above 0"),
    (BASE + "[overflow]\nsummary_min_interval_s = 90\n", "summary_min_interval_s must be above 0 and at most"),
    (BASE + "[overflow]\nlimit = 5\n", "unknown key 'limit' at [overflow]"),
    (BASE + "[overfow]\nenabled = true\n", "unknown section [overfow]; allowed: broker, overflow"),
    # TOML allows nan and inf: a hold that never expires, a loop that never ticks
    (BASE + "tick_s = nan\n", "tick_s must be a finite number, not nan"),
    (BASE + "tick_s = inf\n", "tick_s must be a finite number, not inf"),
    (BASE + "tick_s = 0\n", "tick_s = 0 outside 0.01..60"),
    # bounds a region can run with
    (BASE + "[reservations]\nhold_s = 0\n", "hold_s = 0 outside 1..86400"),
    (BASE + "[reservations]\nrequest_memory_s = 1\n", "request_memory_s = 1 outside 60..2592000"),
    (BASE + "[reservations]\nretry_max_s = 7200\n", "retry_max_s = 7200 outside 1..3600"),
    (BASE + "[reservations]\nretry_min_s = 600\nretry_max_s = 60\n", "retry_min_s must not be above retry_max_s"),
    (BASE + "[selection]\nroad_factor = 0.5\n", "road_factor = 0.5 outside 1..5"),
    (BASE + "[selection]\nsafety_margin_soc = 0.9\n", "safety_margin_soc = 0.9 outside 0..0.5"),
    (BASE + "[selection]\nnearest_k = 0\n", "nearest_k = 0 outside 1..100"),
    (BASE + "[broker]\nkeepalive = 1\n", "keepalive = 1 outside 5..3600"),
    (BASE + "[broker]\nreconnect_min_s = 60\nreconnect_max_s = 30\n", "reconnect_min_s must not be above"),
    (BASE + "[reservations]\nhold_s = nan\n", "hold_s must be a finite number"),
    (BASE + "[selection]\nspeed_kmh = -inf\n", "speed_kmh must be a finite number"),
    (BASE + 'log_level = "BOGUS"\n', "log_level 'BOGUS' unknown; one of DEBUG, INFO"),
    (BASE + "site_distance_m = 600\n", "site_distance_m = 600 outside 0..500"),
    (BASE + "site_distance_m = -1\n", "site_distance_m must not be negative"),
    (BASE + 'site_distance_m = "50"\n', "site_distance_m has the wrong type"),
])
def test_bad_config_is_refused_with_a_clear_message(tmp_path, text, message):
    with pytest.raises(C.ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        C.load(write(tmp_path, text))


def test_cli_reports_config_errors_without_a_traceback(tmp_path):
    p = write(tmp_path, BASE + "colour = 1\n")
    out = subprocess.run([sys.executable, "-m", "recarga.gateway.cli", "check-config", "--config", str(p)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "unknown key 'colour'" in out.stderr and "Traceback" not in out.stderr


def test_cli_check_config_loads_berlin(tmp_path):
    data = ROOT / "data" / "berlin_charging_stations_bnetza.csv"
    p = write(tmp_path, f'region = "berlin"\ndatabase = "gw.db"\nstations = "{data}"\n')
    out = subprocess.run([sys.executable, "-m", "recarga.gateway.cli", "check-config", "--config", str(p)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "4528 stations at " in out.stdout


@pytest.mark.parametrize(("setting", "sites"), [("", "1 site"), ("site_distance_m = 0\n", "2 sites")])
def test_cli_check_config_groups_the_stations_into_sites_at_the_configured_distance(tmp_path, setting, sites):
    ac = (SlotMeta(22.0, False),)
    # two units of one operator about 20 m apart
    dump_stations_json([StationMeta("u1", 52.52, 13.405, ac, operator="Op"),
                        StationMeta("u2", 52.52018, 13.405, ac, operator="Op")], tmp_path / "st.json")
    p = write(tmp_path, BASE + setting)
    out = subprocess.run([sys.executable, "-m", "recarga.gateway.cli", "check-config", "--config", str(p)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"2 stations at {sites} from" in out.stdout


def test_retry_bounds_reach_the_engine(tmp_path):
    cfg = C.load(write(tmp_path, BASE + "[reservations]\nretry_min_s = 5\nretry_max_s = 30\n"))
    assert (cfg.engine.retry_min_s, cfg.engine.retry_max_s) == (5, 30)
