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

Boot-time only: the boards drop this module after boot. Its identifiers and short string
literals stay interned as qstrs for good, though, so it keeps to few of them (messages are
built from literals longer than 10 characters, which are not interned).
"""
# Plain CPython imports this module too (devices/ runs check_common before flashing): no
# MicroPython-only imports here.
import json
import time
from binascii import a2b_base64


class ConfigError(Exception):
    """A missing, unreadable or invalid config.json; str(e) is the serial line to print."""


_KINDS = {int: " must be an integer", float: " must be a number", str: " must be a string",
          bool: " must be true or false", list: " must be a list", dict: " must be an object"}


def fail(msg):
    """Raise the ConfigError "config error: <msg>"."""
    raise ConfigError("config error: " + msg)


def load(path="config.json"):
    """Read and parse `path`; ConfigError if it is missing, not JSON or not a JSON object."""
    try:
        f = open(path)
    except OSError:
        fail("%s not found" % path)
    try:
        cfg = json.load(f)
    except ValueError:  # MicroPython: "syntax error in JSON"; also bad UTF-8
        fail("%s is not valid JSON" % path)
    finally:
        f.close()
    if type(cfg) is not dict:
        fail("%s must hold a JSON object" % path)
    return cfg


def _lookup(cfg, key):
    # Walk the dotted path; (True, value) if present, (False, None) if missing.
    v = cfg
    d = ""
    for p in key.split("."):
        if type(v) is dict:
            if p not in v:
                return False, None
            v = v[p]
        elif type(v) is list and p.isdigit():
            i = int(p)
            if not 1 <= i <= len(v):
                return False, None
            v = v[i - 1]
        else:
            fail(d + _KINDS[list if p.isdigit() else dict])
        d = p if not d else d + "." + p
    return True, v


def _range(key, v, lo, hi):
    if lo is not None and hi is not None:
        if not lo <= v <= hi:
            fail("%s must be between %s and %s, got %s" % (key, lo, hi, v))
    elif lo is not None:
        if v < lo:
            fail("%s must be at least %s, got %s" % (key, lo, v))
    elif hi is not None and v > hi:
        fail("%s must be at most %s, got %s" % (key, hi, v))


def need(cfg, key, kind, lo=None, hi=None):
    """The value at dotted `key`, checked; ConfigError naming the key otherwise.

    kind: int, float (any number; returned as float), str, bool, list or dict.
    lo/hi (inclusive): the value's range for numbers, the length for str/list/dict.
    Messages: "config error: broker.port is missing", "... must be an integer",
    "... must be between 1 and 65535, got 70000", "config error: id length must be
    between 1 and 32, got 40".
    """
    f, v = _lookup(cfg, key)
    if not f:
        fail("%s is missing" % key)
    t = type(v)
    if not (t is kind or kind is float and t is int):
        fail(key + _KINDS[kind])
    if lo is not None or hi is not None:
        if kind is int or kind is float:
            _range(key, v, lo, hi)
        elif kind is not bool:
            _range(key + " length", len(v), lo, hi)
    return float(v) if kind is float else v


def get(cfg, key, kind, default, lo=None, hi=None):
    """Like need(), but a missing key gives `default` (which is not checked)."""
    return need(cfg, key, kind, lo, hi) if _lookup(cfg, key)[0] else default


def need_id(cfg, key):
    """A protocol id (1-32 of A-Z a-z 0-9 _ -) at `key`."""
    v = need(cfg, key, str, 1, 32)
    for c in v.encode():  # bytes: MicroPython interns every 1-character str for good
        if not (97 <= c <= 122 or 65 <= c <= 90 or 48 <= c <= 57 or c == 95 or c == 45):  # a-z A-Z 0-9 _ -
            fail("%s must be 1-32 of A-Z a-z 0-9 _ -" % key)
    return v


def need_ca(cfg, key):
    """The CA certificate at `key`: DER, base64 (one line, no PEM armour), as the board pins
    it: it must decode to one whole DER structure (a truncated paste fails here) and, on
    MicroPython, parse in mbedTLS (lib pinned.py)."""
    s = need(cfg, key, str, 16, 4096)
    try:
        v = a2b_base64(s)
    except ValueError:
        v = b""
    if len(v) < 4 or v[0] != 48 or v[1] != 130 or len(v) != 4 + (v[2] << 8 | v[3]):  # 0x30 0x82: SEQUENCE
        fail("%s must be a CA certificate in DER, base64 (not PEM): recarga-device writes it" % key)
    try:
        import pinned

        pinned.context(s)
    except ImportError:  # plain CPython (recarga-device checks config.json before flashing)
        pass
    except ValueError:
        fail("%s is not a certificate mbedTLS can read" % key)


def check_common(cfg, kind):
    """Validate the keys both boards share (docs/firmware.md, "config.json"):

    kind (must equal `kind`), id, region, wifi.ssid, wifi.password, broker.host,
    broker.port, broker.user (must equal id: the broker ACL names each device by its id),
    broker.password, broker.keepalive (optional, 5..3600 s, default 30 — filled in),
    broker.ca (optional: TLS with this CA pinned, need_ca), broker.server_name (optional,
    with broker.ca: the name the broker's certificate must carry; default broker.host),
    log (optional, debug|info|warn|error, default "info" — filled in).
    """
    k = need(cfg, "kind", str)
    if k != kind:
        fail("kind must be '%s' for this firmware, got '%s'" % (kind, k))
    i = need_id(cfg, "id")
    need_id(cfg, "region")
    need(cfg, "wifi.ssid", str, 1, 32)
    need(cfg, "wifi.password", str, 0, 64)
    need(cfg, "broker.host", str, 1, 253)
    need(cfg, "broker.port", int, 1, 65535)
    if need(cfg, "broker.user", str, 1, 32) != i:
        fail("broker.user must equal id (the broker knows each device by its id)")
    need(cfg, "broker.password", str, 0, 128)
    cfg["broker"]["keepalive"] = get(cfg, "broker.keepalive", int, 30, 5, 3600)
    if _lookup(cfg, "broker.ca")[0]:
        need_ca(cfg, "broker.ca")
        get(cfg, "broker.server_name", str, None, 1, 253)
    elif _lookup(cfg, "broker.server_name")[0]:
        fail("broker.server_name needs broker.ca (TLS)")
    v = get(cfg, "log", str, "info")
    if v not in ("debug", "info", "warn", "error"):  # log.LEVELS
        fail("log must be one of debug, info, warn, error")
    cfg["log"] = v


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
        time.sleep_ms(60000)
