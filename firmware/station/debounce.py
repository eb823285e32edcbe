"""Time-based debouncing of one digital input (hardware-free).

    d = Debouncer(50)                 # a change must hold for 50 ms
    if d.update(raw, time.ticks_ms()):
        use(d.value)                  # the stable value just changed

A raw value that differs from the stable one must stay the same for `ms` milliseconds
before it becomes the stable value; bounces shorter than that are ignored. With ms=0 every
change is taken at once.
"""
import time


class Debouncer:
    def __init__(self, ms, value=False):
        self.ms = ms
        self.value = value  # the stable (debounced) value
        self._raw = value
        self._since = 0

    def reset(self, value):
        """Take `value` as the stable value now (e.g. the first reading at boot)."""
        self.value = self._raw = bool(value)

    def update(self, raw, now_ms):
        """Feed the current raw reading; True when the stable value changed now."""
        raw = bool(raw)
        if raw != self._raw:
            self._raw = raw
            self._since = now_ms
        if raw != self.value and time.ticks_diff(now_ms, self._since) >= self.ms:
            self.value = raw
            return True
        return False
