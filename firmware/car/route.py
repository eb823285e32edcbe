# Where the car is; hardware-free (no machine import).
# The car drives a polyline of [lat, lon] points at speed_kmh; at the end it goes on from the
# first point (loop: the closing leg last -> first is part of the route) or stops. A position
# set over serial overrides the route until resume(). Regions: bounds [lat_min, lon_min,
# lat_max, lon_max].
from array import array
from math import asin, cos, radians, sin, sqrt


def haversine_km(lat1, lon1, lat2, lon2):
    a = sin(radians(lat2 - lat1) / 2) ** 2 + cos(radians(lat1)) * cos(radians(lat2)) * sin(radians(lon2 - lon1) / 2) ** 2
    return 12742.0 * asin(sqrt(min(1.0, a)))


def find_region(bounds, lat, lon, current=-1):
    """Index of the first bounds (a list; None entries never match) containing the point, or
    -1; the current index wins while it still contains the point (overlaps do not flap)."""
    for i in range(-1, len(bounds)):
        j = current if i < 0 else i
        b = bounds[j] if 0 <= j < len(bounds) else None
        if b and b[0] <= lat <= b[2] and b[1] <= lon <= b[3]:
            return j
    return -1


class Route:
    def __init__(self, points, speed_kmh, loop=True):
        n = len(points)
        legs = n if loop and n > 1 else n - 1
        self._lat = array("d", [p[0] for p in points])
        self._lon = array("d", [p[1] for p in points])
        self._cum = array("d", bytes(8 * (legs + 1)))  # km from the start to each leg's start
        for i in range(legs):
            j = (i + 1) % n
            self._cum[i + 1] = self._cum[i] + haversine_km(self._lat[i], self._lon[i], self._lat[j], self._lon[j])
        self._legs = legs
        self.loop = loop
        self.speed_kmh = speed_kmh
        self.length_km = self._cum[legs]
        self.travelled_km = 0.0
        self.stopped = False  # at the end of a route that does not loop
        self.paused = False  # not moving (plugged in)
        self.override = False  # position set over serial
        self.lat = self._lat[0]
        self.lon = self._lon[0]

    def set_position(self, lat, lon):
        self.override = True
        self.lat = lat
        self.lon = lon

    def resume(self):
        self.override = False
        self.advance(0)

    def advance(self, dt_ms):
        """Drive dt_ms milliseconds at speed_kmh (unless paused, overridden or stopped)."""
        if self.override:
            return
        legs = self._legs
        if legs and not (self.paused or self.stopped):
            d = self.travelled_km + self.speed_kmh * dt_ms / 3600000
            if d >= self.length_km:
                if self.loop and self.length_km > 0:
                    d %= self.length_km
                else:
                    d = self.length_km
                    self.stopped = True
            self.travelled_km = d
        d = self.travelled_km
        c = self._cum
        i = 0
        while i < legs - 1 and c[i + 1] <= d:
            i += 1
        f = (d - c[i]) / (c[i + 1] - c[i]) if legs and c[i + 1] > c[i] else 0.0
        j = (i + 1) % len(self._lat)
        self.lat = self._lat[i] + (self._lat[j] - self._lat[i]) * f
        self.lon = self._lon[i] + (self._lon[j] - self._lon[i]) * f
