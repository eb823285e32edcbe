"""firmware/lib on the real MicroPython unix port with a 96 KB heap: log, config, backoff,
topics, wifi (hardware-free parts; the MQTT session has its own file with a real broker)."""
from __future__ import annotations

import base64
import json
import re
import string
import time

import pytest

from harness.micropython import MicroPython, run, run_json
from recarga.core.protocol import device as D

GOOD = {
    "kind": "station", "id": "st-1", "region": "test",
    "wifi": {"ssid": "recarga", "password": "pw"},
    "broker": {"host": "127.0.0.1", "port": 1883, "user": "st-1", "password": "st-1-secret"},
    "pins": {"status_led": 2},
    "slots": [{"red": 25, "green": 26, "blue": 27, "sensor": 13}],
}


def _ca() -> tuple[str, str]:
    """A CA certificate (recarga.core.certs) as PEM text and as config.json's broker.ca."""
    import tempfile
    from pathlib import Path

    from recarga.core import certs
    from recarga.devices.provision import pinned_ca

    d = Path(tempfile.mkdtemp(prefix="lib-ca-"))
    files = certs.make_ca(d)
    return files.cert.read_text(), pinned_ca(files.cert)


CA_PEM, CA_DER_B64 = _ca()


def config_error(cfg_text: str, kind: str = "station", tmp_path=None) -> str:
    """Load + check_common a config.json with this text; the ConfigError's text or 'ok'."""
    code = f"""
import config
open("config.json", "w").write({cfg_text!r})
try:
    cfg = config.load()
    config.check_common(cfg, {kind!r})
    print("ok")
except config.ConfigError as e:
    print(str(e))
"""
    return run(code, cwd=tmp_path).strip()


def with_(**changes) -> str:
    cfg = json.loads(json.dumps(GOOD))
    for dotted, value in changes.items():
        node = cfg
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node[k]
        if value is ...:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return json.dumps(cfg)


# ---------------------------------------------------------------- log

def test_log_lines_and_levels():
    out = run("""
import log
log.info("mqtt:", "connected", 3)
log.debug("hidden")
log.level("debug"); log.debug("shown")
log.level("error"); log.warn("hidden"); log.info("hidden"); log.error("boom", 1)
log.level("warn"); log.warn("careful")
""")
    assert out.splitlines() == ["[I] mqtt: connected 3", "[D] shown", "[E] boom 1", "[W] careful"]


# ---------------------------------------------------------------- config

def test_good_config_passes_and_fills_defaults(tmp_path):
    code = f"""
import config, json
open("config.json", "w").write({json.dumps(GOOD)!r})
cfg = config.load()
config.check_common(cfg, "station")
print(json.dumps([cfg["broker"]["keepalive"], cfg["log"]]))
"""
    assert run_json(code, cwd=tmp_path) == [[30, "info"]]


@pytest.mark.parametrize("text, message", [
    (None, "config error: config.json not found"),
    ("{not json", "config error: config.json is not valid JSON"),
    ("[1, 2]", "config error: config.json must hold a JSON object"),
])
def test_load_errors(tmp_path, text, message):
    code = f"""
import config
if {text!r} is not None:
    open("config.json", "w").write({text!r})
try:
    config.load()
except config.ConfigError as e:
    print(e)
"""
    assert run(code, cwd=tmp_path).strip() == message


@pytest.mark.parametrize("changes, message", [
    (dict(kind="car"), "config error: kind must be 'station' for this firmware, got 'car'"),
    (dict(kind=...), "config error: kind is missing"),
    (dict(id=...), "config error: id is missing"),
    (dict(id=7), "config error: id must be a string"),
    (dict(id=""), "config error: id length must be between 1 and 32, got 0"),
    (dict(id="x" * 33), "config error: id length must be between 1 and 32, got 33"),
    (dict(id="st 1"), "config error: id must be 1-32 of A-Z a-z 0-9 _ -"),
    (dict(region="ber/lin"), "config error: region must be 1-32 of A-Z a-z 0-9 _ -"),
    (dict(wifi=...), "config error: wifi.ssid is missing"),
    (dict(wifi="recarga"), "config error: wifi must be an object"),
    (dict(wifi__password=...), "config error: wifi.password is missing"),
    (dict(broker__host=""), "config error: broker.host length must be between 1 and 253, got 0"),
    (dict(broker__port="1883"), "config error: broker.port must be an integer"),
    (dict(broker__port=1883.0), "config error: broker.port must be an integer"),
    (dict(broker__port=True), "config error: broker.port must be an integer"),
    (dict(broker__port=70000), "config error: broker.port must be between 1 and 65535, got 70000"),
    (dict(broker__user="someone"), "config error: broker.user must equal id (the broker knows each device by its id)"),
    (dict(broker__password=None), "config error: broker.password must be a string"),
    (dict(broker__keepalive=1), "config error: broker.keepalive must be between 5 and 3600, got 1"),
    (dict(log="verbose"), "config error: log must be one of debug, info, warn, error"),
    (dict(broker__ca=7), "config error: broker.ca must be a string"),
    (dict(broker__ca=CA_PEM), "config error: broker.ca must be a CA certificate in DER, base64 (not PEM): "
                              "recarga-device writes it"),
    (dict(broker__ca=CA_DER_B64[:-8]), "config error: broker.ca must be a CA certificate in DER, base64 (not PEM): "
                                       "recarga-device writes it"),  # cut short
    (dict(broker__ca=base64.b64encode(b"\x30\x82\x00\x10" + bytes(16)).decode()),
     "config error: broker.ca is not a certificate mbedTLS can read"),  # whole DER, not a certificate
    (dict(broker__ca=CA_DER_B64, broker__server_name=""),
     "config error: broker.server_name length must be between 1 and 253, got 0"),
    (dict(broker__server_name="broker.example"), "config error: broker.server_name needs broker.ca (TLS)"),
])
def test_check_common_errors(tmp_path, changes, message):
    assert config_error(with_(**changes), tmp_path=tmp_path) == message


def test_a_pinned_ca_and_server_name_pass_and_make_a_verifying_tls_context(tmp_path):
    """broker.ca (base64 DER, as provisioning writes it) and broker.server_name are accepted;
    lib pinned.context() makes a CERT_REQUIRED client context trusting that CA."""
    code = f"""
import config, json, pinned, tls
open("config.json", "w").write({with_(broker__ca=CA_DER_B64, broker__server_name="broker.example")!r})
cfg = config.load()
config.check_common(cfg, "station")
c = pinned.context(cfg["broker"]["ca"])
print(json.dumps([cfg["broker"]["server_name"], c.verify_mode == tls.CERT_REQUIRED]))
"""
    assert run_json(code, cwd=tmp_path) == [["broker.example", True]]


def test_an_id_is_exactly_a_z_A_Z_0_9_underscore_and_dash_and_checking_it_interns_nothing():
    """Every printable ASCII character and a non-ASCII one: only the id characters pass. The
    check adds no interned string (MicroPython interns each 1-character str it makes, for
    good: at boot a new qstr pool in a fragmented heap)."""
    out = run("""
import micropython
import config
codes = list(range(32, 127)) + [233]  # 233: e acute, two bytes in UTF-8
ids = [{"id": bytes([105, 100, c, c]).decode() if c < 128 else "id\\u00e9"} for c in codes]  # no 1-char str
micropython.qstr_info()
ok = []
for cfg, c in zip(ids, codes):
    try:
        config.need_id(cfg, "id")
        ok.append(c)
    except config.ConfigError:
        pass
micropython.qstr_info()
print(ok)
""")
    lines = out.splitlines()
    counts = [re.search(r"n_qstr=(\d+)", line).group(1) for line in lines if line.startswith("qstr pool")]
    assert len(counts) == 2 and counts[0] == counts[1], out
    assert json.loads(lines[-1]) == sorted(map(ord, string.ascii_letters + string.digits + "_-")), out


def test_need_kinds_ranges_and_list_paths():
    out = run("""
import config
cfg = {"a": {"n": 3, "f": 2, "s": "abc", "l": [{"x": 1}, {"x": "no"}], "b": True}}
def t(*args):
    try:
        print(repr(config.need(cfg, *args)))
    except config.ConfigError as e:
        print(e)
t("a.n", int, 1, 5)
t("a.n", int, 4)
t("a.n", int, None, 2)
t("a.f", float)
t("a.f", float, 2.5, 3.5)
t("a.s", str, 1, 2)
t("a.l.1.x", int)
t("a.l.2.x", int)
t("a.l.3.x", int)
t("a.b", bool)
t("a.b", int)
t("a.n.x", int)
t("a.l.x", int)
print(config.get(cfg, "a.missing", int, 42), config.get(cfg, "a.n", int, 42))
try:
    config.get(cfg, "a.s", int, 0)
except config.ConfigError as e:
    print(e)
""")
    assert out.splitlines() == [
        "3",
        "config error: a.n must be at least 4, got 3",
        "config error: a.n must be at most 2, got 3",
        "2.0",
        "config error: a.f must be between 2.5 and 3.5, got 2",
        "config error: a.s length must be between 1 and 2, got 3",
        "1",
        "config error: a.l.2.x must be an integer",
        "config error: a.l.3.x is missing",
        "True",
        "config error: a.b must be an integer",
        "config error: a.n must be an object",
        "config error: a.l must be an object",  # a name (not a number) into a list
        "42 3",
        "config error: a.s must be an integer",
    ]


def test_halt_prints_once_turns_outputs_off_and_stays_alive(tmp_path):
    script = tmp_path / "halt.py"
    script.write_text("""
import config
class FakePin:
    def __init__(self, name): self.name = name
    def value(self, v=None):
        print("pin", self.name, v)
config.halt("config error: broker.port is missing", [FakePin("led1"), FakePin("rgb1")])
print("halt returned")
""")
    with MicroPython(script, cwd=tmp_path) as mp:
        mp.wait_line("pin rgb1 0")
        time.sleep(1.5)
        assert mp.running, mp.output()
        assert mp.lines() == ["config error: broker.port is missing", "pin led1 0", "pin rgb1 0"]


# ---------------------------------------------------------------- backoff

def test_backoff_grows_caps_jitters_and_resets():
    (res,) = run_json("""
import json
from backoff import Backoff
b = Backoff(500, 30000)
ceilings, delays = [], []
for _ in range(10):
    ceilings.append(b.ceiling()); delays.append(b.delay())
samples = [Backoff(1000, 1000).delay() for _ in range(400)]
b.reset()
print(json.dumps({"ceilings": ceilings, "delays": delays, "samples": samples, "after_reset": b.ceiling()}))
""")
    assert res["ceilings"] == [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]
    assert all(0 <= d < c for d, c in zip(res["delays"], res["ceilings"]))
    s = res["samples"]  # full jitter: spread over [0, 1000)
    assert all(0 <= d < 1000 for d in s)
    assert min(s) < 100 and max(s) > 900 and 400 < sum(s) / len(s) < 600
    assert len(set(s)) > 200
    assert res["after_reset"] == 500


def test_backoff_rejects_nonsense():
    out = run("""
from backoff import Backoff
for args in ((0, 10), (100, 50)):
    try:
        Backoff(*args); print("accepted")
    except ValueError as e:
        print(e)
""")
    assert out.splitlines() == ["backoff: need 0 < base_ms <= cap_ms"] * 2


# ---------------------------------------------------------------- topics

def test_topics_match_the_protocol_module():
    cases = [("test", "station", "st-1", leaf) for leaf in ("status", "cmd", "online", "meta")]
    cases += [("berlin", "car", "car-0001", leaf) for leaf in ("request", "reply", "online", "telemetry")]
    got = run_json(f"""
import json
from topics import topic
print(json.dumps([topic(*c) for c in {cases!r}]))
""")[0]
    want = [D.station_topic(r, i, leaf) if k == "station" else D.car_topic(r, i, leaf) for r, k, i, leaf in cases]
    assert got == want


# ---------------------------------------------------------------- wifi

def test_wifi_connects_in_background_and_retries_with_backoff():
    out = run("""
import json
from wifi import Wifi
from backoff import Backoff
class FakeWLAN:
    def __init__(self): self.up = False; self.calls = []
    def active(self, on): self.calls.append("active %s" % on)
    def connect(self, ssid, pw): self.calls.append("connect %s %s" % (ssid, pw))
    def disconnect(self): self.calls.append("disconnect")
    def isconnected(self): return self.up
wlan = FakeWLAN()
w = Wifi(wlan, "recarga", "pw", Backoff(100, 100))
r = [w.poll(0), w.poll(5000)]          # connect started at 0; still within the attempt window
r.append(w.poll(10200))                # window (10 s) + backoff (< 100 ms) passed: retry
wlan.up = True
r += [w.poll(10300), w.connected]
wlan.up = False
r += [w.poll(20000), w.connected]      # lost: reconnect at once
print(json.dumps({"r": r, "calls": wlan.calls}))
""")
    res = json.loads(out.splitlines()[-1])
    assert res["r"] == [False, False, False, True, True, False, False]
    assert res["calls"] == ["active True", "connect recarga pw", "disconnect", "connect recarga pw",
                            "disconnect", "connect recarga pw"]
    assert "[I] wifi: connected to recarga" in out and "[W] wifi: connection lost" in out


# ---------------------------------------------------------------- no work at import time

def test_importing_lib_modules_does_no_work_and_costs_little_heap():
    out = run("""
import gc, micropython
gc.collect(); before = gc.mem_free()
import log, config, backoff, wifi, topics, session
gc.collect(); after = gc.mem_free()
import sys
print("umqtt loaded:", "umqtt.simple" in sys.modules)
print("cost:", before - after)
""")
    lines = out.splitlines()
    assert lines[0] == "umqtt loaded: False"  # session imports umqtt.simple lazily
    cost = int(lines[1].split()[1])
    assert cost < 24 * 1024, cost
