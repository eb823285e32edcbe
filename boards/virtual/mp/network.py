# Emulated `network` for the virtual board (runs inside MicroPython's unix port).
# Follows the ESP32 port's WLAN API. There is no radio: the station "connects" to the
# harness's access point, which the harness can switch off and on (board.wifi(False/True));
# sockets really go over the host's loopback. Connecting takes $VB_WIFI_MS (default 300 ms);
# $VB_SSID / $VB_PASSWORD, when set, are the only credentials the access point accepts.
import os as _os
import time as _t

import machine as _m
from micropython import const

STA_IF = const(0)
AP_IF = const(1)
STAT_IDLE = const(1000)
STAT_CONNECTING = const(1001)
STAT_GOT_IP = const(1010)
STAT_BEACON_TIMEOUT = const(200)
STAT_NO_AP_FOUND = const(201)
STAT_WRONG_PASSWORD = const(202)
STAT_ASSOC_FAIL = const(203)
STAT_HANDSHAKE_TIMEOUT = const(204)
AUTH_OPEN = const(0)
AUTH_WEP = const(1)
AUTH_WPA_PSK = const(2)
AUTH_WPA2_PSK = const(3)
AUTH_WPA_WPA2_PSK = const(4)

# station state: active, wants to be connected, connected, status, ssid, ticks of the attempt,
_st = [False, False, False, STAT_IDLE, None, 0, None]  # ..., password
_apif = [False]
_cfg = {"hostname": "esp32", "reconnects": -1, "pm": 1, "txpower": 20, "channel": 1}
_IP = ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")
_NOIP = ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")


def _mac():
    return _m.unique_id()


def _update():
    _m._rx()
    st = _st
    if not st[1]:
        return
    ok = _m._ap[0]
    ssid = _os.getenv("VB_SSID")
    if ok and ssid is not None and st[4] != ssid:
        st[3] = STAT_NO_AP_FOUND
        ok = False
    pw = _os.getenv("VB_PASSWORD")
    if ok and pw is not None and st[6] != pw:
        st[3] = STAT_WRONG_PASSWORD
        ok = False
    if not ok:
        if st[2]:
            st[2] = False
            st[3] = STAT_BEACON_TIMEOUT
            _m._tx("N0\n")
        elif st[3] == STAT_CONNECTING and not _m._ap[0]:
            st[3] = STAT_NO_AP_FOUND
        return
    if not st[2]:
        start = st[5]
        if _t.ticks_diff(_m._ap[1], start) > 0:
            start = _m._ap[1]
        st[3] = STAT_CONNECTING
        if _t.ticks_diff(_t.ticks_ms(), start) >= int(_os.getenv("VB_WIFI_MS") or 300):
            st[2] = True
            st[3] = STAT_GOT_IP
            _m._tx("N1\n")


class WLAN:
    IF_STA = const(0)
    IF_AP = const(1)
    PM_NONE = const(0)
    PM_PERFORMANCE = const(1)
    PM_POWERSAVE = const(2)

    def __init__(self, interface_id=STA_IF):
        if interface_id not in (0, 1):
            raise ValueError("invalid WLAN interface identifier")
        self._if = interface_id

    def active(self, is_active=None):
        if self._if:
            if is_active is not None:
                _apif[0] = bool(is_active)
            return _apif[0]
        if is_active is None:
            return _st[0]
        is_active = bool(is_active)
        if not is_active and _st[0]:
            self.disconnect()
        _st[0] = is_active
        _m._wifi_on[0] = 1 if (is_active or _apif[0]) else 0

    def connect(self, ssid=None, key=None, *, bssid=None):
        if not _st[0]:
            raise OSError("Wifi Not Started")
        if _st[2]:
            self.disconnect()
        _st[1] = True
        _st[3] = STAT_CONNECTING
        _st[4] = ssid
        _st[5] = _t.ticks_ms()
        _st[6] = key
        _update()

    def disconnect(self):
        if _st[2]:
            _m._tx("N0\n")
        _st[1] = False
        _st[2] = False
        _st[3] = STAT_IDLE

    def isconnected(self):
        if self._if:
            return _apif[0]
        _update()
        return _st[2]

    def status(self, param=None):
        if param is None:
            _update()
            return _st[3]
        if param == "rssi":
            if not _st[2]:
                raise OSError("STA is not connected")
            return -55
        if param == "stations":
            return []
        raise ValueError("unknown status param")

    def ifconfig(self, cfg=None):
        if cfg is None:
            return _IP if (self._if or self.isconnected()) else _NOIP

    def ipconfig(self, *args, **kw):
        if args == ("addr4",):
            ip = self.ifconfig()
            return (ip[0], ip[1])
        if args == ("dhcp4",):
            return True
        return None

    def scan(self):
        if not _st[0]:
            raise OSError("Wifi Not Started")
        if not _m._ap[0]:
            return []
        ssid = _os.getenv("VB_SSID") or "Wokwi-GUEST"
        return [(ssid.encode(), b"\x42\x13\x37\x55\xaa\x01", 6, -55, AUTH_OPEN, False)]

    def config(self, *args, **kw):
        if kw:
            _cfg.update(kw)
            return
        if len(args) != 1:
            raise TypeError("can query only one param")
        k = args[0]
        if k == "mac":
            return _mac()
        if k in ("ssid", "essid"):
            return _st[4] or ""
        if k in _cfg:
            return _cfg[k]
        raise ValueError("unknown config param")


def hostname(name=None):
    if name is None:
        return _cfg["hostname"]
    _cfg["hostname"] = name


def country(code=None):
    if code is None:
        return "XX"
