"""Capped exponential backoff with full jitter, for Wi-Fi and broker reconnects.

    b = Backoff(base_ms=500, cap_ms=30000)
    b.delay()   # attempt 1: uniform in [0, 500] ms, attempt 2: [0, 1000], ... then [0, 30000]
    b.reset()   # after a success

Full jitter (a random delay between 0 and the exponential ceiling) spreads the reconnects of
many boards after a broker restart instead of having them arrive in waves.
"""
from micropython import const
from random import getrandbits

_JITTER_BITS = const(10)  # 1024 steps: small ints only (no long-int allocation on a 32-bit port)


class Backoff:
    def __init__(self, base_ms=500, cap_ms=30000):
        if base_ms <= 0 or cap_ms < base_ms:
            raise ValueError("backoff: need 0 < base_ms <= cap_ms")
        self.base_ms = base_ms
        self.cap_ms = cap_ms
        self._ceil = base_ms

    def ceiling(self):
        """The upper bound of the next delay() in ms."""
        return self._ceil

    def delay(self):
        """The next delay in ms: uniform in [0, min(cap_ms, base_ms * 2**n)) after n delays
        since the last reset."""
        c = self._ceil
        if c < self.cap_ms:
            self._ceil = min(c * 2, self.cap_ms)
        return (c * getrandbits(_JITTER_BITS)) >> _JITTER_BITS

    def reset(self):
        self._ceil = self.base_ms
