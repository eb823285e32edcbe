"""The deployment files: the systemd unit passes systemd's own checks, its command line matches
the package, and the example configuration is accepted by the gateway's config loader.

`systemd-analyze verify` also checks that ExecStart's program exists and is executable. The
program, /opt/recarga/.venv/bin/recarga-gateway, exists only on an installed gateway, so the
test verifies a copy of the unit whose ExecStart points at the same relative path inside a
temporary directory (an executable placeholder there). Everything else in the unit is verified
unchanged, and test_exec_start_is_the_packaged_cli checks separately that the program name is
the console script pyproject.toml installs and that its `run --config` arguments exist.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from harness import ROOT
from harness.systemd import about, exposure, verify
from recarga.core import resources
from recarga.gateway import config as gateway_config

UNIT = ROOT / "deploy" / "recarga-gateway.service"
EXAMPLE = ROOT / "deploy" / "gateway.example.toml"
EXEC = "/opt/recarga/.venv/bin/recarga-gateway"
EXEC_LINE = f"ExecStart={EXEC} run --config /etc/recarga/gateway.toml"
STATE_DIR = Path("/var/lib/recarga")


def unit_with_local_exec(tmp_path: Path, text: str | None = None) -> Path:
    """A copy of the unit (same file name) whose ExecStart program lives under tmp_path."""
    text = UNIT.read_text() if text is None else text
    assert text.count(EXEC_LINE) == 1, f"{UNIT.name} must contain exactly one {EXEC_LINE!r}"
    program = tmp_path / "root" / EXEC.lstrip("/")
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\nexit 0\n")  # placeholder: verify only checks it is executable
    program.chmod(0o755)
    copy = tmp_path / "units" / UNIT.name
    copy.parent.mkdir()
    copy.write_text(text.replace(f"ExecStart={EXEC} ", f"ExecStart={program} "))
    return copy


@pytest.mark.needs_systemd_analyze
def test_gateway_unit_passes_systemd_analyze_verify(tmp_path: Path):
    unit = unit_with_local_exec(tmp_path)
    rc, output = verify(unit)
    assert rc == 0, output
    assert about(unit, output) == [], output


@pytest.mark.needs_systemd_analyze
def test_verify_check_catches_a_broken_unit(tmp_path: Path):
    """The check above can fail: a misspelt key and a missing program are reported."""
    text = UNIT.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    unit = unit_with_local_exec(tmp_path, text)
    rc, output = verify(unit)
    assert "NoNewPrivilege" in "\n".join(about(unit, output)), output
    (tmp_path / "root" / EXEC.lstrip("/")).unlink()
    rc, output = verify(unit)
    assert rc != 0 and "is not executable" in output, output


MAX_EXPOSURE = 2.0  # of systemd-analyze security's 0 (locked down) to 10 (unprotected)
# the unit's hardening, without which the exposure is above MAX_EXPOSURE (test below)
HARDENING = ("ProtectSystem=strict", "PrivateDevices=yes", "CapabilityBoundingSet=", "SystemCallFilter=",
             "RestrictNamespaces=yes", "ProtectKernelTunables=yes", "ProtectKernelModules=yes")


@pytest.mark.needs_systemd_analyze
def test_gateway_unit_is_hardened(tmp_path: Path):
    """systemd's exposure level for the unit is at most MAX_EXPOSURE."""
    level = exposure(unit_with_local_exec(tmp_path))
    assert level <= MAX_EXPOSURE


@pytest.mark.needs_systemd_analyze
def test_exposure_check_catches_a_weaker_unit(tmp_path: Path):
    """The check above can fail: the same unit without its main hardening lines scores higher."""
    text = "\n".join(line for line in UNIT.read_text().splitlines() if not line.startswith(HARDENING))
    assert exposure(unit_with_local_exec(tmp_path, text + "\n")) > MAX_EXPOSURE


def test_unit_is_notify_with_a_watchdog():
    """Type=notify: ready when the gateway says READY=1 (tests/integration/deploy/test_service_notify.py
    shows when it does); killed and restarted when its loop stops petting the watchdog."""
    s = unit_settings()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"] == ["30s"]  # pets every 15 s, whatever tick_s: the loop never waits longer
    assert s["Restart"] == ["on-failure"] and s["RestartPreventExitStatus"] == ["78"]
    assert s["TimeoutStartSec"] == ["10min"]


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            settings.setdefault(m[1], []).append(m[2])
    return settings


def test_unit_settings_asked_for():
    s = unit_settings()
    assert s["User"] == ["recarga"]
    assert s["StateDirectory"] == ["recarga"]
    assert s["Restart"] == ["on-failure"]
    assert "mosquitto.service" in s["After"][0].split() and "mosquitto.service" in s["Wants"][0].split()
    assert s["NoNewPrivileges"] == ["yes"] and s["ProtectSystem"] == ["strict"]
    assert s["ReadWritePaths"] == [str(STATE_DIR)]


def test_exec_start_is_the_packaged_cli():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert Path(EXEC).name in scripts, "ExecStart must run a console script pyproject.toml installs"
    assert scripts[Path(EXEC).name] == "recarga.commands:gateway"
    done = subprocess.run([sys.executable, "-m", "recarga.commands", "run", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--config" in done.stdout, done.stderr


def test_example_config_is_accepted_and_writes_only_to_the_state_dir(tmp_path: Path):
    raw = tomllib.loads(EXAMPLE.read_text())
    password_file = Path(raw["broker"]["password_file"])
    assert password_file.is_absolute() and password_file.parent == Path("/etc/recarga")
    # The real password file exists only on the gateway: load a copy that points at a stand-in.
    copy = tmp_path / "gateway.toml"
    stand_in = tmp_path / "broker.password"
    stand_in.write_text("secret\n")
    copy.write_text(EXAMPLE.read_text().replace(str(password_file), str(stand_in)))
    cfg = gateway_config.load(copy)
    assert cfg.engine.region == raw["region"]
    assert cfg.broker.password == "secret"
    assert cfg.engine.hold_s == raw["reservations"]["hold_s"]
    # ProtectSystem=strict: the database (and its -wal/-shm files) must be in the state dir.
    assert cfg.database.parent == STATE_DIR
    # The example sets no station file: the gateway loads the register shipped with the package.
    assert "stations" not in raw
    assert cfg.stations == resources.BERLIN_STATIONS and cfg.stations.is_file()
