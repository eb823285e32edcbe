# The car's state machine; hardware-free (no machine import), driven by the app's loop.
#
#   driving  --low episode starts-->  low: one reserve request (fresh rid)
#   low      no reply in time, no_capacity, refused: ask again after retry floor + backoff
#            with a fresh rid (LED fast blink until an answer comes); no_capacity with a
#            retry_after: not before it
#   any      rate_limited: the pending request again, same rid, after its retry_after
#            ok -> heading: one serial line; `confirm` if the slot is held
#   heading  expired / cancelled / faulted without offer -> low, ask again at once
#            faulted with an offer -> heading with the offer; checked_in -> waiting
#   waiting  measured soc rises -> charging; charging: soc >= target -> done
#   waiting / charging / done: completed -> driving (the episode is served)
#   an ok reserve naming another region (overflow): as ok, the reservation keeps that region
#   (car_reply); the app moves the session there before the confirm goes out
#
# At most one request is pending (the "queue" has one slot). Telemetry on every change of
# state and every telemetry_ms; offline nothing is queued, the latest goes out on reconnect.
# `now` is ticks_ms(); Unix times in reservations are only formatted (no RTC needed).
from micropython import const
from time import ticks_add, ticks_diff

from car_reply import handle, reservation_line, keep

DRIVING = "driving"
LOW = "low"
HEADING = "heading"
WAITING = "waiting"
CHARGING = "charging"
DONE = "done"

LED_OFF = const(0)  # driving, fine
LED_SLOW = const(1)  # 1 Hz: battery low, asking
LED_ON = const(2)  # slot held, heading there (also while plugged in)
LED_FAST = const(3)  # 5 Hz: no answer possible (no capacity, refused, offline)

CHARGE_RISE = 0.01  # soc above the check-in level that counts as charging


def _num(x):
    return str(int(x)) if x == int(x) else "%.6g" % x


class CarLogic:
    def __init__(self, car_id, model, send, say, backoff, boot_id="0", telemetry_ms=30000,
                 reply_timeout_ms=10000, retry_floor_ms=3000):
        """send(leaf, payload) -> bool publishes on car/<id>/<leaf> (request, telemetry);
        say(line) prints a serial line; backoff: delay() ms / reset() (lib backoff; every retry
        waits retry_floor_ms more, so full jitter never means "at once"); boot_id keeps rids
        unique across reboots (the gateway remembers rids for 24 h)."""
        self.car = car_id
        self._send = send
        self._say = say
        self._backoff = backoff
        self._boot = boot_id
        self.telemetry_ms = telemetry_ms
        self.reply_timeout_ms = reply_timeout_ms
        self.retry_floor_ms = retry_floor_ms
        self.target = model["target_soc"]
        self._tail = ',"battery_kwh":%s,"consumption_kwh_100km":%s,"max_ac_kw":%s,"max_dc_kw":%s,"target_soc":%s}' % (
            _num(model["battery_kwh"]), _num(model["consumption_kwh_100km"]), _num(model["max_ac_kw"]),
            _num(model["max_dc_kw"]), _num(model["target_soc"]))
        self.state = DRIVING
        self.res = None  # the current reservation (the gateway's object)
        self.soc = 0.0
        self.lat = 0.0
        self.lon = 0.0
        self.low = False
        self.online = False
        self.no_answer = False  # the last question got no usable answer
        self.served = False  # this episode was charged: no question until the next one
        self._seq = 0
        self._op = None  # the pending request: op, rid, payload, due, sent at (None: not yet)
        self._rid = None
        self._pl = None
        self._due = 0
        self._at = None
        self._ask_at = None  # LOW: when to ask (again)
        self._base = 0.0  # soc at check-in
        self._tele_at = 0
        self._tele_due = True
        self._now = 0

    def poll(self, now, soc, low, lat, lon, online):
        """Each loop pass: measured soc, the battery's low flag, position, session up."""
        self._now = now
        self.soc = soc
        self.lat = lat
        self.lon = lon
        if online and not self.online:
            self._tele_due = True  # after every (re)connect
        self.online = online
        st = self.state
        if low and not self.low:  # a new episode
            self.served = False
            if st == DRIVING:
                self._say("battery low: soc %d %%, asking for a charging point" % round(soc * 100))
                self._ask_at = now
                self._set(LOW)
        elif st == LOW and not low:
            self._say("battery fine again (soc %d %%), not asking" % round(soc * 100))
            self._op = self._ask_at = None
            self.no_answer = False
            self._backoff.reset()
            self._set(DRIVING)
        elif st == WAITING and soc >= self._base + CHARGE_RISE:
            self._say("charging: soc %d %%" % round(soc * 100))
            self._set(CHARGING)
        elif st == CHARGING and soc >= self.target:
            self._say("charged: soc %d %%, target reached: unplug to drive on" % round(soc * 100))
            self.served = True
            self._set(DONE)
        self.low = low
        if self.state == LOW and self._ask_at is not None and self._op is None and ticks_diff(now, self._ask_at) >= 0:
            self._ask_at = None
            self._queue("reserve", now)
        op = self._op
        if op is not None:
            if self._at is None:
                if online and ticks_diff(now, self._due) >= 0 and self._send("request", self._pl):
                    self._at = now
            elif ticks_diff(now, self._at) >= self.reply_timeout_ms:
                d = self._delay()
                self.no_answer = True
                self._say("no reply to %s in %d s, again in %d s" % (self._rid, self.reply_timeout_ms // 1000, d // 1000))
                if op == "reserve":  # a fresh question (soc and position move on): new rid
                    self._op = None
                    self._ask_at = ticks_add(now, d)
                else:  # confirm is idempotent per rid: the same request again
                    self._at = None
                    self._due = ticks_add(now, d)
        if self._tele_due or ticks_diff(now, self._tele_at) >= self.telemetry_ms:
            self._telemetry(now)

    def on_message(self, payload, now=None):
        """A message on car/<id>/reply: a reply to the pending request or an event."""
        if now is not None:
            self._now = now
        handle(self, payload, self._now)

    def leave_region(self, now):
        """The session moves to the region the position is in (called before it moves). The
        app does so only while the car holds no reservation: a reservation keeps the session
        with its region until it ends, across any boundary. Still low: forget the pending
        reserve (the old region's gateway may answer it there; an unconfirmed hold lapses by
        itself) and ask the new region's gateway at once."""
        self._tele_due = True
        if self.state == LOW:
            self._op = None
            self._ask_at = now

    def led_pattern(self):
        st = self.state
        if st == DRIVING:
            return LED_OFF
        if st == LOW:
            return LED_FAST if self.no_answer or not self.online else LED_SLOW
        return LED_ON

    def status_line(self):
        r = self.res
        return "%s: %s, soc %.3f, at %.5f %.5f, %s, reservation %s, pending %s" % (
            self.car, self.state, self.soc, self.lat, self.lon, "online" if self.online else "offline",
            r and r.get("id"), self._op)

    # ---- inside

    def _delay(self):
        return self.retry_floor_ms + self._backoff.delay()

    def _set(self, st):
        if st != self.state:
            self.state = st
            self._tele_due = True
            self._telemetry(self._now)  # every change, in order

    def _telemetry(self, now):
        r = self.res
        if self.online and self._send("telemetry", '{"v":1,"soc":%.3f,"lat":%.5f,"lon":%.5f,"state":"%s","reservation":%s}' % (
                self.soc, self.lat, self.lon, self.state, '"%s"' % r.get("id") if r else "null")):
            self._tele_due = False
            self._tele_at = now

    def _request(self, op):
        self._seq += 1
        rid = "%s-%s-%d" % (self.car, self._boot, self._seq)
        p = '{"v":1,"op":"%s","rid":"%s","car":"%s",' % (op, rid, self.car)
        if op == "reserve":
            p += '"lat":%.5f,"lon":%.5f,"soc":%.3f' % (self.lat, self.lon, min(1.0, max(0.0, self.soc))) + self._tail
        else:
            p += '"reservation":"%s"}' % self.res.get("id")
        return rid, p

    def _queue(self, op, now):
        rid, p = self._request(op)
        if len(p) > 512:  # the protocol's limit; cannot happen with valid ids
            self._say("request too large, not sent")
            return
        self._op = op
        self._rid = rid
        self._pl = p
        self._due = now
        self._at = None

    def _adopt(self, r, now):
        self._say(reservation_line(r))
        r = self.res = keep(r)
        self.no_answer = False
        self._ask_at = None
        st = r.get("state")
        if st == "checked_in":
            self._checked_in()
            return
        self._set(HEADING)
        if st == "held":
            self._queue("confirm", now)

    def _checked_in(self):
        self._base = self.soc
        self._set(WAITING)

    def _lost(self, now, why):
        self.res = self._op = None
        if self.low and not self.served:
            self._say(why + ": asking again")
            self._ask_at = now
            self._set(LOW)
        else:
            self._say(why + ": battery fine, driving on")
            self._set(DRIVING)
