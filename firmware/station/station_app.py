"""The station board application: config, hardware objects, the main loop.

main() reads config.json (a bad one: one "config error: ..." line, then the halt state),
builds the machine.Pin objects from the pins in it (per slot an RGB LED as three outputs and
an occupancy input with pull-up, pressed/low = occupied; the status LED) and the
network.WLAN, passes them into Station, and runs its loop.

Station.step(now_ms), every _TICK_MS:
1. read the occupancy inputs (debounced); a changed slot shows on its LED at once, online
   or not, and marks the status for publishing (also while the session waits on its socket,
   e.g. for a silent broker: its idle hook does this and the status LED);
2. Wi-Fi and MQTT session: connect / reconnect when due, read commands (reserve, release,
   out_of_service, in_service; a bad one is logged and ignored);
3. publish the retained status when it changed, and every heartbeat_s as heartbeat; while
   offline nothing is queued: the session's on_connect publishes the latest status;
4. status LED: on while the broker connection is up, blinking 2 Hz while it is not.
"""
import gc
import sys
import time
from micropython import const

import log
from backoff import Backoff
from debounce import Debouncer
from leds import Leds
from session import Session
from slots import MAX_SLOTS, NAMES, Slots
from topics import topic
from wifi import Wifi

_TICK_MS = const(10)
_GC_EVERY_MS = const(1000)
STORE = "oos.txt"  # the out-of-service flags, next to config.json
BOOT_STORE = "boot.txt"  # the boot number the statuses carry (slots.py), next to config.json


def check_station(cfg):
    """Validate the station keys (docs/firmware.md); fills in defaults for heartbeat_s (60)
    and debounce_ms (50). ConfigError on anything wrong."""
    import config

    used = {}

    def pin(key):
        # Every pin here is an output or an input with the internal pull-up: on an ESP32 DevKit
        # that excludes GPIO 1 and 3 (the serial console), 6-11 (flash) and 34-39 (input
        # only, no pull-ups).
        g = config.need(cfg, key, int)
        if not (g in (0, 2, 4, 5) or 12 <= g <= 19 or 21 <= g <= 23 or 25 <= g <= 27 or 32 <= g <= 33):
            config.fail(key + " must be an ESP32 GPIO with output and pull-up "
                        "(0, 2, 4, 5, 12-19, 21-23, 25-27, 32, 33), got %d" % g)
        if g in used:
            config.fail(key + " uses GPIO %d, already used by %s" % (g, used[g]))
        used[g] = key

    pin("pins.status_led")
    n = len(config.need(cfg, "slots", list, 1, MAX_SLOTS))
    for i in range(1, n + 1):
        config.need(cfg, "slots.%d" % i, dict)
        for c in ("red", "green", "blue", "sensor"):
            pin("slots.%d.%s" % (i, c))
    cfg["heartbeat_s"] = config.get(cfg, "heartbeat_s", int, 60, 5, 3600)
    cfg["debounce_ms"] = config.get(cfg, "debounce_ms", int, 50, 0, 1000)


class Station:
    def __init__(self, cfg, rgb_pins, sensor_pins, status_pin, wlan, store=STORE, client_cls=None,
                 boot_store=BOOT_STORE):
        """cfg: a checked config; rgb_pins: [(red, green, blue), ...] output pins; sensor_pins:
        input pins (0 = occupied); status_pin: output; wlan: network.WLAN(STA_IF); store and
        boot_store: the files of the out-of-service flags and of the boot number."""
        n = len(sensor_pins)
        self.sensors = sensor_pins
        self.slots = Slots(n, store, boot_store)
        self.leds = Leds(rgb_pins, status_pin)
        sid = cfg["id"]
        region = cfg["region"]
        self.status_topic = topic(region, "station", sid, "status")
        cmd_topic = topic(region, "station", sid, "cmd")
        self._cmd_topic = cmd_topic.encode()
        b = cfg["broker"]
        w = cfg["wifi"]
        self.wifi = Wifi(wlan, w["ssid"], w["password"], Backoff())
        self.session = Session(sid, b["host"], b["port"], b["user"], b["password"], b["keepalive"],
                               topic(region, "station", sid, "online"), self._on_message, Backoff(),
                               client_cls, inbox=max(8, 2 * n))  # a burst: one cmd per slot, twice
        self.session.subscribe(cmd_topic)
        if "ca" in b:  # TLS: the CA pinned, the broker's name verified
            import pinned

            self.session.tls = (pinned.context(b["ca"]), b.get("server_name") or b["host"])
            sys.modules.pop("pinned")
        self.session.on_connect = self._publish
        self.session.idle = self._idle
        self._debounce = [Debouncer(cfg["debounce_ms"]) for _ in range(n)]
        self._heartbeat_ms = cfg["heartbeat_s"] * 1000
        self._dirty = True
        self._sent_at = 0
        self._gc_at = 0

    def start(self, now_ms):
        """Count this boot, read the stored out-of-service flags and the inputs as they are
        now, light the LEDs."""
        self.slots.count_boot()
        self.slots.load()
        for i in range(self.slots.n):
            occupied = self.sensors[i].value() == 0
            self._debounce[i].reset(occupied)
            self.slots.set_occupied(i, occupied)
            self.leds.show(i, self.slots.state(i))
        self.leds.status(False, now_ms)
        self._gc_at = now_ms
        log.info("station: slots", self._names())

    def _names(self):
        return ",".join([NAMES[self.slots.state(i)] for i in range(self.slots.n)])

    def _inputs(self, now_ms):
        # Occupancy (debounced) to the slot LEDs at once; a change marks the status dirty.
        slots = self.slots
        for i in range(slots.n):
            d = self._debounce[i]
            if d.update(self.sensors[i].value() == 0, now_ms):
                if slots.set_occupied(i, d.value):
                    self.leds.show(i, slots.state(i))
                    self._dirty = True
                    log.info("station: slot", i + 1, NAMES[slots.state(i)])

    def _idle(self):
        # While the session waits on its socket (e.g. a silent broker during a connect):
        # occupancy and every LED stay live; the status goes out after the wait.
        now = time.ticks_ms()
        self._inputs(now)
        self.leds.status(self.session.connected, now)

    def step(self, now_ms):
        """One pass of the loop (see the module docstring)."""
        self._inputs(now_ms)
        if self.wifi.poll(now_ms):
            up = self.session.poll(now_ms)
        else:
            up = False
            self.session.drop("wifi down")
        if up and (self._dirty or time.ticks_diff(now_ms, self._sent_at) >= self._heartbeat_ms):
            self._publish()
        # the time now, not the pass's start: _idle() may have shown a later blink phase
        self.leds.status(up and self.session.connected, time.ticks_ms())
        if time.ticks_diff(now_ms, self._gc_at) >= _GC_EVERY_MS:
            self._gc_at = now_ms
            gc.collect()

    def _publish(self):
        # Also the session's on_connect: the latest status, retained. On failure it stays
        # dirty and goes out after the reconnect.
        if self.session.publish(self.status_topic, self.slots.status_payload(), True):
            self._dirty = False
            self._sent_at = time.ticks_ms()
            log.debug("station: status sent, seq", self.slots.seq, "heap free", gc.mem_free())

    def _on_message(self, t, msg):
        if t != self._cmd_topic:
            log.warn("station: message on unexpected topic", t)
            return
        try:
            i = self.slots.command(msg)
        except ValueError as e:
            log.warn("station: cmd ignored:", e)
            return
        self.leds.show(i, self.slots.state(i))
        self._dirty = True  # published at once by the next step, also when nothing changed
        log.info("station: cmd applied, slot", i + 1, NAMES[self.slots.state(i)])

    def run(self):
        """The loop; never returns."""
        self.start(time.ticks_ms())
        while True:
            self.step(time.ticks_ms())
            time.sleep_ms(_TICK_MS)


def build(cfg):
    """The hardware objects from a checked config: (rgb_pins, sensor_pins, status_pin, wlan)."""
    import network
    from machine import Pin

    rgb = []
    sensors = []
    for s in cfg["slots"]:
        leds = (Pin(s["red"], Pin.OUT), Pin(s["green"], Pin.OUT), Pin(s["blue"], Pin.OUT))
        for p in leds:
            p.value(0)
        rgb.append(leds)
        sensors.append(Pin(s["sensor"], Pin.IN, Pin.PULL_UP))
    status = Pin(cfg["pins"]["status_led"], Pin.OUT)
    status.value(0)
    return rgb, sensors, status, network.WLAN(network.STA_IF)


def main(path="config.json"):
    """Boot: config, hardware, loop. A bad config halts (config.halt) without a reboot loop;
    an unexpected error is printed and halts with the LEDs off."""
    import config

    log.info("station: boot")
    try:
        cfg = config.load(path)
        config.check_common(cfg, "station")
        check_station(cfg)
    except config.ConfigError as e:
        config.halt(str(e))
    log.level(cfg["log"])
    rgb, sensors, status, wlan = build(cfg)
    app = Station(cfg, rgb, sensors, status, wlan)
    # config.json and the config module are only needed at boot: give their heap back
    del cfg, config
    sys.modules.pop("config", None)
    gc.collect()
    try:
        app.run()
    except Exception as e:
        sys.print_exception(e)
        pins = [status]
        for t in rgb:
            pins.extend(t)
        import config

        config.halt("fatal: station stopped: %s %s" % (type(e).__name__, e), pins)
