# Boot-time only, run by main.py: car_config.settings() (config.json validated, a bad one
# halts with one serial line; what the car keeps of the config, as JSON in a preallocated buffer), then the
# car's objects and the CarApp built and started. This module, car_config and lib's config
# then leave sys.modules and the config dict is gone, so none of that stays in RAM while the
# car runs (on a board without PSRAM every KB counts). Order, against fragmentation
# (docs/firmware.md, "Memory"): validation first; its code, the config dict and the
# temporaries freed; the kept values parsed again from that JSON, so that the few objects
# that stay are made together in the lowest free blocks; the hardware, battery and route
# objects; then the biggest runtime modules compiled (biggest first, gc.collect() between)
# into the large free block that is left (compiling from source needs several times a
# module's final size for a moment, in blocks of up to ~2 KB).
import gc
import sys


def boot(path="config.json", hw=None):
    """The CarApp, started, ready to run(). hw: (adc, led, wlan, boot_id) instead of the
    board's machine.ADC, machine.Pin and network.WLAN and a random boot id (tests)."""
    import car_config

    k = car_config.settings(path)
    del car_config
    sys.modules.pop("car_config")
    sys.modules.pop("config")
    gc.collect()
    from json import load

    k = load(k)
    k[13] = [tuple(x) for x in k[13]]  # regions: JSON gives lists; handover compares tuples
    p = k[0]
    if hw is None:
        import machine
        import network
        import os

        hw = (machine.ADC(machine.Pin(p["battery_adc"]), atten=machine.ADC.ATTN_11DB),
              machine.Pin(p["status_led"], machine.Pin.OUT, value=0), network.WLAN(network.STA_IF),
              "%02x%02x%02x" % tuple(os.urandom(3)))
    import log
    from battery import Battery
    from route import Route

    log.level(k[1])
    bt = Battery(k[2], k[3], k[4], k[5], k[6])
    rt = Route(k[7], k[8], k[9])
    for n in ("umqtt.simple", "session", "car_logic", "car_app"):
        gc.collect()
        __import__(n)
    gc.collect()
    from backoff import Backoff
    from car_app import CarApp
    from car_logic import CarLogic
    from car_serial import Console
    from route import find_region
    from time import ticks_add, ticks_ms
    from wifi import Wifi

    a = CarApp()
    a._adc, a._led, wlan, boot_id = hw
    car, m, w, a._regions, bounds, a._broker, tele = k[10:]
    del k, hw, p
    a.car = car
    a._level = -1
    a.battery = bt
    a.route = rt
    a._bounds = bounds
    a._topics = {}
    a.session = None
    a.wifi = Wifi(wlan, w["ssid"], w["password"], Backoff(500, 30000))
    a.logic = CarLogic(car, m, a._send, a._say, Backoff(2000, 60000), boot_id, tele)
    a.console = Console(a)
    log.info("car: %s (%s), asks below %d %%, clears above %d %%, charges to %d %%" % (
        car, m.get("name", ""), round(bt.ask_below * 100), round(bt.clear_above * 100), round(m["target_soc"] * 100)))
    i = find_region(bounds, rt.lat, rt.lon)
    if i < 0:
        i = len(bounds) - 1
        log.warn("car: start position in no configured region, using", a._regions[i][0])
    a.region = i
    log.info("car: region", a._regions[i][0])
    now = ticks_ms()
    a._t = [ticks_add(now, -1000), now, now, now]
    gc.collect()
    log.debug("car: heap at boot", gc.mem_alloc())  # the most it holds at boot (this module too)
    sys.modules.pop("car_boot", None)
    return a
