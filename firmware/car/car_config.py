# Boot-time only: the car's config.json keys (docs/firmware.md, "config.json") validated with
# one clear serial line per problem (lib config.ConfigError), the halt for a bad config, and
# settings(): what the running car keeps of the config. car_boot drops this module and lib's
# config from sys.modules after boot, so their bytecode does not stay in RAM.
import gc

import config

_ADC1_PINS = (32, 33, 34, 35, 36, 37, 38, 39)  # ADC2 does not work while Wi-Fi is on
# The most regions, route points and curve points: together they boot with margin on a ~96 KB
# heap (docs/firmware.md, "Memory": beyond, the heap is too fragmented at boot to compile the
# big modules). Over one: "config error: route.points length must be at most 32, got 40".


def _pairs(cfg, key, n, most, lo, hi, lo2, hi2):
    # The list at key of n..most [a, b] number pairs (lo <= a <= hi, lo2 <= b <= hi2), as floats.
    p = config.need(cfg, key, list, n)
    config._range(key + " length", len(p), None, most)
    for i in range(1, len(p) + 1):
        k = "%s.%d" % (key, i)
        config.need(cfg, k, list, 2, 2)
        p[i - 1] = [config.need(cfg, k + ".1", float, lo, hi), config.need(cfg, k + ".2", float, lo2, hi2)]
    return p


def check_car(cfg):
    """Validate the car keys (after config.check_common(cfg, "car")); fills in the defaults
    (battery.samples 9, thresholds 0.20 / 0.25, route.loop true, telemetry_s 30) and makes
    every number a float."""
    need = config.need
    get = config.get
    fail = config.fail
    if need(cfg, "pins.battery_adc", int, 0, 39) not in _ADC1_PINS:
        fail("pins.battery_adc must be an ADC1 pin (32-39)")
    need(cfg, "pins.status_led", int, 0, 33)  # 34-39 are input only
    b = need(cfg, "battery", dict)
    b["divider"] = need(cfg, "battery.divider", float, 0.001, 10000.0)
    b["samples"] = get(cfg, "battery.samples", int, 9, 1, 31)
    c = _pairs(cfg, "battery.curve", 2, 16, 0.0, 10000.0, 0.0, 1.0)
    for i in range(1, len(c)):
        if c[i][0] <= c[i - 1][0]:
            fail("battery.curve.%d: volts must rise along the curve" % (i + 1))
    t = cfg["thresholds"] = get(cfg, "thresholds", dict, {})
    t["ask_below"] = get(cfg, "thresholds.ask_below", float, 0.20, 0.01, 0.95)
    t["clear_above"] = c = get(cfg, "thresholds.clear_above", float, 0.25, 0.02, 1.0)
    if c <= t["ask_below"]:
        fail("thresholds.clear_above must be above thresholds.ask_below")
    m = need(cfg, "model", dict)
    get(cfg, "model.name", str, "", 0, 64)
    for k, lo, hi in (("battery_kwh", 1, 300), ("consumption_kwh_100km", 5, 80), ("max_ac_kw", 0, 50),
                      ("max_dc_kw", 0, 500), ("target_soc", 0.05, 1)):
        m[k] = need(cfg, "model." + k, float, lo, hi)
    if m["max_ac_kw"] <= 0 and m["max_dc_kw"] <= 0:
        fail("model.max_ac_kw or model.max_dc_kw must be above 0")
    if m["target_soc"] <= c:
        fail("model.target_soc must be above thresholds.clear_above")
    r = need(cfg, "route", dict)
    r["speed_kmh"] = need(cfg, "route.speed_kmh", float, 0.0, 300.0)
    r["loop"] = get(cfg, "route.loop", bool, True)
    _pairs(cfg, "route.points", 1, 32, -90.0, 90.0, -180.0, 180.0)
    g = need(cfg, "regions", list, 1)
    config._range("regions length", len(g), None, 8)
    for i in range(1, len(g) + 1):
        k = "regions.%d" % i
        need(cfg, k, dict)
        config.need_id(cfg, k + ".name")
        need(cfg, k + ".host", str, 1, 253)
        need(cfg, k + ".port", int, 1, 65535)
        get(cfg, k + ".server_name", str, None, 1, 253)  # with broker.ca: this host's name in its certificate
        need(cfg, k + ".bounds", list, 4, 4)
        x = [need(cfg, "%s.bounds.%d" % (k, j), float, -180.0, 180.0) for j in (1, 2, 3, 4)]
        if not (-90 <= x[0] < x[2] <= 90 and x[1] < x[3]):
            fail(k + ".bounds must be [lat_min, lon_min, lat_max, lon_max]")
        g[i - 1]["bounds"] = x
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


def settings(path="config.json"):
    """config.json validated (a bad one: halt()) and what the car keeps of it picked out, as
    JSON in a stream (read from its start): [pins, log, battery divider, curve, samples, ask_below, clear_above,
    route points, speed_kmh, loop, id, model, wifi, regions [name, host, port], bounds,
    broker credentials [user, password, keepalive], telemetry ms, TLS: None or [the CA
    (base64 DER), {host: server name} where one is given]]. Text, not objects:
    the car's objects are made from it (car_boot) once the config dict, the validation's
    temporaries and this module are gone, so they sit together low in the heap instead of
    scattered through the parse's blocks (docs/firmware.md, "Memory": fragmentation); its
    buffer (twice the file's size) is allocated before the parse, so it is one block."""
    from io import BytesIO
    from os import stat

    try:
        n = stat(path)[6]
    except OSError:
        n = 0
    f = BytesIO(2 * n + 256)  # allocated first, while the heap is emptiest: never grown
    try:
        cfg = load(path)
    except config.ConfigError as e:
        halt(str(e), path)
    b = cfg["battery"]
    th = cfg["thresholds"]
    r = cfg["route"]
    br = cfg["broker"]
    g = cfg["regions"]
    # the home region (the common keys' region and broker) last: used while the position is
    # in no configured region
    k = (cfg["pins"], cfg["log"], b["divider"], b["curve"], b["samples"], th["ask_below"], th["clear_above"],
         r["points"], r["speed_kmh"], r["loop"], cfg["id"], cfg["model"], cfg["wifi"],
         [(x["name"], x["host"], x["port"]) for x in g] + [(cfg["region"], br["host"], br["port"])],
         [x["bounds"] for x in g] + [None], (br["user"], br["password"], br["keepalive"]), cfg["telemetry_s"] * 1000,
         None if "ca" not in br else (br["ca"], {x["host"]: x["server_name"] for x in g + [br] if "server_name" in x}))
    del cfg, b, th, r, br, g
    gc.collect()
    config.json.dump(k, f)
    f.seek(0)
    return f
