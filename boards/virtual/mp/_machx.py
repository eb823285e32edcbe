# The rarer parts of the emulated `machine` (see machine.py): loaded on first use.
import time as _t

import machine as _m
from machine import Pin
from micropython import const


class Signal:
    def __init__(self, pin, *args, invert=False, **kw):
        self._p = pin if isinstance(pin, Pin) else Pin(pin, *args, **kw)
        self._i = 1 if invert else 0

    def value(self, x=None):
        if x is None:
            return self._p.value() ^ self._i
        self._p.value((1 if x else 0) ^ self._i)

    def __call__(self, x=None):
        return self.value(x)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)


class PWM:
    def __init__(self, pin, freq=5000, *, duty=None, duty_u16=None, duty_ns=None, invert=False):
        self._p = pin if isinstance(pin, Pin) else Pin(pin)
        self._f = freq
        self._d = 0
        self._p.init(3)
        self.init(freq=freq, duty=duty, duty_u16=duty_u16, duty_ns=duty_ns)

    def init(self, *, freq=None, duty=None, duty_u16=None, duty_ns=None, invert=False):
        if freq is not None:
            self._f = freq
        if duty is not None:
            self.duty(duty)
        elif duty_u16 is not None:
            self.duty_u16(duty_u16)
        elif duty_ns is not None:
            self.duty_ns(duty_ns)

    def freq(self, f=None):
        if f is None:
            return self._f
        self._f = f

    def duty_u16(self, d=None):
        if d is None:
            return self._d
        self._d = max(0, min(65535, d))
        _m._tx("Q%d %d\n" % (self._p._id, self._d))
        self._p.value(1 if self._d else 0)

    def duty(self, d=None):
        if d is None:
            return self._d * 1023 // 65535
        self.duty_u16(d * 65535 // 1023)

    def duty_ns(self, ns=None):
        per = 1000000000 // self._f
        if ns is None:
            return self._d * per // 65535
        self.duty_u16(ns * 65535 // per)

    def deinit(self):
        self.duty_u16(0)


class Timer:
    ONE_SHOT = const(0)
    PERIODIC = const(1)

    def __init__(self, id=-1, **kw):
        self._cb = None
        if kw:
            self.init(**kw)

    def init(self, *, mode=1, period=-1, freq=-1, callback=None):
        self.deinit()
        self._mode = mode
        self._per = max(1, 1000 // freq if freq > 0 else period)
        self._cb = callback
        self._due = _t.ticks_add(_t.ticks_ms(), self._per)
        _m._timers.append(self)

    def deinit(self):
        if self in _m._timers:
            _m._timers.remove(self)

    def value(self):
        return max(0, _t.ticks_diff(self._due, _t.ticks_ms())) if self in _m._timers else 0


class WDT:
    def __init__(self, id=0, timeout=5000):
        self._ms = max(1, timeout)
        self._last = _t.ticks_ms()
        _m._tx("D%d\n" % self._ms)

    def feed(self):
        now = _t.ticks_ms()
        if _t.ticks_diff(now, self._last) >= self._ms >> 2:
            self._last = now
            _m._tx("F\n")


def soft_reset():
    _m._reset(5)


def bootloader(*args):
    _m._reset(2)


def deepsleep(ms=0):
    if ms:
        _t.sleep_ms(ms)
    _m._reset(4)


def lightsleep(ms=None):
    end = _t.ticks_add(_t.ticks_ms(), ms or 0)
    while True:
        left = _t.ticks_diff(end, _t.ticks_ms()) if ms else 100
        if left <= 0:
            break
        if _m._p is not None:
            _m._p.poll(min(left, 20))
        else:
            _t.sleep_ms(min(left, 20))
        _m._rx()


def wake_reason():
    return 0


def disable_irq():
    return 0


def enable_irq(state=0):
    pass


def time_pulse_us(pin, level, timeout_us=1000000):
    t0 = _t.ticks_us()
    while pin.value() != level:
        if _t.ticks_diff(_t.ticks_us(), t0) > timeout_us:
            return -2
    t1 = _t.ticks_us()
    while pin.value() == level:
        if _t.ticks_diff(_t.ticks_us(), t1) > timeout_us:
            return -1
    return _t.ticks_diff(_t.ticks_us(), t1)
