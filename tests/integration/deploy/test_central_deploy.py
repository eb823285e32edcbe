"""Central's configuration file and deployment files: the loader's errors, the example
config, the systemd unit (systemd-analyze verify, as the gateway's), the console script and
the broker-config command."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from harness import ROOT
from harness.systemd import about, exposure, verify
from recarga.central import cli
from recarga.central import config as C

UNIT = ROOT / "deploy" / "recarga-central.service"
EXAMPLE = ROOT / "deploy" / "central.example.toml"
EXEC = "/opt/recarga/.venv/bin/recarga-central"
STATE_DIR = Path("/var/lib/recarga-central")

MINIMAL = """instance = "c1"
database = "central.db"
[regions.a]
broker_host = "10.0.0.1"
[regions.b]
broker_host = "10.0.0.2"
neighbours = ["a"]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "central.toml"
    p.write_text(text)
    return p


def test_minimal_config_and_defaults(tmp_path: Path):
    cfg = C.load(write(tmp_path, MINIMAL))
    assert cfg.instance == "c1" and cfg.database == tmp_path / "central.db"
    assert cfg.regions["b"].neighbours == ("a",) and cfg.regions["a"].broker_port == 1883
    assert cfg.broker.username == "central-c1" and cfg.broker.session_expiry_s == 120
    assert cfg.overflow.max_attempts == 2


@pytest.mark.parametrize("text, error", [
    (MINIMAL + "colour = 'red'\n", "unknown key 'colour'"),
    (MINIMAL.replace('instance = "c1"', 'instance = "c 1"'), "instance"),
    (MINIMAL.replace('instance = "c1"\n', ""), "missing required key 'instance'"),
    (MINIMAL + "[overflow]\nmax_attempts = 0\n", "max_attempts"),
    (MINIMAL + "[overflow]\npolicy = 'random'\n", "policy 'random' unknown"),
    (MINIMAL + "[overflow]\nconfirm_s = 'long'\n", "wrong type"),
    (MINIMAL + "[regions.central]\nbroker_host = 'x'\n", "reserved"),
    (MINIMAL.replace('neighbours = ["a"]', 'neighbours = ["z"]'), "not another configured region"),
    (MINIMAL.replace('broker_host = "10.0.0.1"', 'broker_port = 1'), "missing broker_host"),
    ('instance = "c1"\ndatabase = "x.db"\n', "at least one region"),
    (MINIMAL + "[broker]\nport = 70000\n", "port must be 1..65535"),
    (MINIMAL + "[broker]\npassword_file = 'nope'\n", "password_file"),
    (MINIMAL + "[radio]\nx = 1\n", "unknown section [radio]"),
    ("instance = ", "config file"),
    ("tick_s = nan\n" + MINIMAL, "tick_s must be a finite number, not nan"),
    ("tick_s = 0\n" + MINIMAL, "tick_s = 0 outside 0.01..60"),
    ("tick_s = 3600\n" + MINIMAL, "tick_s = 3600 outside 0.01..60"),
    (MINIMAL + "[overflow]\nmax_attempts = 500\n", "max_attempts = 500 outside 1..20"),
    (MINIMAL + "[overflow]\nsummary_max_age_s = 0\n", "summary_max_age_s = 0 outside 1..86400"),
    (MINIMAL + "[overflow]\nconfirm_s = 0\n", "confirm_s = 0 outside 1..3600"),
    (MINIMAL + "[overflow]\nrelay_s = 1e9\n", "relay_s = 1000000000.0 outside 0..60"),
    (MINIMAL + "[selection]\nroad_factor = 0.5\n", "road_factor = 0.5 outside 1..5"),
    (MINIMAL + "[selection]\nnearest_k = 0\n", "nearest_k = 0 outside 1..100"),
    (MINIMAL + "[broker]\nkeepalive = 1\n", "keepalive = 1 outside 5..3600"),
    (MINIMAL + "[broker]\nsession_expiry_s = 0\n", "session_expiry_s = 0 outside 10..86400"),
    (MINIMAL + "[broker]\nreconnect_min_s = 60\nreconnect_max_s = 10\n", "reconnect_min_s must not be above"),
    (MINIMAL + "[region]\nbroker_host = 'x'\n", "unknown section [region]"),
    (MINIMAL + "[overflow]\nconfirm_s = inf\n", "confirm_s must be a finite number, not inf"),
    ("log_level = 'LOUD'\n" + MINIMAL, "log_level 'LOUD' unknown"),
])
def test_bad_config_is_refused_with_a_clear_message(tmp_path: Path, text: str, error: str):
    with pytest.raises(C.ConfigError, match=error.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        C.load(write(tmp_path, text))


def test_check_config_command(tmp_path: Path, capsys):
    assert cli.main(["check-config", "--config", str(write(tmp_path, MINIMAL))]) == 0
    assert "ok: instance c1, 2 regions (a, b)" in capsys.readouterr().out
    assert cli.main(["check-config", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_example_config_is_accepted_and_writes_only_to_the_state_dir(tmp_path: Path):
    raw = tomllib.loads(EXAMPLE.read_text())
    password_file = Path(raw["broker"]["password_file"])
    stand_in = tmp_path / "central.password"
    stand_in.write_text("secret\n")
    cfg = C.load(write(tmp_path, EXAMPLE.read_text().replace(str(password_file), str(stand_in))))
    assert cfg.broker.password == "secret" and cfg.database.parent == STATE_DIR
    assert set(cfg.regions) == set(raw["regions"])


def test_exec_start_is_the_packaged_cli():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[Path(EXEC).name] == "recarga.central.cli:main"
    assert f"ExecStart={EXEC} run --config /etc/recarga/central.toml" in UNIT.read_text()
    done = subprocess.run([sys.executable, "-m", "recarga.central.cli", "run", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--config" in done.stdout, done.stderr


MAX_EXPOSURE = 2.0  # of systemd-analyze security's 0 (locked down) to 10 (unprotected)


@pytest.mark.needs_systemd_analyze
def test_central_unit_passes_systemd_analyze_verify_and_is_hardened(tmp_path: Path):
    program = tmp_path / "root" / EXEC.lstrip("/")
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    unit = tmp_path / "units" / UNIT.name
    unit.parent.mkdir()
    unit.write_text(UNIT.read_text().replace(f"ExecStart={EXEC} ", f"ExecStart={program} "))
    rc, output = verify(unit)
    assert rc == 0, output
    assert about(unit, output) == [], output
    assert exposure(unit) <= MAX_EXPOSURE


def test_central_unit_is_notify_with_a_watchdog():
    """Type=notify: ready when central says READY=1 (tests/integration/deploy/test_service_notify.py
    shows when it does); killed and restarted when its worker stops petting the watchdog."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isalpha():
            settings.setdefault(key, []).append(value)
    assert settings["Type"] == ["notify"] and settings["NotifyAccess"] == ["main"]
    assert settings["WatchdogSec"] == ["30s"] and settings["Restart"] == ["on-failure"]


def test_broker_config_command_writes_the_central_broker_dir(tmp_path: Path, capsys):
    pw = tmp_path / "central.password"
    pw.write_text("c-secret\n")
    out = tmp_path / "broker"
    assert cli.main(["broker-config", "--dir", str(out), "--port", "18830", "--instance", f"c1:{pw}",
                     "--instance", f"c2:{pw}", "--region", "a:a-secret", "--region", "b:b-secret", "--run-as", "root", "--log-stdout"]) == 0
    conf = Path(capsys.readouterr().out.strip())
    assert conf == (out / "recarga-central.conf").resolve()
    assert "listener 18830 127.0.0.1" in conf.read_text() and "log_dest stdout" in conf.read_text()
    acl = (out / "acl").read_text()
    assert "user bridge-a" in acl and "user bridge-b" in acl
    assert "user central-c1" in acl and "user central-c2" in acl  # a user per instance
    passwd = (out / "passwd").read_text()
    assert "bridge-a:" in passwd and "a-secret" not in passwd
    assert cli.main(["broker-config", "--dir", str(out), "--instance", f"c1:{pw}",
                     "--region", "central:x"]) == 2
