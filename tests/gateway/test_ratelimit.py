"""The per-car request limit (gateway/ratelimit.py), the flood-summarising warnings
(gateway/floodlog.py) and both in the engine, with the time passed in; the config keys."""
from __future__ import annotations

import logging

import pytest
from test_engine import REGION, T0, make, replies, reserve

from recarga.core.config_file import ConfigError
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.gateway import config as C
from recarga.gateway.floodlog import FLOOD_WINDOW_S, FloodLog
from recarga.gateway.ratelimit import Limited, RateLimit, RateLimiter

# ---------------------------------------------------------------- the limiter


def test_a_burst_is_admitted_then_one_request_per_interval():
    lim = RateLimiter(RateLimit(requests_per_min=12, burst=3))  # one every 5 s after 3 at once
    assert [lim.admit("c1", T0) for _ in range(3)] == [None, None, None]
    assert lim.admit("c1", T0) == Limited(5.0, True)  # told once when it may ask again
    assert lim.admit("c1", T0 + 1) == Limited(4.0, False)  # the rest until then: no answer
    assert lim.admit("c1", T0 + 4.9) == Limited(pytest.approx(0.1), False)
    assert lim.admit("c1", T0 + 5) is None
    assert lim.admit("c1", T0 + 5) == Limited(5.0, True)  # the next refusal period: told again


def test_a_car_asking_at_the_rate_is_never_refused_and_a_faster_one_is():
    lim = RateLimiter(RateLimit(requests_per_min=12, burst=2))
    assert all(lim.admit("steady", T0 + 5 * i) is None for i in range(1000))
    refused = [lim.admit("fast", T0 + 4 * i) for i in range(20)]
    assert any(r is not None for r in refused)
    assert all(r.retry_after <= 5.0 for r in refused if r is not None)


def test_cars_have_separate_allowances():
    lim = RateLimiter(RateLimit(requests_per_min=1, burst=2))
    assert lim.admit("a", T0) is None and lim.admit("a", T0) is None
    assert lim.admit("a", T0) is not None
    assert lim.admit("b", T0) is None and lim.admit("b", T0) is None


def test_a_clock_set_back_locks_a_car_out_for_one_interval_at_most():
    lim = RateLimiter(RateLimit(requests_per_min=12, burst=2))
    assert lim.admit("c1", T0) is None and lim.admit("c1", T0) is None
    back = T0 - 3600  # the wall clock set back an hour
    refused = lim.admit("c1", back)
    assert refused is not None and refused.retry_after <= 5.0
    assert lim.admit("c1", back + 5) is None


def test_idle_cars_are_forgotten():
    lim = RateLimiter(RateLimit(requests_per_min=60, burst=5))
    for i in range(100):
        lim.admit(f"c{i}", T0)
    lim.admit("busy", T0 + 10)
    lim.forget_idle(T0 + 10)
    assert len(lim) == 1
    assert lim.admit("c1", T0 + 10) is None  # a forgotten car starts with its whole burst


# ---------------------------------------------------------------- the flood log

LOG = logging.getLogger("test.floodlog")


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOG.name and r.levelno == logging.WARNING]


def test_an_ordinary_mistake_gets_its_ordinary_line_and_no_summary(caplog):
    caplog.set_level(logging.WARNING, logger=LOG.name)
    fl = FloodLog(LOG)
    fl.refused("c1", "bad_json", T0, "car %s: rejected request (%s)", "c1", "bad_json")
    fl.flush(T0 + FLOOD_WINDOW_S)
    fl.refused("c1", "no_capacity", T0 + 20, "car %s: refused (%s)", "c1", "no_capacity")
    fl.flush(T0 + 20 + FLOOD_WINDOW_S)
    assert lines(caplog) == ["car c1: rejected request (bad_json)", "car c1: refused (no_capacity)"]
    assert len(fl) == 0


def test_a_flood_is_one_line_and_a_summary_per_window(caplog):
    caplog.set_level(logging.WARNING, logger=LOG.name)
    fl = FloodLog(LOG)
    for i in range(2000):  # 2,000 in 2 s: 1,500 over the limit, 500 invalid
        kind = "invalid" if i % 4 == 0 else "rate_limited"
        fl.refused("c1", kind, T0 + i / 1000, "car %s: request refused (%s)", "c1", kind)
    fl.refused("c2", "bad_state", T0 + 1, "car %s: refused (%s)", "c2", "bad_state")  # another car: its own line
    assert lines(caplog) == ["car c1: request refused (invalid)", "car c2: refused (bad_state)"]
    fl.flush(T0 + FLOOD_WINDOW_S - 0.01)
    assert len(lines(caplog)) == 2
    fl.flush(T0 + FLOOD_WINDOW_S)
    assert lines(caplog)[2:] == ["car c1: 2,000 requests refused (rate_limited 1,500, invalid 500) in the last 10 s"]
    # the flood goes on: counted in the next window, one summary at its end
    for i in range(300):
        fl.refused("c1", "rate_limited", T0 + 11 + i / 100, "car %s: request refused", "c1")
    fl.flush(T0 + 2 * FLOOD_WINDOW_S)
    assert lines(caplog)[3:] == ["car c1: 300 requests refused (rate_limited 300) in the last 10 s"]
    # a quiet window closes the account: the next refusal is an ordinary line again
    fl.flush(T0 + 3 * FLOOD_WINDOW_S)
    assert len(lines(caplog)) == 4 and len(fl) == 0
    fl.refused("c1", "invalid", T0 + 40, "car %s: rejected request", "c1")
    assert lines(caplog)[4:] == ["car c1: rejected request"]


def test_a_window_that_ended_without_a_flush_is_summarised_by_the_next_refusal(caplog):
    caplog.set_level(logging.WARNING, logger=LOG.name)
    fl = FloodLog(LOG)
    fl.refused("c1", "invalid", T0, "first")
    fl.refused("c1", "invalid", T0 + 1, "second")
    fl.refused("c1", "invalid", T0 + 30, "third")
    assert lines(caplog) == ["first", "car c1: 2 requests refused (invalid 2) in the last 10 s", "third"]


# ---------------------------------------------------------------- in the engine


def flood_payload(car: str, i: int) -> bytes:
    """Every other one invalid, the rest a cancel of a reservation the car does not have."""
    if i % 2:
        return b'{"v":1,"op":"reserve","rid":"x' + str(i).encode() + b'"'  # cut short: bad_json
    return W.encode(D.reservation_request("cancel", f"q{i}", car, "r-none"))


def test_a_flooding_car_is_refused_with_retry_after_and_nothing_is_kept_for_it(caplog):
    caplog.set_level(logging.DEBUG, logger="recarga.engine")
    e = make(rate_limit=RateLimit(requests_per_min=12, burst=10))
    answers, kept = [], []
    for i in range(2000):  # 2,000 requests in 2 s
        now = T0 + i / 1000
        res = e.car_message("flood", flood_payload("flood", i), now)
        answers += replies(res, "flood")
        kept += [res.request] if res.request else []
        assert res.changed == [] and res.station is None
        if i == 1000:  # another car in the middle of it is served
            [ok] = replies(reserve(e, "c2", "q1", now), "c2")
            assert ok["ok"] and ok["reservation"]["state"] == "held"
    limited = [a for a in answers if not a["ok"] and a["error"]["code"] == D.RATE_LIMITED]
    assert len(answers) == 10 + len(limited)  # the burst answered as usual, then the refusals
    assert len(limited) == 1  # a reply per refusal period (5 s), not per request
    first = limited[0]
    assert first["rid"] == "q10" and first["error"]["retry_after"] == 5
    assert "ask again in 5 s" in first["error"]["message"]
    assert len(kept) == 5 and len(e.requests) == 5 + 1  # the burst's refused cancels (+ c2's reserve)
    assert list(e.reservations.values())[0].car == "c2"
    e.tick(T0 + 2 + FLOOD_WINDOW_S)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("car flood: refused request q0 (unknown_reservation)")
    assert warnings[1] == ("car flood: 2,000 requests refused (rate_limited 1,990, invalid 5, "
                           "unknown_reservation 5) in the last 10 s")


def test_a_rate_limited_rid_gets_its_real_answer_once_the_car_may_ask_again():
    e = make(rate_limit=RateLimit(requests_per_min=6, burst=2))
    cancel = W.encode(D.reservation_request("cancel", "a", "c1", "r-none"))
    e.car_message("c1", cancel, T0)
    e.car_message("c1", W.encode(D.reservation_request("cancel", "b", "c1", "r-none")), T0)
    req = reserve(e, "c1", "q1", T0 + 1)
    [refused] = replies(req, "c1")
    assert refused["rid"] == "q1" and refused["error"]["code"] == D.RATE_LIMITED
    assert refused["error"]["retry_after"] == 9 and req.request is None and req.changed == []
    [ok] = replies(reserve(e, "c1", "q1", T0 + 10), "c1")  # the same request, when it may
    assert ok["ok"] and ok["rid"] == "q1"


def test_the_flood_reply_topic_is_the_cars_own():
    e = make(rate_limit=RateLimit(requests_per_min=1, burst=2))
    for i in range(3):
        res = e.car_message("c1", b"{", T0)
    [m] = res.messages
    assert m.topic == D.car_topic(REGION, "c1", "reply") and m.payload["rid"] is None


# ---------------------------------------------------------------- configuration

BASE = 'region = "berlin"\ndatabase = "g.db"\n[broker]\npassword = "x"\n'


def test_the_limit_is_configured_with_defaults_a_car_never_reaches(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(BASE)
    assert C.load(path).engine.rate_limit == RateLimit(20.0, 20)
    path.write_text(BASE + "[rate_limit]\nrequests_per_min = 30\nburst = 4\n")
    assert C.load(path).engine.rate_limit == RateLimit(30, 4)


@pytest.mark.parametrize("table, message", [
    ("requests_per_min = 0", "[rate_limit] requests_per_min = 0 outside 1..60000"),
    ("requests_per_min = nan", "[rate_limit] requests_per_min"),
    ("requests_per_min = 1e9", "[rate_limit] requests_per_min = 1000000000.0 outside 1..60000"),
    ("burst = 1", "[rate_limit] burst = 1 outside 2..10000"),
    ("burst = 2.5", "[rate_limit] burst has the wrong type (float)"),
    ("per_second = 3", "unknown key 'per_second' at [rate_limit]"),
])
def test_limits_outside_their_bounds_are_refused(tmp_path, table, message):
    path = tmp_path / "g.toml"
    path.write_text(f"{BASE}[rate_limit]\n{table}\n")
    with pytest.raises(ConfigError) as e:
        C.load(path)
    assert message in str(e.value)
