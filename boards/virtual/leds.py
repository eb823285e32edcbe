"""LED measurement: the timestamped history of the diagram's LEDs and RGB LEDs, and blink
rates from it."""
from __future__ import annotations

import statistics
import threading
import time
from itertools import pairwise

from .diagram import LED_TYPES, RGB_TYPES, Circuit, Diagram

HISTORY_MAX = 10000  # changes kept per LED; the older half goes when it is reached


def blink_rate(changes: list[tuple[float, object]], t0: float, t1: float) -> float:
    """The blink frequency of an LED: 1 / the typical time between two rising edges inside
    [t0, t1) (the upper median of those intervals).

    Counting edges per window is off by one edge whenever the blink's phase or a late loop
    pass moves an edge across either end (2 Hz over 2 s read 1.5 Hz), and a pattern that
    starts mid-phase, or one late pass of a loaded host, adds one odd interval: the median
    interval is the pattern's period all the same. With fewer than two edges there is no
    interval: the count over the window is returned (0 for a steady LED)."""
    def on(state: object) -> bool:
        return any(state) if isinstance(state, tuple) else bool(state)

    edges: list[float] = []
    prev = None
    for t, state in changes:
        if t0 <= t < t1 and on(state) and prev is not None and not on(prev):
            edges.append(t)
        prev = state
    if len(edges) < 2:
        return len(edges) / (t1 - t0)
    return 1.0 / statistics.median_high([b - a for a, b in pairwise(edges)])


class LedHistory:
    """(time.monotonic(), state) of every change of each LED (bool) and RGB LED ((r, g, b))
    of the diagram, as the circuit shows them."""

    def __init__(self, diagram: Diagram, circuit: Circuit, lock: threading.RLock | threading.Condition):
        self._diagram = diagram
        self._circuit = circuit
        self._lock = lock
        self._history: dict[str, list[tuple[float, object]]] = {}
        self._shown: dict[str, object] = {}

    def update(self) -> None:
        """Solve the circuit and record the LEDs that changed (call with the lock held)."""
        solved = self._circuit.solve()
        now = time.monotonic()
        for p in self._diagram.parts.values():
            if p.type in LED_TYPES:
                v: object = self._circuit.led(p.id, solved)
            elif p.type in RGB_TYPES:
                v = self._circuit.rgb(p.id, solved)
            else:
                continue
            if self._shown.get(p.id, None) != v:
                self._shown[p.id] = v
                h = self._history.setdefault(p.id, [])
                h.append((now, v))
                if len(h) > HISTORY_MAX:
                    del h[:HISTORY_MAX // 2]

    def changes(self, part: str, since: float | None = None) -> list[tuple[float, object]]:
        """The changes of one LED / RGB LED, oldest first; from time `since` if given."""
        with self._lock:
            h = list(self._history.get(part, []))
        return [x for x in h if since is None or x[0] >= since]

    def blink_hz(self, part: str, window: float) -> float:
        """The blink frequency over the next `window` seconds (waits for them); see
        blink_rate()."""
        t0 = time.monotonic()
        time.sleep(window)
        # a loaded host oversleeps: only the window actually waited counts
        return blink_rate(self.changes(part), t0, time.monotonic())
