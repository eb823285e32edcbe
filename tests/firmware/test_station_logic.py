"""The station's hardware-free modules on MicroPython (96 KB heap): debouncing, the slot
state machine, out-of-service persistence, LEDs; and the contract test: the status payload
the firmware builds passes recarga.core.protocol.device.parse_station_status on the CPython side."""
from __future__ import annotations

import itertools
import json

import pytest

from harness.micropython import run, run_json
from recarga.core.protocol import device as D

NAMES = ["free", "reserved", "occupied", "out_of_service"]


# ---------------------------------------------------------------- debounce

def test_debounce_ignores_short_bounces_and_takes_a_held_change():
    (got,) = run_json("""
import json
from debounce import Debouncer
d = Debouncer(50)
trace = []
# (t, raw): a 20 ms bounce, then a press held from t=100, bouncing at first, then released
for t, raw in [(0, 0), (10, 1), (30, 0), (60, 0), (100, 1), (110, 0), (120, 1), (160, 1),
               (169, 1), (170, 1), (200, 1), (300, 0), (349, 0), (350, 0), (400, 0)]:
    changed = d.update(raw, t)
    trace.append([t, d.value, changed])
print(json.dumps(trace))
""")
    changes = [(t, v) for t, v, changed in got if changed]
    assert changes == [(170, True), (350, False)]
    assert all(v is False for t, v, _ in got if t < 170)


def test_debounce_zero_ms_and_reset():
    (got,) = run_json("""
import json
from debounce import Debouncer
d = Debouncer(0)
r = [d.update(1, 0), d.value, d.update(1, 1), d.update(0, 2), d.value]
d.reset(True)
r += [d.value, d.update(1, 3), d.update(0, 4)]
print(json.dumps(r))
""")
    assert got == [True, True, False, True, False, True, False, True]


# ---------------------------------------------------------------- slots

def slots_script(body: str, n: int = 2, store: str | None = "None") -> str:
    return f"""
import json
from slots import Slots, NAMES
s = Slots({n}, {store})
def states():
    return [NAMES[s.state(i)] for i in range(s.n)]
def cmd(text):
    try:
        return s.command(text)
    except ValueError as e:
        return str(e)
{body}
"""


def test_state_precedence_and_reserve_while_occupied_then_freed():
    (got,) = run_json(slots_script("""
trace = [states()]
trace.append(s.set_occupied(0, True)); trace.append(states())
trace.append(cmd(b'{"v":1,"cmd":"reserve","slot":1,"reservation":"r1","until":1795000720}'))
trace.append(states())                      # occupied wins over reserved
trace.append(s.set_occupied(0, False)); trace.append(states())   # freed: the reservation shows
trace.append(cmd('{"v":1,"cmd":"out_of_service","slot":1}')); trace.append(states())
trace.append(s.set_occupied(0, True)); trace.append(states())    # out of service wins
trace.append(cmd('{"v":1,"cmd":"in_service","slot":1}')); trace.append(states())
trace.append(s.set_occupied(0, False))
trace.append(cmd('{"v":1,"cmd":"release","slot":1}')); trace.append(states())
trace.append(s.seq)
print(json.dumps(trace))
"""))
    assert got == [
        ["free", "free"],
        True, ["occupied", "free"],
        0, ["occupied", "free"],
        True, ["reserved", "free"],
        0, ["out_of_service", "free"],
        False, ["out_of_service", "free"],
        0, ["occupied", "free"],
        True,
        0, ["free", "free"],
        6,  # seq counts changes of the reported states only
    ]


@pytest.mark.parametrize("payload, message", [
    (b"not json", "bad cmd: not JSON"),
    (b"[1]", "bad cmd: not a JSON object"),
    (b'{"cmd":"reserve","slot":1}', "bad cmd: v must be 1"),
    (b'{"v":2,"cmd":"reserve","slot":1}', "bad cmd: v must be 1"),
    (b'{"v":true,"cmd":"reserve","slot":1}', "bad cmd: v must be 1"),
    (b'{"v":1,"cmd":"explode","slot":1}', "bad cmd: unknown cmd 'explode'"),
    (b'{"v":1,"slot":1}', "bad cmd: unknown cmd None"),
    (b'{"v":1,"cmd":"reserve"}', "bad cmd: slot must be an integer"),
    (b'{"v":1,"cmd":"reserve","slot":"1"}', "bad cmd: slot must be an integer"),
    (b'{"v":1,"cmd":"reserve","slot":true}', "bad cmd: slot must be an integer"),
    (b'{"v":1,"cmd":"reserve","slot":3}', "bad cmd: unknown slot 3 (this station has 2)"),
    (b'{"v":1,"cmd":"reserve","slot":0}', "bad cmd: unknown slot 0 (this station has 2)"),
    (b'{"v":1,"cmd":"reserve","slot":1,"pad":"' + b"x" * 600 + b'"}', "bad cmd: larger than 512 bytes"),
])
def test_bad_commands_are_refused_and_change_nothing(payload, message):
    (got,) = run_json(slots_script(f"""
print(json.dumps([cmd({payload!r}), states(), s.seq]))
"""))
    assert got == [message, ["free", "free"], 0]


def test_out_of_service_survives_a_reboot(tmp_path):
    store = json.dumps(str(tmp_path / "oos.txt"))
    first = run_json(slots_script("""
s.load()
cmd('{"v":1,"cmd":"out_of_service","slot":2}')
cmd('{"v":1,"cmd":"reserve","slot":1}')
print(json.dumps(states()))
""", store=store))
    assert first == [["reserved", "out_of_service"]]
    assert (tmp_path / "oos.txt").read_text() == "01"
    # "reboot": a new process, a new Slots; the reserved flag is the gateway's to re-send
    second = run_json(slots_script("""
s.load()
print(json.dumps(states()))
cmd('{"v":1,"cmd":"in_service","slot":2}')
print(json.dumps(states()))
""", store=store))
    assert second == [["free", "out_of_service"], ["free", "free"]]
    assert (tmp_path / "oos.txt").read_text() == "00"
    assert not (tmp_path / "oos.txt.tmp").exists()
    # a store written for fewer slots, or garbage, is read as far as it goes
    (tmp_path / "oos.txt").write_text("1")
    third = run_json(slots_script("s.load(); print(json.dumps(states()))", n=3, store=store))
    assert third == [["out_of_service", "free", "free"]]


def boot_script(boot_store: str, body: str) -> str:
    return f"""
import json
from slots import Slots
s = Slots(2, None, {boot_store})
s.count_boot()
{body}
print(bytes(s.status_payload()).decode())
"""


def test_status_numbering_goes_on_across_a_reboot_and_wraps(tmp_path):
    boot_file = tmp_path / "boot.txt"
    store = json.dumps(str(boot_file))
    changes = "s.set_occupied(0, True); s.set_occupied(0, False); s.set_occupied(1, True)"
    (first,) = run(boot_script(store, changes)).splitlines()
    (second,) = run(boot_script(store, "")).splitlines()  # "reboot": a new process, a new Slots
    a, b = D.parse_station_report(first.encode()), D.parse_station_report(second.encode())
    assert (a.numbering, b.numbering) == ((1, 3), (2, 0))
    assert boot_file.read_text() == "2" and not (tmp_path / "boot.txt.tmp").exists()
    # the gateway believes the rebooted station though its seq starts again, and takes the
    # first boot's status for a stale copy once it has the second's
    assert D.status_before(a.numbering, b.numbering) and not D.status_before(b.numbering, a.numbering)
    # the boot number wraps as seq does, and compares wrap-safe
    boot_file.write_text(str(D.SEQ_MASK))
    (wrapped,) = run(boot_script(store, "")).splitlines()
    w = D.parse_station_report(wrapped.encode())
    assert w.numbering == (0, 0) and boot_file.read_text() == "0"
    assert D.status_before((D.SEQ_MASK, 5), w.numbering) and not D.status_before(w.numbering, (D.SEQ_MASK, 5))


def test_missing_or_unwritable_boot_file_is_not_fatal(tmp_path):
    store = json.dumps(str(tmp_path / "no-such-dir" / "boot.txt"))
    out = run(boot_script(store, ""))
    assert "[E] slots: cannot save boot number" in out
    assert D.parse_station_report(out.splitlines()[-1].encode()).numbering == (1, 0)
    (tmp_path / "garbled.txt").write_text("x7")
    out = run(boot_script(json.dumps(str(tmp_path / "garbled.txt")), ""))
    assert D.parse_station_report(out.splitlines()[-1].encode()).numbering == (1, 0)


def test_missing_or_unwritable_store_is_not_fatal(tmp_path):
    store = json.dumps(str(tmp_path / "no-such-dir" / "oos.txt"))
    out = run(slots_script("""
s.load()
print(json.dumps([cmd('{"v":1,"cmd":"out_of_service","slot":1}'), states()]))
""", store=store))
    assert "[E] slots: cannot save" in out
    assert json.loads(out.splitlines()[-1]) == [0, ["out_of_service", "free"]]


# ---------------------------------------------------------------- status payload: contract

def test_status_payload_passes_the_gateway_validator_for_every_state_combination():
    combos = [list(c) for c in itertools.product(range(4), repeat=3)]
    got = run_json(f"""
import json
from slots import Slots
s = Slots(3, None)
def cmd(name, i):
    s.command('{{"v":1,"cmd":"%s","slot":%d}}' % (name, i + 1))
for combo in {combos!r}:
    for i, st in enumerate(combo):  # each flag set as the board sets it: commands, the input
        cmd("out_of_service" if st == 3 else "in_service", i)
        s.set_occupied(i, st == 2)
        cmd("reserve" if st == 1 else "release", i)
    s.seq = sum(combo) * 1000003
    s.boot = combo[0] * 7
    print(json.dumps([combo, bytes(s.status_payload()).decode()]))
""")
    assert len(got) == 64
    for combo, payload in got:
        status = D.parse_station_report(payload.encode())
        assert status == D.StationStatus([NAMES[c] for c in combo], combo[0] * 7, sum(combo) * 1000003)
        assert json.loads(payload) == {"v": 1, "slots": [NAMES[c] for c in combo], "boot": combo[0] * 7,
                                       "seq": sum(combo) * 1000003}
        assert " " not in payload  # compact


def test_largest_status_fits_the_device_payload_limit():
    (payload,) = run("""
from slots import Slots, MAX_SLOTS
s = Slots(MAX_SLOTS, None)
for i in range(MAX_SLOTS):
    s.command('{"v":1,"cmd":"out_of_service","slot":%d}' % (i + 1))
s.seq = s.boot = 0x3FFFFFFF
print(bytes(s.status_payload()).decode())
""").splitlines()
    assert len(payload) <= D.MAX_PAYLOAD
    assert D.parse_station_report(payload.encode()) == D.StationStatus(["out_of_service"] * 16, D.SEQ_MASK,
                                                                         D.SEQ_MASK)


def test_status_payload_allocates_almost_nothing():
    out = run("""
import gc
from slots import Slots
s = Slots(4, None)
s.status_payload()
gc.collect(); gc.disable()
a = gc.mem_alloc()
for k in range(100):
    s.set_occupied(k % 4, k & 1)
    s.status_payload()
print((gc.mem_alloc() - a) // 100)
""")
    assert int(out) <= 64  # a memoryview and slice objects, no strings, no lists


# ---------------------------------------------------------------- leds

LEDS = """
import json
from leds import Leds
from slots import FREE, RESERVED, OCCUPIED, OUT_OF_SERVICE
writes = []
class Pin:
    def __init__(self, name): self.name = name
    def value(self, v=None):
        writes.append([self.name, v])
rgb = [(Pin("r1"), Pin("g1"), Pin("b1")), (Pin("r2"), Pin("g2"), Pin("b2"))]
leds = Leds(rgb, Pin("status"))
"""


def test_slot_colours_written_once_per_change():
    (got,) = run_json(LEDS + """
out = []
for st in (FREE, FREE, RESERVED, OCCUPIED, OUT_OF_SERVICE):
    del writes[:]
    leds.show(0, st)
    out.append(list(writes))
print(json.dumps(out))
""")
    # channels going off are written before channels going on, so a change passes through
    # dark, never through a third colour (blue -> red must not flash magenta)
    assert got == [
        [["r1", 0], ["b1", 0], ["g1", 1]],  # free: green
        [],  # unchanged: no writes
        [["r1", 0], ["g1", 0], ["b1", 1]],  # reserved: blue
        [["g1", 0], ["b1", 0], ["r1", 1]],  # occupied: red
        [["b1", 0], ["r1", 1], ["g1", 1]],  # out of service: yellow
    ]


def test_status_led_steady_when_reachable_blinks_2hz_when_not():
    (got,) = run_json(LEDS + """
seen = []
for t in range(0, 2000, 10):
    leds.status(t >= 1000, t)
print(json.dumps(writes))
""")
    # offline for 1 s at 2 Hz: toggles every 250 ms, starting off (t=0..249), then steady on
    assert got == [["status", 0], ["status", 1], ["status", 0], ["status", 1]]


# ---------------------------------------------------------------- station keys of config.json

SLOT = {"red": 25, "green": 26, "blue": 27, "sensor": 13}


def check_station(**changes) -> str:
    cfg = {"pins": {"status_led": 2}, "slots": [SLOT, {"red": 16, "green": 17, "blue": 18, "sensor": 19}]}
    cfg.update(changes)
    return run(f"""
import json, config, station_app
cfg = json.loads({json.dumps(cfg)!r})
try:
    station_app.check_station(cfg)
    print(json.dumps([cfg["heartbeat_s"], cfg["debounce_ms"]]))
except config.ConfigError as e:
    print(e)
""").strip()


@pytest.mark.parametrize("changes, message", [
    ({}, "[60, 50]"),
    ({"heartbeat_s": 30, "debounce_ms": 0}, "[30, 0]"),
    ({"slots": []}, "config error: slots length must be between 1 and 16, got 0"),
    ({"slots": [SLOT] * 17}, "config error: slots length must be between 1 and 16, got 17"),
    ({"slots": [SLOT, 5]}, "config error: slots.2 must be an object"),
    ({"slots": [dict(SLOT, blue=None)]}, "config error: slots.1.blue must be an integer"),
    ({"slots": [{"red": 25, "green": 26, "sensor": 13}]}, "config error: slots.1.blue is missing"),
    ({"slots": [dict(SLOT, sensor=34)]},
     "config error: slots.1.sensor must be an ESP32 GPIO with output and pull-up "
     "(0, 2, 4, 5, 12-19, 21-23, 25-27, 32, 33), got 34"),
    ({"pins": {"status_led": 1}},
     "config error: pins.status_led must be an ESP32 GPIO with output and pull-up "
     "(0, 2, 4, 5, 12-19, 21-23, 25-27, 32, 33), got 1"),
    ({"slots": [SLOT, SLOT]}, "config error: slots.2.red uses GPIO 25, already used by slots.1.red"),
    ({"slots": [dict(SLOT, sensor=2)]}, "config error: slots.1.sensor uses GPIO 2, already used by pins.status_led"),
    ({"heartbeat_s": 1}, "config error: heartbeat_s must be between 5 and 3600, got 1"),
    ({"debounce_ms": 5.5}, "config error: debounce_ms must be an integer"),
    ({"pins": None}, "config error: pins must be an object"),
])
def test_station_config_keys(changes, message):
    assert check_station(**changes) == message
