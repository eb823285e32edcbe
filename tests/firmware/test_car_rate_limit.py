"""The car (firmware/car/car_reply.py, on the MicroPython unix port with a 96 KB heap) obeys a
rate_limited reply (the same request again after retry_after, not at the backoff's pace) and
the retry_after of a no_capacity refusal (a fresh question, not before it)."""
from __future__ import annotations

from test_car_logic import requests, run_car, says


def test_a_rate_limited_reserve_is_asked_again_after_retry_after_with_the_same_rid(tmp_path):
    out = run_car(tmp_path, """
run(1000, 0.15)                              # reserve at 0
reply_err("rate_limited", retry_after=7)     # at 1000: the backoff alone would ask at 3000
run(9000, 0.15)
""")
    reqs = requests(out)
    assert [(r["op"], r["t"]) for r in reqs] == [("reserve", 0), ("reserve", 8000)]
    assert reqs[0]["rid"] == reqs[1]["rid"]  # nothing was decided for it: the same request
    assert "rate limited: reserve again in 7 s" in says(out)


def test_a_rate_limited_confirm_is_sent_again_after_retry_after(tmp_path):
    out = run_car(tmp_path, """
run(1000, 0.15)
reply_ok(res("r1"))                          # held: confirm at the next pass
run(2000, 0.15)
reply_err("rate_limited", retry_after=5)
run(10000, 0.15)
reply_ok(res("r1", "confirmed"))
run(11000, 0.15)
show_res()
""")
    reqs = requests(out)
    assert [(r["op"], r["t"]) for r in reqs] == [("reserve", 0), ("confirm", 1100), ("confirm", 7000)]
    assert reqs[1]["rid"] == reqs[2]["rid"] and reqs[2]["reservation"] == "r1"
    [shown] = [o for o in out if o["k"] == "res"]
    assert shown["res"]["state"] == "confirmed" and shown["state"] == "heading"


def test_a_retry_after_that_is_no_usable_number_leaves_the_backoff(tmp_path):
    out = run_car(tmp_path, """
run(1000, 0.15)
reply_err("rate_limited", retry_after="soon")
run(4000, 0.15)
reply_err("rate_limited", retry_after=1e9)
run(9000, 0.15)
""")
    times = [r["t"] for r in requests(out)]
    assert times == [0, 3000, 8000]  # the backoff's 2 s, then 4 s


def test_a_refused_reserve_asks_again_after_the_retry_after_of_no_capacity(tmp_path):
    out = run_car(tmp_path, """
run(1000, 0.15)                                                   # reserve at 0
reply_err("no_capacity", earliest_free=1795000000, retry_after=600)
run(602000, 0.15)
""")
    reqs = requests(out)
    assert [r["t"] for r in reqs] == [0, 601000]  # not the backoff's 2 s
    assert reqs[0]["rid"] != reqs[1]["rid"]  # a fresh question: the first was answered
    assert any(s.startswith("no capacity (earliest free 11:06 UTC), asking again in 600 s") for s in says(out))


def test_a_no_capacity_without_a_usable_retry_after_keeps_the_backoff(tmp_path):
    out = run_car(tmp_path, """
run(1000, 0.15)
reply_err("no_capacity", earliest_free=None, retry_after=-5)
run(4000, 0.15)
reply_err("no_capacity", earliest_free=None, retry_after=1e9)
run(9000, 0.15)
""")
    assert [r["t"] for r in requests(out)] == [0, 3000, 8000]
