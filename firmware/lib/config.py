"""config.json: loading, validation with clear messages, and the safe halt state.

    import config
    try:
        cfg = config.load()                        # "config.json" in the current directory
        config.check_common(cfg, "station")        # kind, id, region, wifi, broker, log
        hb = config.need(cfg, "heartbeat_s", int, 5, 3600)
    except config.ConfigError as e:
        config.halt(str(e))                        # one serial line, then idle forever

Every problem is a ConfigError whose text is one line starting with "config error: ",
naming the key as a dotted path ("broker.port", "slots.2.red": a number indexes a list,
counting from 1 as slots are counted in the protocol). Values of string keys are never
echoed (they may be passwords).
"""
import json
import time

_HALT_SLEEP_MS = 60000

_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               list: "a list", dict: "an object"}

_LOG_LEVELS = ("debug", "info", "warn", "error")
_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


class ConfigError(Exception):
    """A missing, unreadable or invalid config.json; str(e) is the serial line to print."""


def load(path="config.json"):
    """Read and parse `path`; ConfigError if it is missing, not JSON or not a JSON object."""
    try:
        f = open(path)
    except OSError:
        raise ConfigError("config error: " + path + " not found")
    try:
        cfg = json.load(f)
    except ValueError:  # MicroPython: "syntax error in JSON"; also bad UTF-8
        raise ConfigError("config error: " + path + " is not valid JSON")
    finally:
        f.close()
    if type(cfg) is not dict:
        raise ConfigError("config error: " + path + " must hold a JSON object")
    return cfg


def _lookup(cfg, key):
    # Walk the dotted path; (True, value) if present, (False, None) if missing.
    v = cfg
    done = ""
    for part in key.split("."):
        if type(v) is dict:
            if part not in v:
                return False, None
            v = v[part]
        elif type(v) is list and part.isdigit():
            i = int(part)
            if not 1 <= i <= len(v):
                return False, None
            v = v[i - 1]
        else:
            raise ConfigError("config error: " + done + " must be "
                              + ("a list" if part.isdigit() else "an object"))
        done = part if not done else done + "." + part
    return True, v


def _range(key, what, v, lo, hi):
    if lo is not None and hi is not None:
        if not lo <= v <= hi:
            raise ConfigError("config error: %s%s must be between %s and %s, got %s" % (key, what, lo, hi, v))
    elif lo is not None:
        if v < lo:
            raise ConfigError("config error: %s%s must be at least %s, got %s" % (key, what, lo, v))
    elif hi is not None and v > hi:
        raise ConfigError("config error: %s%s must be at most %s, got %s" % (key, what, hi, v))


def need(cfg, key, kind, lo=None, hi=None):
    """The value at dotted `key`, checked; ConfigError naming the key otherwise.

    kind: int, float (any number; returned as float), str, bool, list or dict.
    lo/hi (inclusive): the value's range for numbers, the length for str/list/dict.
    Messages: "config error: broker.port is missing", "... must be an integer",
    "... must be between 1 and 65535, got 70000", "config error: id length must be
    between 1 and 32, got 40".
    """
    found, v = _lookup(cfg, key)
    if not found:
        raise ConfigError("config error: " + key + " is missing")
    t = type(v)
    if kind is float:
        ok = t is float or t is int
    else:
        ok = t is kind
    if not ok:
        raise ConfigError("config error: " + key + " must be " + _KIND_NAMES.get(kind, str(kind)))
    if lo is not None or hi is not None:
        if kind is int or kind is float:
            _range(key, "", v, lo, hi)
        elif kind is not bool:
            _range(key, " length", len(v), lo, hi)
    return float(v) if kind is float else v


def get(cfg, key, kind, default, lo=None, hi=None):
    """Like need(), but a missing key gives `default` (which is not checked)."""
    found, _ = _lookup(cfg, key)
    return need(cfg, key, kind, lo, hi) if found else default


def need_id(cfg, key):
    """A protocol id (1-32 of A-Z a-z 0-9 _ -) at `key`."""
    v = need(cfg, key, str, 1, 32)
    for ch in v:
        if ch not in _ID_CHARS:
            raise ConfigError("config error: " + key + " must be 1-32 of A-Z a-z 0-9 _ -")
    return v


def check_common(cfg, kind):
    """Validate the keys both boards share (docs/firmware.md, "config.json"):

    kind (must equal `kind`), id, region, wifi.ssid, wifi.password, broker.host,
    broker.port, broker.user (must equal id: the broker ACL names each device by its id),
    broker.password, broker.keepalive (optional, 5..3600 s, default 30 — filled in),
    log (optional, debug|info|warn|error, default "info" — filled in).
    """
    k = need(cfg, "kind", str)
    if k != kind:
        raise ConfigError("config error: kind must be '" + kind + "' for this firmware, got '" + k + "'")
    ident = need_id(cfg, "id")
    need_id(cfg, "region")
    need(cfg, "wifi.ssid", str, 1, 32)
    need(cfg, "wifi.password", str, 0, 64)
    need(cfg, "broker.host", str, 1, 253)
    need(cfg, "broker.port", int, 1, 65535)
    if need(cfg, "broker.user", str, 1, 32) != ident:
        raise ConfigError("config error: broker.user must equal id (the broker knows each device by its id)")
    need(cfg, "broker.password", str, 0, 128)
    cfg["broker"]["keepalive"] = get(cfg, "broker.keepalive", int, 30, 5, 3600)
    lv = get(cfg, "log", str, "info")
    if lv not in _LOG_LEVELS:
        raise ConfigError("config error: log must be one of debug, info, warn, error")
    cfg["log"] = lv


def halt(msg, leds=()):
    """The safe halt state for a fatal problem such as a bad config: print `msg` once on the
    serial console, switch the given output pins off, then idle forever with long sleeps.
    No reset, so no reboot loop; Ctrl-C (mpremote) still interrupts it. Never returns."""
    print(msg)
    for p in leds:
        try:
            p.value(0)
        except Exception:
            pass
    while True:
        time.sleep_ms(_HALT_SLEEP_MS)
