"""The package outside the checkout.

A wheel built with `pip wheel . --no-deps` from a copy of the working tree is installed (with
its `sim` extra, from the package index pip is configured with) into a fresh virtualenv without
the system's or the checkout's packages. Its commands then run from a temporary directory: the
example configuration the package prints checks out once its password file exists, and the
city simulation runs on the data the package ships. The virtualenv (a few hundred MB) is
removed at the end of the module.
"""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import ROOT
from recarga.core.stations import load_stations

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(900)]

# not part of a source tree: the checkout's virtualenv, git, caches, build and run outputs
TOP_LEVEL_SKIPPED = {".venv", ".git", "build", "run", "dist"}
EXAMPLE_PASSWORD_FILE = "/etc/recarga/broker.password"


def _skipped(directory: str, names: list[str]) -> set[str]:
    top = Path(directory) == ROOT
    return {n for n in names if n == "__pycache__" or n.endswith(".egg-info")
            or (top and (n in TOP_LEVEL_SKIPPED or n.startswith(".") and Path(directory, n).is_dir()))}


def _env() -> dict[str, str]:
    """This process's environment without what would point a Python at another tree."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def run(argv: list[str | Path], cwd: Path, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check:
        assert done.returncode == 0, f"{argv} exit {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@dataclass(frozen=True)
class Installed:
    """The wheel, the virtualenv it is installed in, and the directory the commands run in."""

    wheel: Path
    venv: Path
    work: Path

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    tmp = tmp_path_factory.mktemp("packaging")
    try:
        src, dist, venv, work = tmp / "src", tmp / "dist", tmp / "venv", tmp / "work"
        shutil.copytree(ROOT, src, symlinks=True, ignore=_skipped)
        run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "-w", dist], cwd=tmp, timeout=600)
        (wheel,) = dist.glob("recarga-*.whl")
        shutil.rmtree(src)
        # the checkout's interpreter, but venv builds on the base installation: no .venv packages
        run([sys.executable, "-m", "venv", venv], cwd=tmp, timeout=120)
        run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", f"{wheel}[sim]"], cwd=tmp, timeout=600)
        work.mkdir()
        yield Installed(wheel, venv, work)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_wheel_ships_the_data_the_templates_and_the_firmware(installed: Installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for name in ("recarga/shipped/data/berlin_charging_stations_bnetza.csv", "recarga/shipped/data/ev_models_open_ev_data.json",
                 "recarga/shipped/data/SOURCES.md",  # the data's sources and licences travel with it
                 "recarga/shipped/deploy/gateway.example.toml", "recarga/shipped/deploy/central.example.toml",
                 "recarga/shipped/deploy/recarga-gateway.service", "recarga/shipped/deploy/recarga-central.service",
                 "recarga/shipped/deploy/mosquitto/recarga-gateway.conf.template",
                 "recarga/shipped/deploy/mosquitto/recarga-central.conf.template",
                 "recarga/shipped/boards/car/config.json", "recarga/shipped/boards/station/config.json",
                 "recarga/shipped/boards/virtual/vendor/umqtt/simple.py", "recarga/commands.py"):
        assert name in names, name
    for folder in ("lib", "car", "station"):  # all of the firmware recarga-device flashes
        repo = {p.name for p in (ROOT / "firmware" / folder).glob("*.py")}
        shipped = {Path(n).name for n in names if re.fullmatch(rf"recarga/shipped/firmware/{folder}/[^/]+\.py", n)}
        assert repo and shipped == repo, folder
    modules = {n.split("/")[1] for n in names if n.startswith("recarga/") and n.count("/") > 1}
    assert {"core", "gateway", "central", "devices", "simulation"} <= modules
    assert not [n for n in names if n.split("/")[0] in ("harness", "tests", "bench", "demo")]


def test_it_runs_from_the_virtualenv_not_the_checkout(installed: Installed):
    probe = "import recarga, importlib.util as u; print(recarga.__file__); print(u.find_spec('harness'))"
    done = run([installed.bin("python"), "-c", probe], cwd=installed.work, timeout=60)
    where, harness = done.stdout.split()
    assert Path(where).is_relative_to(installed.venv), where
    assert harness == "None"  # the checkout's test harness is out of sight


def test_the_printed_example_configuration_checks_out_once_its_password_file_exists(installed: Installed):
    example = run([installed.bin("recarga-gateway"), "example-config"], cwd=installed.work, timeout=60).stdout
    assert example == (ROOT / "deploy" / "gateway.example.toml").read_text()
    unit = run([installed.bin("recarga-gateway"), "systemd-unit"], cwd=installed.work, timeout=60).stdout
    assert unit == (ROOT / "deploy" / "recarga-gateway.service").read_text()
    # The password file is the one thing a fresh machine lacks: here it lives next to the config.
    password_file = installed.work / "broker.password"
    assert example.count(EXAMPLE_PASSWORD_FILE) == 1
    config = installed.work / "gateway.toml"
    config.write_text(example.replace(EXAMPLE_PASSWORD_FILE, str(password_file)))
    check = [installed.bin("recarga-gateway"), "check-config", "--config", config]

    missing = run(check, cwd=installed.work, timeout=60, check=False)
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "password_file" in missing.stderr and str(password_file) in missing.stderr, missing.stderr
    assert "Traceback" not in missing.stderr

    password_file.write_text("secret\n")
    ok = run(check, cwd=installed.work, timeout=120).stdout
    berlin = len(load_stations(ROOT / "data" / "berlin_charging_stations_bnetza.csv"))
    m = re.match(r"ok: region berlin, (\d+) stations at \d+ sites from (\S+), ", ok)
    assert m, ok
    # no stations file set: the register shipped inside the installed package
    assert int(m[1]) == berlin and Path(m[2]).is_relative_to(installed.venv), ok
    assert Path(m[2]).name == "berlin_charging_stations_bnetza.csv"


def test_the_city_simulation_runs_on_the_shipped_data(installed: Installed):
    done = run([installed.bin("recarga-gateway"), "simulate", "--quick"], cwd=installed.work, timeout=600)
    lines = done.stdout.strip().splitlines()
    assert re.match(r"Berlin: \d+ stations, \d+ slots within 3 km of the centre; loads 1, 2, 4 ", lines[0]), lines[0]
    assert lines[-1].startswith("mean wait vs best baseline at high load: "), lines[-1]
    out = installed.work / "run" / "simulation"
    with open(out / "simulation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 4  # three loads, four policies
    for png in ("wait_vs_utilisation.png", "station_load_map.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_other_commands_start_and_find_their_files(installed: Installed):
    for script in ("recarga-central", "recarga-device"):
        assert "usage:" in run([installed.bin(script), "--help"], cwd=installed.work, timeout=60).stdout
    probe = ("from recarga.core import broker_config as b; from recarga.devices import flash, provision\n"
             "conf = b.render_conf('berlin', password_file='pw', acl_file='acl', port=1999)\n"
             "print(conf.count('listener 1999 127.0.0.1'), conf.count('acl_file acl'))\n"
             "print(*[f'{i.dest}={i.src}' for i in flash.plan('car', 'config.json', with_umqtt=True)])\n"
             "print(provision.load_template('station')[1])\n")
    conf, plan, template = run([installed.bin("python"), "-c", probe], cwd=installed.work,
                               timeout=60).stdout.splitlines()
    assert conf == "1 1"  # the gateway broker's template, filled in
    sent = dict(item.split("=") for item in plan.split())
    firmware = {f"lib/{p.name}" for p in (ROOT / "firmware" / "lib").glob("*.py")}
    firmware |= {p.name for p in (ROOT / "firmware" / "car").glob("*.py")}
    assert set(sent) == firmware | {"lib/umqtt/simple.py", "config.json"}
    assert all(Path(src).is_relative_to(installed.venv) for dest, src in sent.items() if dest != "config.json")
    assert Path(template).is_relative_to(installed.venv) and template.endswith("boards/station/config.json")
