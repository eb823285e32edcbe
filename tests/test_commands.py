"""recarga-gateway's dispatch (recarga/commands.py): the gateway's commands and `simulate` on
one command line, while the gateway's own modules never import the simulation."""
from __future__ import annotations

import pkgutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

import recarga.gateway
from harness import ROOT
from recarga.commands import gateway


def test_help_lists_the_gateway_s_commands_and_simulate(capsys):
    with pytest.raises(SystemExit) as exit:
        gateway(["--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: recarga-gateway")
    for command in ("run", "reservations", "check-config", "example-config", "systemd-unit", "simulate"):
        assert f"\n    {command} " in out, command


def test_simulate_s_help_names_no_city(capsys):
    with pytest.raises(SystemExit):
        gateway(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help lines
    entry = text.split(" simulate ", 1)[1].split(" options:", 1)[0]
    assert "any city" in entry and "Berlin" not in entry


@pytest.mark.parametrize("command,shipped", [("example-config", "gateway.example.toml"),
                                             ("systemd-unit", "recarga-gateway.service")])
def test_the_deployment_files_are_printed_as_shipped(capsys, command, shipped):
    assert gateway([command]) == 0
    assert capsys.readouterr().out == (ROOT / "deploy" / shipped).read_text()


def test_simulate_reports_a_bad_input_as_the_gateway_s_commands_do(capsys, tmp_path):
    rc = gateway(["simulate", "--stations", str(tmp_path / "absent.csv"), "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert err == f"simulate: stations file {tmp_path / 'absent.csv'}: No such file or directory\n"


def test_simulate_options_are_the_simulation_s(capsys):
    with pytest.raises(SystemExit) as exit:
        gateway(["simulate", "--policies", "coin_toss"])
    assert exit.value.code == 2
    assert "unknown policy ['coin_toss']" in capsys.readouterr().err


def test_the_gateway_s_modules_do_not_import_the_simulation():
    modules = [f"recarga.gateway.{m.name}" for m in pkgutil.iter_modules(recarga.gateway.__path__)]
    assert "recarga.gateway.cli" in modules and "recarga.gateway.service" in modules
    probe = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
             "print(sorted(m for m in sys.modules if m.startswith('recarga.simulation')))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("script", ["recarga-gateway", "recarga-central", "recarga-device"])
def test_every_command_says_its_version_and_what_config_is(script):
    out = subprocess.run([str(Path(sys.executable).with_name(script)), "--version"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.strip() == f"{script} {version('recarga')}"
    if script != "recarga-device":
        help_text = subprocess.run([str(Path(sys.executable).with_name(script)), "check-config", "--help"],
                                   capture_output=True, text=True, timeout=60, check=True).stdout
        assert "--config FILE" in help_text and "configuration file" in help_text
