# What the car does with a message on car/<id>/reply: a reply to its pending request or an
# unsolicited event (docs/protocol.md). Part of car_logic (kept apart so that each module
# compiles in a small heap); hardware-free.
# An ok `reserve` reply with `region` and `broker` is an overflow answer (docs/protocol.md,
# "Across regions"): the slot is held in that region. The kept reservation then carries
# "region": (name, host, port), and the app hands the session over to that broker before the
# logic's confirm goes out (car_app.step). A reply with `overflow` says why overflow did not
# help; it is printed, the reply is handled as it would be without it.
# A `rate_limited` refusal decided nothing: the same request (same rid) goes out again after
# the reply's `retry_after` seconds (at least the backoff's next delay). A `no_capacity`
# refusal's `retry_after` says when asking again can succeed: the car waits that long too.
import json

from micropython import const
from time import ticks_add


def hhmm(t, sec=False):
    """HH:MM (HH:MM:SS) UTC of a Unix time."""
    if type(t) is not int and type(t) is not float:
        return "?"
    s = int(t) % 86400
    r = "%02d:%02d" % (s // 3600, s % 3600 // 60)
    return r + ":%02d" % (s % 60) if sec else r


_KEEP = ("id", "station", "slot", "state", "hold_until", "region")
_MAX_WAIT_S = const(3600)  # a retry_after beyond this is not believed (the backoff applies)


def keep(r):
    """The part of a reservation object the car uses later (the rest is printed once and
    dropped: every byte counts on a board without PSRAM). "region" is set by handle() for an
    overflow answer only: (name, host, port) of the region holding the slot; None otherwise
    (the region of the session it came on)."""
    return {k: r.get(k) for k in _KEEP}


def reservation_line(r):
    """The one readable serial line for a reservation."""
    g = r.get
    return ("slot reserved: station %s slot %s, %.1f km, ETA %s UTC, wait %d min, charge %d min, %.2f EUR, "
            "hold until %s UTC (%s %s)") % (
        g("station"), g("slot"), g("distance_km") or 0, hhmm(g("eta")), round(g("wait_min") or 0),
        round(g("charge_min") or 0), g("price_eur") or 0, hhmm(g("hold_until"), True), g("id"), g("state"))


def _after(lg, err):
    """ms until the car asks again: the reply's retry_after if it is a believable number of
    seconds, at least the backoff's next delay."""
    d = err.get("retry_after")
    return max(lg._delay(), int(d * 1000) if (type(d) is int or type(d) is float) and 0 < d <= _MAX_WAIT_S else 0)


def handle(lg, payload, now):
    """Apply one reply / event to the CarLogic lg."""
    try:
        m = json.loads(payload)
        ok = m.get("v") == 1
    except (ValueError, AttributeError):
        ok = False
    if not ok:
        lg._say("reply: not a v1 JSON object, ignored")
        return
    ev = m.get("event")
    r = m.get("reservation")
    if type(r) is not dict:
        r = None
    if ev is not None:
        cur = lg.res
        rid = r and r.get("id")
        if cur is None or rid != cur.get("id"):
            lg._say("event %s for %s: not the current reservation, ignored" % (ev, rid))
        elif ev == "checked_in":
            lg.res = keep(r)
            lg._op = None  # a confirm in flight is moot now
            lg._say("checked in at station %s slot %s" % (r.get("station"), r.get("slot")))
            lg._checked_in()
        elif ev == "completed":
            lg._say("unplugged: %s completed, driving on" % rid)
            lg.res = lg._op = None
            lg.served = True
            lg._set("driving")
        elif ev == "faulted" and type(m.get("offer")) is dict:
            lg._say("slot %s: taking the offered one" % ("still busy" if m.get("reason") == "late" else "out of service"))
            lg._op = None
            lg._adopt(m["offer"], now)
        elif ev in ("expired", "cancelled", "faulted"):
            lg._lost(now, "reservation %s %s" % (rid, ev))
        return
    if lg._op is None or m.get("rid") != lg._rid:
        lg._say("reply for %s: not the pending request, ignored" % m.get("rid"))
        return
    op = lg._op
    lg._op = None
    ev = m.get("overflow")  # why overflow to another region did not help (local reply)
    if type(ev) is dict:
        lg._say("no overflow to another region: %s (%s)" % (ev.get("code"), ev.get("message")))
    if m.get("ok") is True:
        if r is None:
            return
        if op == "reserve":
            ev = m.get("region")
            if ev is not None:  # an overflow answer: held in region ev, reached at broker
                b = m.get("broker")
                if type(ev) is not str or type(b) is not dict or type(b.get("host")) is not str \
                        or type(b.get("port")) is not int:
                    lg._op = op  # as if it never came: the reply timeout asks again
                    lg._say("reply: overflow answer without a usable region and broker, ignored")
                    return
                r["region"] = ev = (ev, b["host"], b["port"])
                lg._say("overflow: slot held in region %s, handing over to its broker %s:%d" % ev)
            lg._backoff.reset()
            lg._adopt(r, now)
        elif lg.res is not None and r.get("id") == lg.res.get("id"):
            lg.res = keep(r)
            lg._say("confirmed %s: kept until %s UTC" % (r.get("id"), hhmm(r.get("hold_until"))))
        return
    err = m.get("error")
    if type(err) is not dict:
        err = {}
    code = err.get("code")
    if code == "rate_limited":
        # asked too often: nothing was decided; the same request again once the gateway allows
        d = _after(lg, err)
        lg._op = op
        lg._at = None
        lg._due = ticks_add(now, d)
        lg._say("rate limited: %s again in %d s" % (op, d // 1000))
        return
    if op == "reserve":
        lg.no_answer = True
        d = _after(lg, err) if code == "no_capacity" else lg._delay()
        lg._ask_at = ticks_add(now, d)
        if code == "no_capacity":
            ef = err.get("earliest_free")
            lg._say("no capacity (earliest free %s), asking again in %d s"
                    % ("never" if ef is None else hhmm(ef) + " UTC", d // 1000))
        else:
            lg._say("refused: %s %s, asking again in %d s" % (code, err.get("message"), d // 1000))
    elif code == "unknown_reservation":
        lg._lost(now, "reservation gone")
    else:
        lg._say("confirm refused: %s %s" % (code, err.get("message")))
