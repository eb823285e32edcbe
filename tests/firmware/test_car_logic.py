"""The car's state machine (firmware/car/car_logic.py) on the real MicroPython unix port with a
96 KB heap, driven with scripted gateway replies and events."""
from __future__ import annotations

import json
from pathlib import Path

from harness import micropython as mp

MODEL = {"name": "Volkswagen ID.3 58 kWh", "battery_kwh": 58.0, "consumption_kwh_100km": 16.6,
         "max_ac_kw": 11.0, "max_dc_kw": 100.0, "target_soc": 0.8}

# Runs on MicroPython: a CarLogic with recording send/say, a fixed-step backoff (2 s, 4 s, 8 s
# ... capped at 30 s) and helpers; every record is printed as one JSON line at the end.
PRELUDE = """
import json, gc
from car_logic import CarLogic

class Backoff:
    def __init__(self, base, cap):
        self.base = base; self.cap = cap; self.n = 0
    def delay(self):
        d = min(self.cap, self.base << self.n); self.n += 1; return d
    def reset(self):
        self.n = 0

T = [0]
NEXT = [0]
ONLINE = [True]
OUT = []
LAST = [None]
SENT = [0]  # requests sent
def send(leaf, payload):
    if not ONLINE[0]:
        return False
    if leaf == "request":
        LAST[0] = payload
        SENT[0] += 1
    OUT.append({"k": "send", "t": T[0], "leaf": leaf, "payload": payload})
    return True
def say(line):
    OUT.append({"k": "say", "t": T[0], "line": line})

class Hysteresis:  # the battery's low flag, as battery.Battery computes it
    low = False
    def update(self, soc):
        if self.low:
            self.low = soc <= 0.25
        else:
            self.low = soc < 0.20
H = Hysteresis()
car = CarLogic(CAR_ID, MODEL, send, say, Backoff(2000, 30000), boot_id="b00t", telemetry_ms=30000,
               reply_timeout_ms=10000, retry_floor_ms=0)
POS = [52.52, 13.405]

LED = [None]
def run(t1, soc, step=100):
    # poll every `step` ms from the next due time until t1 (inclusive) with this soc;
    # the LED pattern and state are recorded when they change
    t = NEXT[0]
    while t <= t1:
        T[0] = t
        H.update(soc)
        car.poll(t, soc, H.low, POS[0], POS[1], ONLINE[0])
        led = (car.led_pattern(), car.state)
        if led != LED[0]:
            LED[0] = led
            OUT.append({"k": "led", "t": t, "p": led[0], "state": led[1]})
        t += step
    NEXT[0] = t

def requests():
    return [json.loads(o["payload"]) for o in OUT if o["k"] == "send" and o["leaf"] == "request"]

def last_request():
    return json.loads(LAST[0])

def deliver(msg):
    car.on_message(json.dumps(msg), T[0])

def reply_ok(res):
    r = last_request()
    deliver({"v": 1, "rid": r["rid"], "ok": True, "op": r["op"], "reservation": res})

def reply_err(code, **extra):
    err = {"code": code, "message": code.replace("_", " ")}
    err.update(extra)
    deliver({"v": 1, "rid": last_request()["rid"], "ok": False, "error": err})

def reply_with(res=None, **fields):
    # a reply to the last request: ok with res, or the fields given (error, overflow, region, broker)
    r = last_request()
    m = {"v": 1, "rid": r["rid"], "ok": res is not None, "op": r["op"]}
    if res is not None:
        m["reservation"] = res
    m.update(fields)
    deliver(m)

def reply_overflow(res, region="south", host="127.0.0.1", port=1884):
    reply_with(res, region=region, broker={"host": host, "port": port})

def show_res():
    OUT.append({"k": "res", "t": T[0], "res": car.res, "state": car.state})

def event(name, res, offer=None, reason=None):
    m = {"v": 1, "event": name, "reservation": res}
    if offer is not None:
        m["offer"] = offer
    if reason is not None:
        m["reason"] = reason
    deliver(m)

def res(rid, state="held", station="st-1", slot=1):
    return {"id": rid, "station": station, "slot": slot, "state": state, "distance_km": 2.41,
            "eta": 1795000000, "wait_min": 0.0, "charge_min": 19.7, "energy_kwh": 32.9,
            "power_kw": 100.0, "price_eur": 19.41, "hold_until": 1795000120}

def done():
    gc.collect()
    OUT.append({"k": "heap", "alloc": gc.mem_alloc(), "free": gc.mem_free()})
    for o in OUT:
        print(json.dumps(o))
"""


def run_car(tmp_path: Path, scenario: str, car_id: str = "car-a") -> list[dict]:
    """Run PRELUDE + scenario on micropython (96 KB heap); the records it printed."""
    code = f"CAR_ID = {car_id!r}\nMODEL = {json.dumps(MODEL)}\n" + PRELUDE + scenario + "\ndone()\n"
    return mp.run_json(code, board="car", cwd=tmp_path)


def requests(out: list[dict]) -> list[dict]:
    return [dict(json.loads(o["payload"]), t=o["t"]) for o in out if o["k"] == "send" and o["leaf"] == "request"]


def telemetry(out: list[dict]) -> list[dict]:
    return [dict(json.loads(o["payload"]), t=o["t"]) for o in out if o["k"] == "send" and o["leaf"] == "telemetry"]


def says(out: list[dict]) -> list[str]:
    return [o["line"] for o in out if o["k"] == "say"]


def led_at(out: list[dict], t: int) -> int:
    """The LED pattern the logic asked for at time t (changes are recorded)."""
    p = None
    for o in out:
        if o["k"] == "led" and o["t"] <= t:
            p = o["p"]
    return p


def led_patterns(out: list[dict], t0: int, t1: int) -> set[int]:
    """Every pattern shown in [t0, t1)."""
    got = {led_at(out, t0)}
    got.update(o["p"] for o in out if o["k"] == "led" and t0 <= o["t"] < t1)
    return got


OFF, SLOW, ON, FAST = 0, 1, 2, 3


def test_low_battery_asks_once_then_confirms_the_held_slot(tmp_path):
    out = run_car(tmp_path, """
run(5000, 0.5)            # driving, fine
run(9000, 0.18)           # low: one reserve request
reply_ok(res("r1"))       # held -> heading, one line, confirm
run(12000, 0.18)
reply_ok(res("r1", "confirmed"))
run(20000, 0.17)
""")
    reqs = requests(out)
    assert [r["op"] for r in reqs] == ["reserve", "confirm"]
    rq, cf = reqs
    assert rq["t"] == 5100 and rq["car"] == "car-a" and rq["soc"] == 0.18
    assert (rq["lat"], rq["lon"]) == (52.52, 13.405)
    assert {k: rq[k] for k in ("battery_kwh", "consumption_kwh_100km", "max_ac_kw", "max_dc_kw", "target_soc")} == \
        {"battery_kwh": 58, "consumption_kwh_100km": 16.6, "max_ac_kw": 11, "max_dc_kw": 100, "target_soc": 0.8}
    assert cf["reservation"] == "r1" and cf["rid"] != rq["rid"]
    lines = [s for s in says(out) if s.startswith("slot reserved")]
    assert lines == ["slot reserved: station st-1 slot 1, 2.4 km, ETA 11:06 UTC, wait 0 min, charge 20 min, "
                     "19.41 EUR, hold until 11:08:40 UTC (r1 held)"]
    states = [t["state"] for t in telemetry(out)]
    assert states == ["driving", "low", "heading"]
    assert telemetry(out)[-1]["reservation"] == "r1"
    assert led_patterns(out, 0, 5100) == {OFF}
    assert led_patterns(out, 5100, 9000) == {SLOW}
    assert led_patterns(out, 9100, 20000) == {ON}


def test_dithering_soc_makes_one_request_per_episode(tmp_path):
    out = run_car(tmp_path, """
t = 0
for i in range(200):                      # 0.19 / 0.21 / 0.2 ... for 200 s
    t += 1000
    run(t, (0.19, 0.21, 0.2, 0.199, 0.205)[i % 5])
    if i == 3:
        reply_err("no_capacity", earliest_free=None)
""")
    # the first question was refused; the re-asks are spaced by the backoff (2, 4, 8, 16, 30, 30 s...)
    reqs = requests(out)
    times = [r["t"] for r in reqs]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(reqs) <= 10, times
    assert all(g >= 2000 for g in gaps), gaps
    assert len({r["rid"] for r in reqs}) == len(reqs)


def test_reply_timeout_retries_with_a_new_rid_after_backoff_not_a_flood(tmp_path):
    out = run_car(tmp_path, """
run(120000, 0.15, step=200)     # the gateway never answers for two minutes
""")
    reqs = requests(out)
    times = [r["t"] for r in reqs]
    # sent at 0; timeout 10 s + 2 s -> 12 s; + 10 + 4 -> 26 s; + 10 + 8 -> 44 s; + 10 + 16 -> 70 s; + 10 + 30 -> 110 s
    assert times == [0, 12000, 26000, 44000, 70000, 110000]
    assert len({r["rid"] for r in reqs}) == len(reqs)
    assert all(r["op"] == "reserve" for r in reqs)
    assert any("no reply to car-a-b00t-1 in 10 s, again in 2 s" in s for s in says(out))
    assert led_at(out, 9900) == SLOW and led_at(out, 10100) == FAST  # asking, then no answer


def test_expired_makes_a_new_request_with_a_new_rid(tmp_path):
    out = run_car(tmp_path, """
run(1000, 0.15)
reply_ok(res("r1"))
run(2000, 0.15)
reply_ok(res("r1", "confirmed"))
run(3000, 0.15)
event("expired", res("r1", "expired"))
run(4000, 0.15)
reply_ok(res("r2", station="st-2", slot=2))
run(5000, 0.15)
""")
    reqs = requests(out)
    assert [r["op"] for r in reqs] == ["reserve", "confirm", "reserve", "confirm"]
    assert len({r["rid"] for r in reqs}) == 4
    assert reqs[2]["t"] == 3100  # at once after the event (the next loop pass)
    assert reqs[3]["reservation"] == "r2"
    assert [t["state"] for t in telemetry(out)] == ["low", "heading", "low", "heading"]
    assert sum(s.startswith("slot reserved") for s in says(out)) == 2


def test_faulted_with_offer_adopts_it_and_without_asks_again(tmp_path):
    out = run_car(tmp_path, """
run(1000, 0.15)
reply_ok(res("r1"))
run(2000, 0.15)
reply_ok(res("r1", "confirmed"))
run(3000, 0.15)
event("faulted", res("r1", "faulted"), offer=res("r2", station="st-9", slot=2))
run(4000, 0.15)
reply_ok(res("r2", "confirmed", station="st-9", slot=2))
run(5000, 0.15)
event("faulted", res("r2", "faulted"))
run(6000, 0.15)
""")
    reqs = requests(out)
    assert [(r["op"], r.get("reservation")) for r in reqs] == [
        ("reserve", None), ("confirm", "r1"), ("confirm", "r2"), ("reserve", None)]
    assert reqs[3]["t"] == 5100
    assert any(s.startswith("slot reserved: station st-9 slot 2") for s in says(out))
    assert [t["state"] for t in telemetry(out)][-1] == "low"


def test_no_capacity_re_asks_after_backoff_not_at_once(tmp_path):
    out = run_car(tmp_path, """
run(1000, 0.15)
reply_err("no_capacity", earliest_free=1795000000)
run(20000, 0.15)
""")
    reqs = requests(out)
    times = [r["t"] for r in reqs]
    assert times[0] == 0
    assert times[1] == 1000 + 2000  # not at once: after the first backoff step
    assert times[2] == 3000 + 10000 + 4000  # then no reply: timeout + the next step
    assert any(s.startswith("no capacity (earliest free 11:06 UTC), asking again in 2 s") for s in says(out))
    assert led_at(out, 500) == SLOW and led_at(out, 1500) == FAST  # no answer possible -> fast blink


def test_charging_done_and_completed(tmp_path):
    out = run_car(tmp_path, """
run(1000, 0.15)
reply_ok(res("r1"))
run(2000, 0.15)
reply_ok(res("r1", "confirmed"))
run(3000, 0.15)
event("checked_in", res("r1", "checked_in"))
run(5000, 0.15)                    # plugged in, nothing flows yet
soc = 0.15
t = 5000
while soc < 0.85:
    soc += 0.01
    t += 1000
    run(t, soc)
event("completed", res("r1", "completed"))
run(t + 5000, soc)
run(t + 10000, 0.5)
run(t + 15000, 0.15)              # a new episode: a new question
""")
    tele = telemetry(out)
    states = []
    for m in tele:
        if not states or states[-1] != m["state"]:
            states.append(m["state"])
    assert states == ["low", "heading", "waiting", "charging", "done", "driving", "low"]
    charging = next(m for m in tele if m["state"] == "charging")
    assert charging["reservation"] == "r1" and charging["soc"] >= 0.16
    done_msg = next(m for m in tele if m["state"] == "done")
    assert done_msg["soc"] >= 0.8
    assert next(m for m in tele if m["state"] == "driving")["reservation"] is None
    assert [r["op"] for r in requests(out)] == ["reserve", "confirm", "reserve"]
    assert any(s.startswith("charged: soc 80 %") for s in says(out))


def test_offline_keeps_one_pending_request_and_sends_it_on_reconnect(tmp_path):
    out = run_car(tmp_path, """
ONLINE[0] = False
run(30000, 0.15)
ONLINE[0] = True
run(31000, 0.15)
""")
    reqs = requests(out)
    assert len(reqs) == 1 and reqs[0]["t"] == 30100
    assert led_patterns(out, 0, 30000) == {FAST}
    # nothing was queued: the first telemetry after the reconnect is the current state
    assert [(m["t"], m["state"]) for m in telemetry(out)] == [(30100, "low")]


def test_stale_and_foreign_messages_are_ignored(tmp_path):
    out = run_car(tmp_path, """
run(1000, 0.15)
deliver({"v": 1, "rid": "someone-else", "ok": True, "op": "reserve", "reservation": res("rX")})
car.on_message(b"not json")
deliver({"v": 2, "event": "expired", "reservation": res("r1")})
event("expired", res("rZ"))
run(2000, 0.15)
reply_ok(res("r1"))
run(3000, 0.15)
""")
    assert [r["op"] for r in requests(out)] == ["reserve", "confirm"]
    assert requests(out)[1]["reservation"] == "r1"


def test_heap_stays_flat_over_many_cycles(tmp_path):
    out = run_car(tmp_path, """
import gc
run(1000, 0.15)
del OUT[:]
gc.collect()
base = gc.mem_alloc()
n = 0
for i in range(150):
    reply_ok(res("r%d" % i))
    run(T[0] + 500, 0.15)
    event("expired", res("r%d" % i, "expired"))
    run(T[0] + 500, 0.15)
    n += 1
    if len(OUT) > 50:
        del OUT[:]
del OUT[:]
gc.collect()
OUT.append({"k": "drift", "bytes": gc.mem_alloc() - base, "n": n, "sent": SENT[0]})
""")
    drift = next(o for o in out if o["k"] == "drift")
    assert drift["n"] == 150 and drift["sent"] >= 300
    print(drift)
    assert drift["bytes"] < 1024, drift


def shown(out: list[dict]) -> list[dict]:
    return [o for o in out if o["k"] == "res"]


def test_overflow_answer_keeps_the_region_and_confirms_with_the_same_rid_on_timeout(tmp_path):
    """An ok reserve with region and broker: the slot is held in another region. The car keeps
    the reservation with that region (name, host, port: what the app hands over to), prints
    where it goes, and confirms; a confirm without a reply is repeated with the same rid."""
    out = run_car(tmp_path, """
run(1000, 0.15)
reply_overflow(res("r7", station="st-b"), region="south", host="10.0.0.2", port=1884)
show_res()
run(20000, 0.15)                 # confirm at 1000, no reply: again at 1000 + 10 s + 2 s
reply_ok(res("r7", "confirmed", station="st-b"))
show_res()
run(21000, 0.15)
""")
    reqs = requests(out)
    assert [r["op"] for r in reqs] == ["reserve", "confirm", "confirm"]
    assert reqs[1]["reservation"] == "r7" and reqs[1]["rid"] == reqs[2]["rid"] != reqs[0]["rid"]
    assert reqs[2]["t"] - reqs[1]["t"] == 12000  # the reply timeout, then the backoff
    first, then = shown(out)
    assert first["res"] == {"id": "r7", "station": "st-b", "slot": 1, "state": "held", "hold_until": 1795000120,
                            "region": ["south", "10.0.0.2", 1884]} and first["state"] == "heading"
    assert then["res"]["state"] == "confirmed" and then["res"]["region"] is None  # handed over by then
    lines = says(out)
    i = lines.index("overflow: slot held in region south, handing over to its broker 10.0.0.2:1884")
    assert lines[i + 1].startswith("slot reserved: station st-b slot 1, ")
    assert any(s.startswith("confirmed r7: kept until") for s in lines)
    assert led_at(out, 2000) == ON


def test_overflow_note_is_printed_and_the_retry_rules_stay(tmp_path):
    """A reply with `overflow` (why overflow did not help) is printed; the reply itself is
    handled as without it: no_capacity re-asks after the backoff, a local ok is adopted."""
    out = run_car(tmp_path, """
run(1000, 0.15)
reply_with(error={"code": "no_capacity", "message": "nothing reachable", "earliest_free": None},
           overflow={"code": "overflow_unavailable", "message": "the link to central is down"})
run(4000, 0.15)
reply_with(res("r1"), overflow={"code": "deadline_passed", "message": "central did not answer"})
run(5000, 0.15)
""")
    reqs = requests(out)
    assert [r["op"] for r in reqs] == ["reserve", "reserve", "confirm"]
    assert reqs[1]["t"] == 1000 + 2000  # the first backoff step, as without the note
    lines = says(out)
    assert "no overflow to another region: overflow_unavailable (the link to central is down)" in lines
    assert "no overflow to another region: deadline_passed (central did not answer)" in lines
    assert any(s.startswith("no capacity (earliest free never), asking again in 2 s") for s in lines)
    assert any(s.startswith("slot reserved: station st-1 slot 1") for s in lines)


def test_an_overflow_answer_without_a_usable_broker_is_ignored_and_asked_again(tmp_path):
    out = run_car(tmp_path, """
run(1000, 0.15)
reply_with(res("r1"), region="south", broker={"host": "10.0.0.2"})
show_res()
run(13000, 0.15)
""")
    reqs = requests(out)
    assert [r["op"] for r in reqs] == ["reserve", "reserve"]  # after the reply timeout + backoff
    assert reqs[1]["t"] == 12000 and reqs[1]["rid"] != reqs[0]["rid"]
    assert shown(out)[0]["res"] is None
    assert "reply: overflow answer without a usable region and broker, ignored" in says(out)


def test_leaving_the_region_never_gives_back_a_reservation(tmp_path):
    """leave_region (the app calls it only while no reservation keeps the session, but even so)
    cancels nothing; while low it forgets the pending reserve and asks the new region at once."""
    out = run_car(tmp_path, """
run(1000, 0.15)
reply_ok(res("r1"))
run(2000, 0.15)
car.leave_region(T[0])
run(3000, 0.15)
show_res()
reply_ok(res("r1", "confirmed"))
event("expired", res("r1", "expired"))
run(4000, 0.15)                 # asks again at once: a reserve pending
car.leave_region(T[0])          # the session moves before an answer: asked again, new rid
run(5000, 0.15)
""")
    reqs = requests(out)
    assert [r["op"] for r in reqs] == ["reserve", "confirm", "reserve", "reserve"]
    assert reqs[3]["t"] == 4100 and reqs[3]["rid"] != reqs[2]["rid"]
    assert shown(out)[0]["res"]["id"] == "r1" and shown(out)[0]["state"] == "heading"
    assert not any("gave back" in s for s in says(out))


def test_a_late_slot_s_offer_is_taken_like_a_fault_s(tmp_path):
    out = run_car(tmp_path, """
run(1000, 0.15)
reply_ok(res("r1"))
run(2000, 0.15)
reply_ok(res("r1", "confirmed"))
run(3000, 0.15)
event("faulted", res("r1", "faulted"), offer=res("r2"), reason="late")
run(4000, 0.15)
""")
    reqs = requests(out)
    assert [(r["op"], r.get("reservation")) for r in reqs] == [("reserve", None), ("confirm", "r1"), ("confirm", "r2")]
    assert "slot still busy: taking the offered one" in says(out)
    assert [t["state"] for t in telemetry(out)][-1] == "heading"
