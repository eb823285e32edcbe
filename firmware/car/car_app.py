# The car board's loop (docs/firmware.md). car_boot builds a CarApp from config.json and the
# hardware objects and then drops itself, so only what runs stays in RAM: the hardware-free
# parts (battery, route, car_logic), lib's Wifi and Session, the serial console.
# A loop pass (_LOOP_MS): Wi-Fi, MQTT session (replies go to the logic), serial input; every
# _BATTERY_MS a battery reading and the route (every _REGION_MS the region check); the logic
# (requests, telemetry); the status LED; gc.collect() every _GC_MS. While the session waits
# on its socket (a silent broker), the status LED keeps its pattern (idle). Nothing happens
# at import time.
#
# Regions: the session follows the position (the region check, every _REGION_MS) unless the
# car holds a reservation: then it stays with the reservation's region until the reservation
# ends (completed, expired, cancelled, faulted), whatever boundary the car crosses, and only
# then follows the position again. An overflow answer (car_reply) puts the reservation in
# another region: handover() moves the session there before the confirm goes out.
#
# Attributes: car (id), battery, route, wifi, logic, console, session (None until the first
# step opens it: open_session), region (index into regions: (name, host, port); after the
# configured regions comes the home region of the common keys, used while the position is in
# no configured region, then at most one region met through an overflow answer, not in
# config.json), topics (leaf -> topic, the current region's), _bounds (per configured region,
# None for the home one), _broker (user, password, keepalive), _tls (None: plain TCP; else
# the SSL context trusting the pinned CA and {host: server name}, the host itself where none
# is given: every broker the car meets must show a certificate of that CA for its name),
# _level (the status LED's), _t
# (ticks of the last battery reading, route step, region check, gc); _stay: not None while a
# reservation keeps the session away from the position's region (the index of that region, or
# of the reservation's own right after an overflow hand-over), so that the region check runs
# in the very pass the reservation ends, before the logic asks again.
import gc

from micropython import const
from time import sleep_ms, ticks_add, ticks_diff, ticks_ms

import log
from backoff import Backoff
from car_logic import CarLogic
from car_serial import Console
from route import find_region
from session import Session
from topics import topic
from wifi import Wifi

_LOOP_MS = const(20)
_BATTERY_MS = const(200)
_REGION_MS = const(1000)
_GC_MS = const(1000)


class CarApp:
    _stay = None

    def __init__(self, car, model, battery, route, regions, bounds, region, broker, wifi, wlan, adc, led,
                 boot_id, telemetry_ms, tls=None):
        """car: the car's id; model: its EV model (config.json's "model"); battery, route: its
        Battery and Route; regions: [(name, host, port)], the configured regions then the home
        one; bounds: [lat_min, lon_min, lat_max, lon_max] per configured region, then None;
        region: the index in regions to start in; broker: (user, password, keepalive); wifi:
        {"ssid", "password"}; wlan: network.WLAN(STA_IF); adc: the battery's machine.ADC; led:
        the status LED's machine.Pin; boot_id: text that keeps request ids unique across
        reboots; telemetry_ms: the telemetry period; tls: None (plain TCP) or (SSL context
        with the pinned CA, lib pinned.py; {host: server name}) for every broker."""
        self.car = car
        self.battery = battery
        self.route = route
        self.regions = regions
        self._bounds = bounds
        self.region = region
        self._broker = broker
        self._tls = tls
        self._adc = adc
        self._led = led
        self._level = -1
        self.topics = {}
        self.session = None
        self.wifi = Wifi(wlan, wifi["ssid"], wifi["password"], Backoff(500, 30000))
        self.logic = CarLogic(car, model, self._send, self._say, Backoff(2000, 60000), boot_id, telemetry_ms)
        self.console = Console(self)
        now = ticks_ms()
        self._t = [ticks_add(now, -1000), now, now, now]

    def _say(self, line):
        log.info("car:", line)

    def _send(self, leaf, payload):
        s = self.session
        return s is not None and s.publish(self.topics[leaf], payload)

    def open_session(self):
        """A persistent session to the broker of the current region with its topics (the topic
        tree, the Last Will and the reply subscription all carry the region's name)."""
        name, host, port = self.regions[self.region]
        car = self.car
        tp = self.topics
        tp["request"] = topic(name, "car", car, "request")
        tp["telemetry"] = topic(name, "car", car, "telemetry")
        user, pw, ka = self._broker
        s = Session(car, host, port, user, pw, ka, topic(name, "car", car, "online"), self._on_message,
                      Backoff(1000, 30000))
        s.subscribe(topic(name, "car", car, "reply"))
        s.clean = False  # replies and events sent while the car reconnects wait in the broker
        t = self._tls
        if t is not None:
            s.tls = (t[0], t[1].get(host, host))
        s.idle = self._idle
        self.session = s

    def _on_message(self, topic_b, msg):
        self.logic.on_message(msg, ticks_ms())

    def handover(self, region, host, port):
        """Move the session to region's broker host:port, as the region check does on a
        boundary: disconnect (online false, retained), then a new persistent session with that
        region's topics, same user and password (the car must be provisioned on that broker
        too). Also for a region not in config.json (an overflow answer): it takes the one entry
        of regions after the configured and home ones."""
        g = self.regions
        r = (region, host, port)
        if r not in g:
            del g[len(self._bounds):]  # the previous region met through an overflow answer
            g.append(r)
        log.info("car: handing over to region %s: broker %s:%d" % r)
        s = self.session
        if s is not None:
            s.disconnect()
        self.session = None
        self.region = g.index(r)
        self._stay = None
        gc.collect()
        self.open_session()

    def _check_region(self, now):
        rt = self.route
        i = find_region(self._bounds, rt.lat, rt.lon, self.region)
        old = self._stay
        self._stay = None
        if i < 0 or i == self.region:
            return
        new = self.regions[i]
        if new == self.regions[self.region]:  # the home region is this one
            self.region = i
            return
        r = self.logic.res
        if r is not None:  # the reservation keeps the session with its region until it ends
            self._stay = i
            if old != i:
                log.info("car: now in region %s at %.5f %.5f, staying with region %s while reservation %s lasts"
                         % (new[0], rt.lat, rt.lon, self.regions[self.region][0], r.get("id")))
            return
        log.info("car: left region %s at %.5f %.5f, now in region %s"
                 % (self.regions[self.region][0], rt.lat, rt.lon, new[0]))
        self.logic.leave_region(now)  # a pending reserve is asked again in the new region
        self.handover(*new)

    def _idle(self):
        self._show(ticks_ms())

    def _show(self, now):
        p = self.logic.led_pattern()  # off / 1 Hz / on / 5 Hz
        v = 1 if p == 2 else ((now // 500) & 1 if p == 1 else (now // 100) & 1 if p == 3 else 0)
        if v != self._level:
            self._level = v
            self._led.value(v)

    def step(self, now):
        """One pass of the loop."""
        if self.session is None:  # the first pass (after car_boot has gone) opens it
            self.open_session()
        up = self.wifi.poll(now) and self.session.poll(now)
        lg = self.logic
        r = lg.res
        if r is None:
            if self._stay is not None:  # the reservation that kept the session has ended
                self._check_region(now)
        else:
            r = r["region"]
            if type(r) is tuple and r != self.regions[self.region]:  # an overflow answer
                self.handover(*r)  # before the confirm goes out (lg.poll below)
                self._stay = self.region  # when it ends: the region check at once
        up = up and self.session.connected
        self.console.poll()
        t = self._t
        b = self.battery
        rt = self.route
        if ticks_diff(now, t[0]) >= _BATTERY_MS:
            t[0] = now
            b.read(self._adc)
            rt.paused = lg.state in ("waiting", "charging", "done")  # plugged in
            rt.advance(ticks_diff(now, t[1]))
            t[1] = now
            if ticks_diff(now, t[2]) >= _REGION_MS:
                t[2] = now
                self._check_region(now)
                up = up and self.session.connected
        lg.poll(now, b.soc, b.low, rt.lat, rt.lon, up)  # every pass: answers go out at once
        # the time now, not the pass's start: _idle() may have shown a later phase meanwhile,
        # and going back to it would flicker the LED
        self._show(ticks_ms())
        if ticks_diff(now, t[3]) >= _GC_MS:
            t[3] = now
            gc.collect()

    def run(self):
        while True:
            self.step(ticks_ms())
            sleep_ms(_LOOP_MS)
