"""TLS settings: the gateway's and central's [broker] tls_ca, and the brokers' TLS listeners and
bridges as recarga.core.broker_config, recarga.core.central_broker and recarga.core.bridge
write them (their behaviour with a real Mosquitto is in tests/integration/gateway/test_tls.py
and tests/integration/central/test_tls.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from recarga.central import config as CC
from recarga.core import broker_config as bc
from recarga.core import certs
from recarga.core.bridge import BridgeSettings, render_bridge
from recarga.core.broker_dir import CONF_NAME, BrokerConfigError
from recarga.core.central_broker import write_central_broker_dir
from recarga.core.config_file import ConfigError
from recarga.gateway import cli as gateway_cli
from recarga.gateway import config as GC

GATEWAY = 'region = "berlin"\ndatabase = "gw.db"\nstations = "st.json"\n[broker]\n'
CENTRAL = 'instance = "c1"\ndatabase = "c.db"\n[regions.a]\nbroker_host = "a.example"\n[broker]\n'


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    files = certs.make_ca(tmp_path / "tls")
    certs.make_server_cert(tmp_path / "tls", "broker", ["broker.example", "127.0.0.1"])
    return files.cert


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "svc.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(("load", "base"), [(GC.load, GATEWAY), (CC.load, CENTRAL)], ids=["gateway", "central"])
def test_tls_ca_is_relative_to_the_config_and_makes_8883_the_default_port(tmp_path, ca, load, base):
    cfg = load(write(tmp_path, base + 'host = "broker.example"\ntls_ca = "tls/ca.crt"\n'))
    assert cfg.broker.tls and cfg.broker.tls_ca == tmp_path / "tls" / "ca.crt" and cfg.broker.port == 8883
    cfg = load(write(tmp_path, base + 'tls_ca = "tls/ca.crt"\nport = 18883\n'))
    assert cfg.broker.port == 18883
    plain = load(write(tmp_path, base))
    assert not plain.broker.tls and plain.broker.port == 1883


@pytest.mark.parametrize(("load", "base"), [(GC.load, GATEWAY), (CC.load, CENTRAL)], ids=["gateway", "central"])
@pytest.mark.parametrize(("broker", "message"), [
    ('host = "broker.example"\n', "host 'broker.example' is not loopback: set tls_ca"),
    ('host = "10.0.0.5"\n', "host '10.0.0.5' is not loopback: set tls_ca"),
    ('tls_ca = "missing.crt"\n', r"tls_ca: CA file .*missing.crt not found"),
    ('tls_ca = "not-pem.crt"\n', r"tls_ca: .*not-pem.crt holds no PEM certificate"),
    ('tls_ca = "tls"\n', r"tls_ca: CA file .*tls cannot be read"),
    ("tls_ca = 1\n", "tls_ca has the wrong type"),
])
def test_bad_tls_settings_are_refused_clearly(tmp_path, ca, load, base, broker, message):
    (tmp_path / "not-pem.crt").write_text("hello\n")
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, base + broker))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.53"])
def test_plain_mqtt_to_a_loopback_broker_is_allowed(tmp_path, host):
    assert GC.load(write(tmp_path, GATEWAY + f'host = "{host}"\n')).broker.host == host


def test_check_config_refuses_a_missing_ca(tmp_path, capsys):
    path = write(tmp_path, GATEWAY + 'tls_ca = "nope.crt"\n')
    (tmp_path / "st.json").write_text("[]")
    assert gateway_cli.main(["check-config", "--config", str(path)]) != 0
    assert f"tls_ca: CA file {tmp_path / 'nope.crt'} not found" in capsys.readouterr().err


# ---------------------------------------------------------------- brokers

def tls_listener(tmp_path: Path, ca: Path, port: int = 8883) -> bc.TlsListener:
    return bc.TlsListener(ca, tmp_path / "tls" / "broker.crt", tmp_path / "tls" / "broker.key", port=port)


def test_conf_puts_the_tls_listener_first_with_tls_1_2_at_least(tmp_path, ca):
    conf = bc.render_conf("berlin", password_file="/p", acl_file="/a", tls=tls_listener(tmp_path, ca))
    lines = conf.splitlines()
    first = lines.index("listener 8883 0.0.0.0")
    assert lines[first:first + 6] == ["listener 8883 0.0.0.0", "protocol mqtt", f"cafile {ca}",
                                      f"certfile {tmp_path / 'tls' / 'broker.crt'}",
                                      f"keyfile {tmp_path / 'tls' / 'broker.key'}", "tls_version tlsv1.2"]
    assert lines.index("listener 1883 127.0.0.1") > first
    tls_only = bc.render_conf("berlin", password_file="/p", acl_file="/a", port=None, tls=tls_listener(tmp_path, ca))
    assert [l for l in tls_only.splitlines() if l.startswith("listener")] == ["listener 8883 0.0.0.0"]


def test_central_conf_gets_the_tls_listener_too(tmp_path, ca):
    conf = write_central_broker_dir(tmp_path / "c", None, {"central": "pw"}, ["central"], [], run_as="root",
                                    tls=tls_listener(tmp_path, ca)).read_text()
    assert "listener 8883 0.0.0.0" in conf and f"cafile {ca}" in conf and "tls_version tlsv1.2" in conf
    assert "listener 1883" not in conf


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"port": None, "tls": None}, "no listener"),
    ({"port": 8883}, "both on port 8883"),
    ({"tls_port": 0}, "TLS port 0 outside"),
    ({"missing": "keyfile"}, "TLS keyfile .* not found"),
])
def test_bad_listeners_are_refused(tmp_path, ca, kwargs, message):
    tls = tls_listener(tmp_path, ca, port=kwargs.pop("tls_port", 8883))
    if "missing" in kwargs:
        tls = bc.TlsListener(tls.cafile, tls.certfile, tmp_path / "nope.key")
        kwargs.pop("missing")
    kwargs.setdefault("tls", tls)
    with pytest.raises(BrokerConfigError, match=message):
        bc.render_conf("berlin", password_file="/p", acl_file="/a", **kwargs)


def test_bridge_verifies_central_with_its_ca(tmp_path, ca):
    text = render_bridge("a", BridgeSettings("central.example", 8883, "s3cret", cafile=ca))
    lines = text.splitlines()
    assert "address central.example:8883" in lines
    assert f"bridge_cafile {ca}" in lines and "bridge_tls_version tlsv1.2" in lines
    assert "bridge_insecure false" in lines
    assert not any(l.startswith("#bridge_") for l in lines)  # no switched-off TLS lines
    plain = render_bridge("a", BridgeSettings("127.0.0.1", 1883, "s3cret")).splitlines()
    assert not any("bridge_cafile" in l for l in plain)
    with pytest.raises(BrokerConfigError, match="bridge CA file .* not found"):
        render_bridge("a", BridgeSettings("central.example", 8883, "s3cret", cafile=tmp_path / "nope"))


def run_cli(tmp_path: Path, *args: str) -> int:
    return bc.main(["--region", "berlin", "--dir", str(tmp_path / "out"), "--gateway-user", "gw",
                    "--gateway-password", "pw", "--run-as", "root", *args])


def test_command_line_writes_the_tls_listener_and_keeps_plain_mqtt_on_loopback(tmp_path, ca, capsys):
    key = tmp_path / "tls" / "broker.key"
    crt = tmp_path / "tls" / "broker.crt"
    assert run_cli(tmp_path, "--tls-cafile", str(ca), "--tls-certfile", str(crt), "--tls-keyfile", str(key)) == 0
    conf = (tmp_path / "out" / CONF_NAME).read_text()
    assert "listener 8883 0.0.0.0" in conf and "listener 1883 127.0.0.1" in conf
    assert run_cli(tmp_path, "--port", "0", "--tls-cafile", str(ca), "--tls-certfile", str(crt),
                   "--tls-keyfile", str(key)) == 0
    assert "listener 1883" not in (tmp_path / "out" / CONF_NAME).read_text()
    capsys.readouterr()
    assert run_cli(tmp_path, "--host", "0.0.0.0") == 1
    assert "plain MQTT only on a loopback address" in capsys.readouterr().err
    assert run_cli(tmp_path, "--tls-cafile", str(ca)) == 1
    assert "go together" in capsys.readouterr().err


def test_command_line_refuses_a_plain_bridge_to_a_remote_central(tmp_path, ca, capsys):
    pw = tmp_path / "bridge.pw"
    pw.write_text("s3cret\n")
    with pytest.raises(SystemExit):
        run_cli(tmp_path, "--bridge-host", "central.example", "--bridge-password-file", str(pw))
    assert "give --bridge-cafile" in capsys.readouterr().err
    assert run_cli(tmp_path, "--bridge-host", "central.example", "--bridge-password-file", str(pw),
                   "--bridge-cafile", str(ca)) == 0
    conf = (tmp_path / "out" / CONF_NAME).read_text()
    assert "address central.example:8883" in conf and f"bridge_cafile {ca}" in conf
