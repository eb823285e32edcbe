"""recarga.core.broker_config: the ACL comes from recarga.core.protocol only, the conf from the
template, and the generated files are accepted by a real Mosquitto, standalone and as a Debian
drop-in."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import ROOT
from harness.broker import PASSWORDS, REGION, Broker, free_port, run_as_me
from recarga.core import broker_config as bc
from recarga.core import broker_dir
from recarga.core.protocol import access as ACL
from recarga.core.protocol import device as D
from recarga.devices.provision import provision


def parse_acl(text: str) -> dict[str, list[tuple[str, str]]]:
    users: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word == "user":
            current = users.setdefault(rest, [])
        else:
            assert word == "topic" and current is not None, f"unexpected ACL line {line!r}"
            access, _, topic = rest.partition(" ")
            current.append((access, topic))
    return users


def test_acl_is_exactly_the_protocol_lists():
    text = bc.render_acl("berlin", "gw", ["car-1", "car-2"], ["st-9"],
                         {"monitor": [("read", D.gateway_online_topic("berlin"))]})
    assert "%" not in text and "pattern" not in text
    assert parse_acl(text) == {
        "gw": ACL.acl_gateway("berlin"),
        "car-1": ACL.acl_car("berlin", "car-1"),
        "car-2": ACL.acl_car("berlin", "car-2"),
        "st-9": ACL.acl_station("berlin", "st-9"),
        "monitor": [("read", D.gateway_online_topic("berlin"))],
    }


@pytest.mark.parametrize("args", [
    ("berlin", "gw", ["x"], ["x"]),  # a car and a station with one name
    ("berlin", "x", ["x"], []),  # gateway user named like a car
])
def test_acl_rejects_a_user_name_used_twice(args):
    with pytest.raises(broker_dir.BrokerConfigError, match="used twice"):
        bc.render_acl(*args)


def test_acl_rejects_bad_ids_and_access():
    with pytest.raises(ValueError):
        bc.render_acl("berlin", "gw", ["car/1"], [])
    with pytest.raises(ValueError):
        bc.render_acl("ber lin", "gw", [], [])
    with pytest.raises(broker_dir.BrokerConfigError, match="access"):
        bc.render_acl("berlin", "gw", [], [], {"m": [("admin", "x")]})


def test_conf_fills_every_placeholder():
    conf = bc.render_conf("berlin", password_file="/p/passwd", acl_file="/p/acl", port=1884,
                          host="0.0.0.0", persistence_location="/p/db", log_file=None)
    assert "$" not in conf
    lines = conf.splitlines()
    for expected in ("per_listener_settings false", "listener 1884 0.0.0.0", "allow_anonymous false",
                     "password_file /p/passwd", "acl_file /p/acl", "persistence true",
                     "persistence_location /p/db/", "log_dest stdout", "user mosquitto",
                     "max_packet_size 65536"):
        assert expected in lines
    # per_listener_settings must precede the listener
    assert lines.index("per_listener_settings false") < lines.index("listener 1884 0.0.0.0")


def test_dropin_leaves_main_conf_settings_out():
    conf = bc.render_conf("berlin", password_file="/p/passwd", acl_file="/p/acl", dropin=True)
    active = [l.split()[0] for l in conf.splitlines() if l and not l.startswith("#")]
    for key in ("persistence", "persistence_location", "log_dest", "user", "pid_file", "include_dir"):
        assert key not in active
    for key in ("listener", "allow_anonymous", "password_file", "acl_file"):
        assert key in active


def test_write_broker_dir_needs_every_password(tmp_path: Path):
    with pytest.raises(broker_dir.BrokerConfigError, match="no password"):
        bc.write_broker_dir(tmp_path, "berlin", 1883, {"gw": "x"}, ["car-1"], [], "gw")


def test_missing_mosquitto_passwd_is_a_clear_error(tmp_path: Path):
    with pytest.raises(broker_dir.BrokerConfigError, match="not found on PATH"):
        bc.write_password_file(tmp_path / "passwd", {"a": "b"}, mosquitto_passwd="no-such-mosquitto_passwd")


def test_password_file_holds_hashes_not_passwords(tmp_path: Path):
    path = bc.write_password_file(tmp_path / "passwd", {"gw": "s3cret", "car-1": "other"})
    text = path.read_text()
    assert [l.split(":", 1)[0] for l in text.splitlines()] == ["gw", "car-1"]
    assert "s3cret" not in text and "other" not in text
    assert path.stat().st_mode & 0o777 == 0o640
    with pytest.raises(broker_dir.BrokerConfigError):
        bc.write_password_file(tmp_path / "passwd", {"bad:name": "x"})


def test_cli_writes_a_broker_directory(tmp_path: Path):
    pw = tmp_path / "gw.password"
    pw.write_text("gw-pass\n")
    out = tmp_path / "broker"
    done = subprocess.run(
        [sys.executable, "-m", "recarga.core.broker_config", "--region", "berlin", "--dir", str(out),
         "--port", "1999", "--gateway-user", "gw", "--gateway-password-file", str(pw),
         "--car", "car-1:pw:with:colons", "--station", "st-1:spw",
         "--run-as", run_as_me()],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    conf = Path(done.stdout.strip())
    assert conf == out.resolve() / broker_dir.CONF_NAME and conf.is_file()
    assert parse_acl((out / broker_dir.ACL_NAME).read_text())["car-1"] == ACL.acl_car("berlin", "car-1")
    assert (out / broker_dir.PERSISTENCE_NAME).is_dir()
    bad = subprocess.run([sys.executable, "-m", "recarga.core.broker_config", "--region", "berlin",
                          "--dir", str(out), "--gateway-user", "gw", "--gateway-password", "x",
                          "--car", "car/1:pw"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=False)
    assert bad.returncode == 1 and "bad car id" in bad.stderr


@pytest.mark.integration
def test_dropin_works_under_a_debian_style_main_conf(tmp_path: Path, mqtt_client):
    """The --dropin output, included by a mosquitto.conf shaped like Debian's, gives a broker
    with auth and the ACL (docs/deployment.md describes this setup)."""
    port = free_port()
    me = run_as_me()
    recarga = tmp_path / "etc-mosquitto" / "recarga"
    dropin = bc.write_broker_dir(recarga, REGION, port, PASSWORDS, ["car-a", "car-b"], ["st-1"],
                                 "gateway", run_as=me, dropin=True)
    conf_d = tmp_path / "etc-mosquitto" / "conf.d"
    conf_d.mkdir()
    (conf_d / broker_dir.CONF_NAME).symlink_to(dropin)
    (tmp_path / "var").mkdir()
    main = tmp_path / "etc-mosquitto" / "mosquitto.conf"
    log = tmp_path / "var" / "mosquitto.log"
    # Debian's file, with its paths moved into tmp_path (and `user` for an unprivileged run).
    main.write_text(f"user {me}\npersistence true\npersistence_location {tmp_path}/var/\n"
                    f"log_dest file {log}\ninclude_dir {conf_d}\n")
    with Broker(main, "127.0.0.1", port, region=REGION, passwords=PASSWORDS, log_path=log) as broker:
        gw = mqtt_client("gateway", broker=broker)
        a = mqtt_client("car-a", broker=broker)
        gw.subscribe(D.gateway_subscriptions(REGION)[0])
        a.publish(D.car_topic(REGION, "car-b", "request"), b"forged")
        a.publish(D.car_topic(REGION, "car-a", "request"), b"mine")
        assert gw.expect(D.car_topic(REGION, "car-a", "request")).payload == b"mine"
        gw.expect_nothing(D.car_topic(REGION, "car-b", "request"), within=0.5)
    # persistence came from the main conf: the broker saved its database there on SIGTERM
    assert (tmp_path / "var" / "mosquitto.db").is_file()


@pytest.mark.integration
def test_a_rerun_keeps_the_devices_provisioned_since(tmp_path: Path, mqtt_client):
    """broker_config over a directory that `recarga-device provision` added a car to: the car
    stays (ACL block and password), and still logs in; --forget-devices drops it."""
    pw = tmp_path / "gw.password"
    pw.write_text(PASSWORDS["gateway"] + "\n")
    out, port = tmp_path / "broker", free_port()
    args = [sys.executable, "-m", "recarga.core.broker_config", "--region", REGION, "--dir", str(out),
            "--port", str(port), "--gateway-user", "gateway", "--gateway-password-file", str(pw),
            "--car", f"car-a:{PASSWORDS['car-a']}", "--run-as", run_as_me()]
    first = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 0, first.stderr
    provision("car", "car-9", REGION, out, "127.0.0.1", port, tmp_path / "devices", wifi_ssid="lab",
              wifi_password="", log=lambda line: None)
    car_pw = json.loads((tmp_path / "devices" / "car-9" / "config.json").read_text())["broker"]["password"]
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0, again.stderr
    assert parse_acl((out / broker_dir.ACL_NAME).read_text())["car-9"] == ACL.acl_car(REGION, "car-9")
    conf = Path(again.stdout.strip())
    broker = Broker(conf, "127.0.0.1", port, region=REGION,
                    passwords={"car-9": car_pw, "car-a": PASSWORDS["car-a"]},
                    log_path=out / broker_dir.LOG_NAME).start()
    try:
        car = mqtt_client("car-9", broker=broker)  # logs in with the password provisioning gave it
        car.publish(D.car_topic(REGION, "car-9", "online"), b"1")
        mqtt_client("car-a", broker=broker)  # and the car the command names
    finally:
        broker.stop()
    forget = subprocess.run([*args, "--forget-devices"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, check=False)
    assert forget.returncode == 0, forget.stderr
    assert "car-9" not in parse_acl((out / broker_dir.ACL_NAME).read_text())
    assert "car-9" not in broker_dir.passwd_lines(out / broker_dir.PASSWD_NAME)
