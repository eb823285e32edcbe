# Emulated `machine` for the virtual board (runs inside MicroPython's unix port).
# Follows the ESP32 port's API (Pin, ADC, PWM, Signal, Timer, WDT, reset, unique_id, ...)
# so firmware written for a real board runs unmodified. The CPython harness
# (boards/virtual/board.py) owns the wiring (diagram.json); this module talks to it over a
# loopback TCP connection whose port is in $VB_PORT:
#   harness -> board  "I<gpio> <microvolts>" (-1 = floating), "W<0|1>" (access point up),
#                     "." (end of the snapshot sent on connect)
#   board -> harness  "P<gpio> <mode> <pull> <level>", "Q<gpio> <duty_u16>", "N<0|1>" (Wi-Fi
#                     connected), "R<cause>" (reset me), "D<ms>"/"F" (watchdog), "M<bytes>"
# Input changes are applied when the firmware next calls into this module (a poll(0) on the
# socket, no round trip per read); outputs are sent fire-and-forget. Kept small: it lives
# in the same heap as the firmware.
import os as _os
import select as _sel
import time as _t
from array import array

import usocket as _so
from micropython import const

_N = const(40)
_VALID = const(0xFF0EEFF03F)  # GPIO 0-5, 12-19, 21-23, 25-27, 32-39
_ADC1 = const(0xFF00000000)  # GPIO 32..39
_ADC2 = const(0x000E00F015)  # GPIO 0, 2, 4, 12..15, 25..27
_TH = const(1650000)  # digital threshold, microvolts

_mode = bytearray(_N)  # 0 reset state (input), 1 IN, 3 OUT, 7 OPEN_DRAIN
_pull = bytearray(_N)  # 0 none, 1 down, 2 up
_out = bytearray(_N)
_ext = array("i", [-1] * _N)
_ap = [1, 0]  # access point up, ticks_ms when it came up
_wifi_on = [0]  # set by network: the radio is active (ADC2 unusable)
_irqs = []
_timers = []
_s = None
_p = None
_rb = [b""]

PWRON_RESET = const(1)
HARD_RESET = const(2)
WDT_RESET = const(3)
DEEPSLEEP_RESET = const(4)
SOFT_RESET = const(5)


def _tx(msg):
    if _s is not None:
        try:
            _s.send(msg)
        except OSError:
            pass


def _line(ln):
    c = ln[0]
    if c == 73:  # I
        sp = ln.find(b" ")
        _ext[int(ln[1:sp])] = int(ln[sp + 1:])
    elif c == 87:  # W
        up = ln[1] == 49
        if up and not _ap[0]:
            _ap[1] = _t.ticks_ms()
        _ap[0] = up


def _rx():
    global _s, _p
    if _p is not None:
        while _p.poll(0):
            try:
                d = _s.recv(256)
            except OSError:
                d = b""
            if not d:
                _p = None
                _s.close()
                _s = None
                break
            b = _rb[0] + d
            i = b.find(b"\n")
            while i >= 0:
                if i:
                    _line(b[:i])
                b = b[i + 1:]
                i = b.find(b"\n")
            _rb[0] = b
    if _irqs:
        for q in _irqs:
            v = _level(q[0])
            if v != q[3]:
                q[3] = v
                if q[2] & (1 if v else 2):
                    q[1](q[4])
    if _timers:
        now = _t.ticks_ms()
        for tm in _timers:
            if _t.ticks_diff(now, tm._due) >= 0:
                if tm._mode:
                    tm._due = _t.ticks_add(tm._due, tm._per)
                else:
                    _timers.remove(tm)
                if tm._cb:
                    tm._cb(tm)


def _connect():
    global _s, _p
    port = _os.getenv("VB_PORT")
    if not port:
        return
    s = _so.socket()
    s.connect(_so.getaddrinfo("127.0.0.1", int(port))[0][-1])
    s.settimeout(10)
    # no Nagle delay: a pin change must reach the harness before the serial line after it
    s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY
    b = b""
    while not b.endswith(b".\n"):
        d = s.recv(512)
        if not d:
            raise OSError("virtual board: harness closed the control connection")
        b += d
    for ln in b.split(b"\n"):
        if ln and ln != b".":
            _line(ln)
    s.settimeout(None)
    _s = s
    _p = _sel.poll()
    _p.register(s, _sel.POLLIN)


def _level(n):
    m = _mode[n]
    if m == 3 or (m == 7 and not _out[n]):
        return _out[n]
    e = _ext[n]
    if e >= 0:
        return 1 if e > _TH else 0
    return 1 if _pull[n] == 2 else 0


def _report(n):
    _tx("P%d %d %d %d\n" % (n, _mode[n], _pull[n], _out[n]))


class Pin:
    IN = const(1)
    OUT = const(3)
    OPEN_DRAIN = const(7)
    PULL_DOWN = const(1)
    PULL_UP = const(2)
    PULL_HOLD = const(4)
    IRQ_RISING = const(1)
    IRQ_FALLING = const(2)
    WAKE_LOW = const(4)
    WAKE_HIGH = const(5)
    DRIVE_0 = const(0)
    DRIVE_1 = const(1)
    DRIVE_2 = const(2)
    DRIVE_3 = const(3)

    def __init__(self, id, mode=-1, pull=-1, *, value=None, drive=None, hold=None):
        if not isinstance(id, int) or not 0 <= id < _N or not (_VALID >> id) & 1:
            raise ValueError("invalid pin")
        self._id = id
        self.init(mode, pull, value=value)

    def init(self, mode=-1, pull=-1, *, value=None, drive=None, hold=None):
        n = self._id
        if value is not None:
            _out[n] = 1 if value else 0
        if mode is not None and mode != -1:
            if mode not in (1, 3, 7):
                raise ValueError("invalid pin mode")
            if mode != 1 and n >= 34:
                raise ValueError("pin can only be input")
            _mode[n] = mode
        if pull != -1:
            _pull[n] = 0 if (pull is None or n >= 34) else (pull & 3)
        _report(n)

    def value(self, x=None):
        n = self._id
        if x is None:
            _rx()
            return _level(n)
        x = 1 if x else 0
        if _out[n] != x:
            _out[n] = x
            if _mode[n] & 2:
                _report(n)

    def __call__(self, x=None):
        return self.value(x)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=3, *, wake=None, hard=False):
        for q in _irqs:
            if q[0] == self._id:
                _irqs.remove(q)
                break
        if handler is not None:
            _irqs.append([self._id, handler, trigger, _level(self._id), self])

    def __repr__(self):
        return "Pin(%d)" % self._id


class ADC:
    ATTN_0DB = const(0)
    ATTN_2_5DB = const(1)
    ATTN_6DB = const(2)
    ATTN_11DB = const(3)
    WIDTH_9BIT = const(9)
    WIDTH_10BIT = const(10)
    WIDTH_11BIT = const(11)
    WIDTH_12BIT = const(12)
    _FS = (1100000, 1500000, 2200000, 3300000)  # full scale per attenuation, microvolts

    def __init__(self, pin, *, atten=None):
        n = pin._id if isinstance(pin, Pin) else pin
        if not isinstance(n, int) or not 0 <= n < _N or not ((_ADC1 | _ADC2) >> n) & 1:
            raise ValueError("invalid pin")
        self._n = n
        self._a = 0
        self._w = 12
        self.init(atten=atten)

    def init(self, *, atten=None):
        if atten is not None:
            self.atten(atten)

    def atten(self, atten):
        if atten not in (0, 1, 2, 3):
            raise ValueError("invalid attenuation")
        self._a = atten

    def width(self, bits):
        if bits not in (9, 10, 11, 12):
            raise ValueError("invalid width")
        self._w = bits

    def read_uv(self):
        _rx()
        if (_ADC2 >> self._n) & 1 and _wifi_on[0]:
            raise OSError("ESP_ERR_TIMEOUT")  # ADC2 is taken by the Wi-Fi driver
        v = _ext[self._n]
        fs = ADC._FS[self._a]
        return 0 if v < 0 else (v if v < fs else fs)

    def read_u16(self):
        return self.read_uv() * 65535 // ADC._FS[self._a]

    def read(self):
        return self.read_uv() * ((1 << self._w) - 1) // ADC._FS[self._a]


def _reset(cause):
    if _s is None:
        raise SystemExit(cause)
    _tx("R%d\n" % cause)
    while True:  # the harness stops this process and boots a new one
        _t.sleep_ms(50)


def reset():
    _reset(2)


def reset_cause():
    return int(_os.getenv("VB_RESET_CAUSE") or 1)


def unique_id():
    u = _os.getenv("VB_UID") or "240ac4000001"
    return bytes(int(u[i:i + 2], 16) for i in range(0, 12, 2))


def freq(hz=None):
    if hz is None:
        return 160000000


def idle():
    _rx()
    _t.sleep_ms(1)


def __getattr__(name):
    # The rarer parts of the API live in _machx and cost heap only once used. After boot
    # "/" is the flash, so the emulation's directory is mounted for the import, briefly.
    if name not in ("PWM", "Signal", "Timer", "WDT", "lightsleep", "deepsleep", "soft_reset",
                    "bootloader", "wake_reason", "disable_irq", "enable_irq", "time_pulse_us"):
        raise AttributeError(name)
    import sys
    m = sys.modules.get("_machx")
    if m is None:
        d = _os.getenv("MICROPYPATH")
        if d and _os.getenv("VB_FLASH"):
            import vfs
            vfs.mount(vfs.VfsPosix(d), "/.vb")
            sys.path.append("/.vb")
            try:
                import _machx as m
            finally:
                sys.path.remove("/.vb")
                vfs.umount("/.vb")
        else:
            import _machx as m
    return getattr(m, name)


_connect()
