# Boot-time only, run by main.py: car_config.settings() (config.json validated, a bad one
# halts with one serial line; what the car keeps of the config, as JSON in a preallocated buffer), then the
# car's objects and the CarApp built and started. This module, car_config and lib's config
# then leave sys.modules and the config dict is gone, so none of that stays in RAM while the
# car runs (on a board without PSRAM every KB counts). Order, against fragmentation
# (docs/firmware.md, "Memory"): validation first; its code, the config dict and the
# temporaries freed; then the biggest runtime modules compiled (biggest first, gc.collect()
# between) while the heap holds little more than the kept values' JSON text (compiling from
# source needs several times a module's final size for a moment, in blocks of up to ~2 KB;
# the small mqtt_client last); then the kept values parsed from that JSON (small objects:
# they fit the holes the compiles left), the hardware, battery and route objects, the TLS
# context (one ~3 KB block) and the CarApp, given the kept values and those objects by name.
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
    for n in ("umqtt.simple", "session", "car_logic", "car_app", "mqtt_client"):
        gc.collect()
        __import__(n)
    gc.collect()
    from json import load

    (pins, level, divider, curve, samples, ask_below, clear_above, points, speed_kmh, loop, car, model, wifi,
     regions, bounds, broker, telemetry_ms, tls) = load(k)
    del k
    regions = [tuple(x) for x in regions]  # JSON gives lists; handover compares tuples
    if hw is None:
        import machine
        import network
        import os

        hw = (machine.ADC(machine.Pin(pins["battery_adc"]), atten=machine.ADC.ATTN_11DB),
              machine.Pin(pins["status_led"], machine.Pin.OUT, value=0), network.WLAN(network.STA_IF),
              "%02x%02x%02x" % tuple(os.urandom(3)))
    adc, led, wlan, boot_id = hw
    del hw, pins
    import log
    from battery import Battery
    from route import Route

    log.level(level)
    bt = Battery(divider, curve, samples, ask_below, clear_above)
    rt = Route(points, speed_kmh, loop)
    if tls is not None:  # the context of every session (the same CA for every broker): one ~3 KB block
        import pinned

        tls = (pinned.context(tls[0]), tls[1])
        sys.modules.pop("pinned")
        gc.collect()
    from car_app import CarApp
    from route import find_region

    log.info("car: %s (%s), asks below %d %%, clears above %d %%, charges to %d %%" % (
        car, model.get("name", ""), round(bt.ask_below * 100), round(bt.clear_above * 100),
        round(model["target_soc"] * 100)))
    i = find_region(bounds, rt.lat, rt.lon)
    if i < 0:
        i = len(bounds) - 1
        log.warn("car: start position in no configured region, using", regions[i][0])
    log.info("car: region", regions[i][0])
    a = CarApp(car=car, model=model, battery=bt, route=rt, regions=regions, bounds=bounds, region=i,
               broker=broker, wifi=wifi, wlan=wlan, adc=adc, led=led, boot_id=boot_id, telemetry_ms=telemetry_ms,
               tls=tls)
    gc.collect()
    log.debug("car: heap at boot", gc.mem_alloc())  # the most it holds at boot (this module too)
    sys.modules.pop("car_boot", None)
    return a
