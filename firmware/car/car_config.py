# Boot-time only: the car's config.json keys (docs/firmware.md, "config.json") validated with
# one clear serial line per problem (lib config.ConfigError), the halt for a bad config, and
# settings(): what the running car keeps of the config. car_boot drops this module and lib's
# config from sys.modules after boot, so their bytecode does not stay in RAM.
import config

_ADC1_PINS = (32, 33, 34, 35, 36, 37, 38, 39)  # ADC2 does not work while Wi-Fi is on


def _num(cfg, key, lo, hi):
    return config.need(cfg, key, float, lo, hi)


def _fail(msg):
    raise config.ConfigError("config error: " + msg)


def check_car(cfg):
    """Validate the car keys (after config.check_common(cfg, "car")); fills in the defaults
    (battery.samples 9, thresholds 0.20 / 0.25, route.loop true, telemetry_s 30) and makes
    every number a float."""
    need = config.need
    get = config.get
    if need(cfg, "pins.battery_adc", int, 0, 39) not in _ADC1_PINS:
        _fail("pins.battery_adc must be an ADC1 pin (32-39)")
    need(cfg, "pins.status_led", int, 0, 33)  # 34-39 are input only
    cfg_b = need(cfg, "battery", dict)
    cfg_b["divider"] = _num(cfg, "battery.divider", 0.001, 10000.0)
    cfg_b["samples"] = get(cfg, "battery.samples", int, 9, 1, 31)
    curve = need(cfg, "battery.curve", list, 2, 32)
    for i in range(1, len(curve) + 1):
        k = "battery.curve.%d" % i
        need(cfg, k, list, 2, 2)
        curve[i - 1] = [_num(cfg, k + ".1", 0.0, 10000.0), _num(cfg, k + ".2", 0.0, 1.0)]
        if i > 1 and curve[i - 1][0] <= curve[i - 2][0]:
            _fail(k + ": volts must rise along the curve")
    th = get(cfg, "thresholds", dict, {})
    cfg["thresholds"] = th
    th["ask_below"] = ask = get(cfg, "thresholds.ask_below", float, 0.20, 0.01, 0.95)
    th["clear_above"] = clear = get(cfg, "thresholds.clear_above", float, 0.25, 0.02, 1.0)
    if clear <= ask:
        _fail("thresholds.clear_above must be above thresholds.ask_below")
    m = need(cfg, "model", dict)
    get(cfg, "model.name", str, "", 0, 64)
    for k, lo, hi in (("battery_kwh", 1, 300), ("consumption_kwh_100km", 5, 80), ("max_ac_kw", 0, 50),
                      ("max_dc_kw", 0, 500), ("target_soc", 0.05, 1)):
        m[k] = _num(cfg, "model." + k, lo, hi)
    if m["max_ac_kw"] <= 0 and m["max_dc_kw"] <= 0:
        _fail("model.max_ac_kw or model.max_dc_kw must be above 0")
    if m["target_soc"] <= clear:
        _fail("model.target_soc must be above thresholds.clear_above")
    r = need(cfg, "route", dict)
    r["speed_kmh"] = _num(cfg, "route.speed_kmh", 0.0, 300.0)
    r["loop"] = get(cfg, "route.loop", bool, True)
    pts = need(cfg, "route.points", list, 1, 64)
    for i in range(1, len(pts) + 1):
        k = "route.points.%d" % i
        need(cfg, k, list, 2, 2)
        pts[i - 1] = [_num(cfg, k + ".1", -90.0, 90.0), _num(cfg, k + ".2", -180.0, 180.0)]
    regions = need(cfg, "regions", list, 1, 16)
    for i in range(1, len(regions) + 1):
        k = "regions.%d" % i
        need(cfg, k, dict)
        config.need_id(cfg, k + ".name")
        need(cfg, k + ".host", str, 1, 253)
        need(cfg, k + ".port", int, 1, 65535)
        need(cfg, k + ".bounds", list, 4, 4)
        bd = [_num(cfg, "%s.bounds.%d" % (k, j), -180.0, 180.0) for j in (1, 2, 3, 4)]
        if not (-90 <= bd[0] < bd[2] <= 90 and bd[1] < bd[3]):
            _fail(k + ".bounds must be [lat_min, lon_min, lat_max, lon_max]")
        regions[i - 1]["bounds"] = bd
    cfg["telemetry_s"] = get(cfg, "telemetry_s", int, 30, 5, 3600)
    return cfg


def load(path="config.json"):
    """config.json read and validated (common and car keys); ConfigError otherwise."""
    cfg = config.load(path)
    config.check_common(cfg, "car")
    return check_car(cfg)


def halt(msg, path="config.json"):
    """Print msg, switch the status LED off (its pin from config.json when readable, else the
    default board's GPIO 2) and idle forever (lib config.halt: no reset, no reboot loop)."""
    pin = 2
    try:
        v = config.load(path)["pins"]["status_led"]
        if type(v) is int and 0 <= v <= 33:
            pin = v
    except Exception:
        pass
    leds = ()
    try:
        import machine

        leds = (machine.Pin(pin, machine.Pin.OUT, value=0),)
    except Exception:
        pass
    config.halt(msg, leds)


def settings(path="config.json", hw=None):
    """config.json validated (a bad one: halt()), the hardware objects made from its pins
    (hw: (adc, led, wlan, boot_id) instead: tests), the battery and route objects built, and
    everything else the car keeps picked out, so that the config dict can go:
    (adc, led, wlan, boot_id, battery, route, id, model, wifi, regions, bounds, broker
    credentials (user, password, keepalive), telemetry ms)."""
    try:
        cfg = load(path)
    except config.ConfigError as e:
        halt(str(e), path)
    if hw is None:
        import machine
        import network
        import os

        p = cfg["pins"]
        hw = (machine.ADC(machine.Pin(p["battery_adc"]), atten=machine.ADC.ATTN_11DB),
              machine.Pin(p["status_led"], machine.Pin.OUT, value=0), network.WLAN(network.STA_IF),
              "%02x%02x%02x" % tuple(os.urandom(3)))
    import log
    from battery import Battery
    from route import Route

    log.level(cfg["log"])
    b = cfg["battery"]
    th = cfg["thresholds"]
    r = cfg["route"]
    br = cfg["broker"]
    g = cfg["regions"]
    # the home region (the common keys' region and broker) last: used while the position is
    # in no configured region
    return hw + (Battery(b["divider"], b["curve"], b["samples"], th["ask_below"], th["clear_above"]),
                 Route(r["points"], r["speed_kmh"], r["loop"]), cfg["id"], cfg["model"], cfg["wifi"],
                 [(x["name"], x["host"], x["port"]) for x in g] + [(cfg["region"], br["host"], br["port"])],
                 [x["bounds"] for x in g] + [None], (br["user"], br["password"], br["keepalive"]),
                 cfg["telemetry_s"] * 1000)
