# The car board: config, hardware objects and the one loop (docs/firmware.md).
# main() validates config.json (car_config, dropped again after boot), builds machine.ADC,
# the status LED Pin and network.WLAN from the config's pins and runs CarApp, which owns the
# hardware-free parts (battery, route, car_logic) and lib's Wifi and Session.
# A loop pass (_LOOP_MS): Wi-Fi, MQTT session (replies go to the logic), serial input; every
# _BATTERY_MS a battery reading and the route (every _REGION_MS the region check); the logic
# (requests, telemetry); the status LED; gc.collect() every _GC_MS. Nothing happens at import
# time.
import gc
import sys
import time

from micropython import const

import log
from backoff import Backoff
from topics import topic

_LOOP_MS = const(20)
_BATTERY_MS = const(200)
_REGION_MS = const(1000)
_GC_MS = const(1000)


class CarApp:
    def __init__(self, cfg, adc, led, wlan, boot_id="0"):
        from car_logic import CarLogic  # loaded by boot() already
        from session import Session
        from battery import Battery
        from route import Route, find_region
        from wifi import Wifi

        self._Session = Session
        self._find = find_region
        self.cfg = cfg
        self.car = cfg["id"]
        self._adc = adc
        self._led = led
        self._level = -1
        b = cfg["battery"]
        th = cfg["thresholds"]
        self.battery = Battery(b["divider"], b["curve"], b["samples"], th["ask_below"], th["clear_above"])
        r = cfg["route"]
        self.route = Route(r["points"], r["speed_kmh"], r["loop"])
        w = cfg["wifi"]
        self.wifi = Wifi(wlan, w["ssid"], w["password"], Backoff(500, 30000))
        self.logic = CarLogic(self.car, cfg["model"], self._send, self._say, Backoff(2000, 60000), boot_id,
                              cfg["telemetry_s"] * 1000)
        # regions: (name, host, port) and bounds; the last one is the home region of the common
        # keys (region, broker), used while the position is in no configured region
        br = cfg["broker"]
        self._regions = [(g["name"], g["host"], g["port"]) for g in cfg["regions"]] + [(cfg["region"], br["host"], br["port"])]
        self._bounds = [g["bounds"] for g in cfg["regions"]] + [None]
        for k in ("battery", "thresholds", "route", "regions", "wifi", "pins"):
            cfg[k] = None  # copied into the objects above: let the lists go
        self.region = len(self._bounds) - 1
        self.session = None
        self._topics = {}
        self.console = None
        self._t = [0, 0, 0, 0]  # ticks of the last battery reading, route step, region check, gc

    def _say(self, line):
        log.info("car:", line)

    def _send(self, leaf, payload):
        s = self.session
        return s is not None and s.publish(self._topics[leaf], payload)

    def _open(self, i):
        """A session to region i's broker with its topics (the topic tree, the Last Will and
        the reply subscription all carry the region's name)."""
        name, host, port = self._regions[i]
        car = self.car
        self._topics["request"] = topic(name, "car", car, "request")
        self._topics["telemetry"] = topic(name, "car", car, "telemetry")
        br = self.cfg["broker"]
        s = self._Session(car, host, port, br["user"], br["password"], br["keepalive"],
                          topic(name, "car", car, "online"), self._on_message, Backoff(1000, 30000))
        s.subscribe(topic(name, "car", car, "reply"))
        self.session = s
        self.region = i

    def _on_message(self, topic_b, msg):
        self.logic.on_message(msg, time.ticks_ms())

    def _check_region(self, now):
        rt = self.route
        i = self._find(self._bounds, rt.lat, rt.lon, self.region)
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
        gc.collect()
        self._open(i)

    def start(self, now):
        m = self.cfg["model"]
        b = self.battery
        log.info("car: %s (%s), asks below %d %%, clears above %d %%, charges to %d %%" % (
            self.car, m.get("name", ""), round(b.ask_below * 100), round(b.clear_above * 100),
            round(m["target_soc"] * 100)))
        from car_serial import Console

        self.console = Console(self)
        i = self._find(self._bounds, self.route.lat, self.route.lon)
        if i < 0:
            log.warn("car: start position in no configured region, using", self.cfg["region"])
            i = self.region
        self._open(i)
        log.info("car: region", self._regions[i][0])
        t = self._t
        t[0] = time.ticks_add(now, -_BATTERY_MS)
        t[1] = t[2] = t[3] = now

    def step(self, now):
        """One pass of the loop."""
        up = self.wifi.poll(now) and self.session.poll(now)
        if self.console is not None:
            self.console.poll()
        t = self._t
        b = self.battery
        rt = self.route
        lg = self.logic
        if time.ticks_diff(now, t[0]) >= _BATTERY_MS:
            t[0] = now
            b.read(self._adc)
            rt.paused = lg.state in ("waiting", "charging", "done")  # plugged in
            rt.advance(time.ticks_diff(now, t[1]))
            t[1] = now
            if time.ticks_diff(now, t[2]) >= _REGION_MS:
                t[2] = now
                self._check_region(now)
                up = up and self.session.connected
        lg.poll(now, b.soc, b.low, rt.lat, rt.lon, up)  # every pass: answers go out at once
        p = lg.led_pattern()  # off / 1 Hz / on / 5 Hz
        v = 1 if p == 2 else ((now // 500) & 1 if p == 1 else (now // 100) & 1 if p == 3 else 0)
        if v != self._level:
            self._level = v
            self._led.value(v)
        if time.ticks_diff(now, t[3]) >= _GC_MS:
            t[3] = now
            gc.collect()

    def run(self):
        self.start(time.ticks_ms())
        while True:
            self.step(time.ticks_ms())
            time.sleep_ms(_LOOP_MS)


def boot(path="config.json"):
    """Load the code in the order that needs the least heap, then config.json validated
    (car_config; the halt on a bad one), after which the validation code is dropped again.
    Compiling a module from source needs several times its final size for a moment, so the
    biggest ones come first, while the heap is emptiest."""
    for m in ("umqtt.simple", "session", "car_logic"):
        gc.collect()
        __import__(m)
    gc.collect()
    import car_config

    try:
        cfg = car_config.load(path)
    except Exception as e:  # lib config's ConfigError
        if type(e).__name__ != "ConfigError":
            raise
        car_config.halt(str(e), path)
    del car_config
    for m in ("car_config", "config"):
        if m in sys.modules:
            del sys.modules[m]
    gc.collect()
    log.level(cfg["log"])
    return cfg


def main(path="config.json"):
    cfg = boot(path)
    import machine
    import network
    import os

    p = cfg["pins"]
    led = machine.Pin(p["status_led"], machine.Pin.OUT, value=0)
    adc = machine.ADC(machine.Pin(p["battery_adc"]), atten=machine.ADC.ATTN_11DB)
    wlan = network.WLAN(network.STA_IF)
    app = CarApp(cfg, adc, led, wlan, "%02x%02x%02x" % tuple(os.urandom(3)))
    gc.collect()
    app.run()
