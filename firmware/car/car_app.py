# The car board's loop (docs/firmware.md). car_boot builds a CarApp from config.json and the
# hardware objects and then drops itself, so only what runs stays in RAM: the hardware-free
# parts (battery, route, car_logic), lib's Wifi and Session, the serial console.
# A loop pass (_LOOP_MS): Wi-Fi, MQTT session (replies go to the logic), serial input; every
# _BATTERY_MS a battery reading and the route (every _REGION_MS the region check); the logic
# (requests, telemetry); the status LED; gc.collect() every _GC_MS. While the session waits
# on its socket (a silent broker), the status LED keeps its pattern (idle). Nothing happens
# at import time.
#
# Attributes (set by car_boot.boot): car (id), battery, route, wifi, logic, console, session
# (None until the first step opens it), region (index into _regions: (name, host, port); the
# last one is the home region of the common keys, used while the position is in no
# configured region), _bounds (per region, None for the home one), _broker (user, password,
# keepalive), _topics (leaf -> topic), _adc, _led, _level, _t (ticks of the last battery
# reading, route step, region check, gc).
import gc

from micropython import const
from time import sleep_ms, ticks_diff, ticks_ms

import log
from backoff import Backoff
from route import find_region
from session import Session
from topics import topic

_LOOP_MS = const(20)
_BATTERY_MS = const(200)
_REGION_MS = const(1000)
_GC_MS = const(1000)


class CarApp:
    def _say(self, line):
        log.info("car:", line)

    def _send(self, leaf, payload):
        s = self.session
        return s is not None and s.publish(self._topics[leaf], payload)

    def _open(self):
        """A persistent session to the broker of the current region with its topics (the topic
        tree, the Last Will and the reply subscription all carry the region's name)."""
        name, host, port = self._regions[self.region]
        car = self.car
        tp = self._topics
        tp["request"] = topic(name, "car", car, "request")
        tp["telemetry"] = topic(name, "car", car, "telemetry")
        user, pw, ka = self._broker
        s = Session(car, host, port, user, pw, ka, topic(name, "car", car, "online"), self._on_message,
                    Backoff(1000, 30000))
        s.subscribe(topic(name, "car", car, "reply"))
        s.clean = False  # replies and events sent while the car reconnects wait in the broker
        s.idle = self._idle
        self.session = s

    def _on_message(self, topic_b, msg):
        self.logic.on_message(msg, ticks_ms())

    def _check_region(self, now):
        rt = self.route
        i = find_region(self._bounds, rt.lat, rt.lon, self.region)
        if i < 0 or i == self.region:
            return
        old = self._regions[self.region]
        new = self._regions[i]
        if old == new:  # the home region is this one
            self.region = i
            return
        log.info("car: left region %s at %.5f %.5f, now in region %s: switching to broker %s:%d"
                 % (old[0], rt.lat, rt.lon, new[0], new[1], new[2]))
        self.logic.leave_region(now)  # gives back a held slot on the old broker
        self.session.disconnect()
        self.session = None
        self.region = i
        gc.collect()
        self._open()

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
            self._open()
        up = self.wifi.poll(now) and self.session.poll(now)
        self.console.poll()
        t = self._t
        b = self.battery
        rt = self.route
        lg = self.logic
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
        self._show(now)
        if ticks_diff(now, t[3]) >= _GC_MS:
            t[3] = now
            gc.collect()

    def run(self):
        while True:
            self.step(ticks_ms())
            sleep_ms(_LOOP_MS)
