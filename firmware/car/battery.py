# Battery model of the car board; hardware-free (no machine import).
#   pack volts = ADC.read_uv() / 1e6 * divider, median of the last `samples` readings
#   soc        = curve (pack volts -> soc): linear interpolation, clamped at the table's ends
#   low        = hysteresis: an episode starts below ask_below and ends above clear_above
# Buffers are preallocated; a reading allocates nothing but the float results.
from array import array


def interpolate(xs, ys, x):
    """Piecewise linear y(x) over ascending xs, clamped to the first / last y."""
    n = len(xs) - 1
    if x <= xs[0]:
        return ys[0]
    if x >= xs[n]:
        return ys[n]
    i = 1
    while xs[i] < x:
        i += 1
    return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - xs[i - 1]) / (xs[i] - xs[i - 1])


class Battery:
    def __init__(self, divider, curve, samples=9, ask_below=0.20, clear_above=0.25):
        n = len(curve)
        if divider <= 0 or n < 2 or not 1 <= samples <= 31 or not 0 < ask_below < clear_above <= 1:
            raise ValueError("battery: bad divider, curve, samples or thresholds")
        self._cv = array("f", [p[0] for p in curve])
        self._cs = array("f", [p[1] for p in curve])
        for i in range(n):
            if (i and self._cv[i] <= self._cv[i - 1]) or not 0 <= self._cs[i] <= 1:
                raise ValueError("battery: curve volts must rise, soc be 0..1")
        self._k = divider / 1000000
        self._ring = array("f", bytes(4 * samples))
        self._tmp = array("f", bytes(4 * samples))
        self._count = 0
        self._next = 0
        self.ask_below = ask_below
        self.clear_above = clear_above
        self.low = False
        self.volts = None  # filtered pack volts
        self.soc = None  # filtered state of charge 0..1

    def add_uv(self, uv):
        """One reading in microvolts at the pin. True exactly when a low episode starts."""
        r = self._ring
        size = len(r)
        r[self._next] = uv * self._k
        self._next = (self._next + 1) % size
        if self._count < size:
            self._count += 1
        n = self._count
        t = self._tmp
        for i in range(n):  # insertion sort into the scratch buffer (n <= 31)
            v = r[i]
            j = i - 1
            while j >= 0 and t[j] > v:
                t[j + 1] = t[j]
                j -= 1
            t[j + 1] = v
        h = n >> 1
        self.volts = t[h] if n & 1 else (t[h - 1] + t[h]) / 2
        soc = self.soc = interpolate(self._cv, self._cs, self.volts)
        if self.low:
            if soc > self.clear_above:
                self.low = False
            return False
        if soc < self.ask_below:
            self.low = True
            return True
        return False

    def read(self, adc):
        return self.add_uv(adc.read_uv())
