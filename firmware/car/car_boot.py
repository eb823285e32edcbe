# Boot-time only, run by main.py: car_config.settings() (config.json validated, a bad one
# halts with one serial line; the hardware objects; what the car keeps of the config), then
# the CarApp built and started. This module, car_config and lib's config then leave
# sys.modules and the config dict is gone, so none of that stays in RAM while the car runs
# (on a board without PSRAM every KB counts). Order, so that the heap at boot never holds
# much more than the running car: validation first, its code and the config freed before
# the biggest runtime modules are compiled, while the heap is emptiest (compiling from
# source needs several times a module's final size for a moment).
import gc
import sys


def boot(path="config.json", hw=None):
    """The CarApp, started, ready to run(). hw: (adc, led, wlan, boot_id) instead of the
    board's machine.ADC, machine.Pin and network.WLAN and a random boot id (tests)."""
    import car_config

    k = car_config.settings(path, hw)
    del car_config
    for n in ("car_config", "config", "umqtt.simple", "session", "car_logic", "car_app"):
        if n[0] == "c":
            sys.modules.pop(n, None)
        else:
            gc.collect()
            __import__(n)
    gc.collect()
    import log
    from backoff import Backoff
    from car_app import CarApp
    from car_logic import CarLogic
    from car_serial import Console
    from route import find_region
    from time import ticks_add, ticks_ms
    from wifi import Wifi

    a = CarApp()
    a._adc, a._led, wlan, boot_id, bt, rt, car, m, w, a._regions, bounds, a._broker, tele = k
    del k
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
