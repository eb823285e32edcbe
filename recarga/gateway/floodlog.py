"""Warnings about a car's refused requests, summarised when they come in a flood.

A car's first refused request is logged as it is (an ordinary mistake gets its ordinary line)
and opens a window of `interval_s`; what that car has refused within the window is only
counted, and when the window ends a summary line gives the counts:

    car X: 1,998 requests refused (rate_limited 1,500, invalid 498) in the last 10 s

While the refusals go on, the next window counts them again and ends with the next summary;
a window without any closes the car's account, and its next refusal is logged as it is. So a
flooding car writes at most one line per window (journald drops lines past a few hundred a
second, and with them other cars' lines). Pure: the time passed in by the caller.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

FLOOD_WINDOW_S = 10.0


@dataclass(slots=True)
class _Window:
    start: float
    end: float
    counts: dict[str, int] = field(default_factory=dict)  # kind -> refusals in the window
    logged: int = 0  # of them written as they came (the window's first)


class FloodLog:
    def __init__(self, log: logging.Logger, interval_s: float = FLOOD_WINDOW_S) -> None:
        self.log = log
        self.interval_s = interval_s
        self._open: dict[str, _Window] = {}  # car -> its current window

    def refused(self, car: str, kind: str, now: float, msg: str, *args: Any) -> None:
        """A refused request of `car` (kind: the error code, or "invalid"): `msg % args` at
        WARNING if it is the car's first in a while, else counted for the summary."""
        w = self._open.get(car)
        while w is not None and now >= w.end:  # ended while no flush came
            w = self._close(car, w)
        if w is None:
            w = self._open[car] = _Window(now, now + self.interval_s, logged=1)
            self.log.warning(msg, *args)
        w.counts[kind] = w.counts.get(kind, 0) + 1

    def flush(self, now: float) -> None:
        """Write the summaries of the windows that have ended (the engine's tick calls this)."""
        for car, w in [(car, w) for car, w in self._open.items() if now >= w.end]:
            self._close(car, w)

    def _close(self, car: str, w: _Window) -> _Window | None:
        """Summarise an ended window; the next one if the car was flooding, else None."""
        total = sum(w.counts.values())
        if total <= w.logged:
            del self._open[car]
            return None
        parts = ", ".join(f"{kind} {n:,}" for kind, n in sorted(w.counts.items(), key=lambda kv: (-kv[1], kv[0])))
        self.log.warning("car %s: %s requests refused (%s) in the last %.0f s", car, f"{total:,}", parts,
                         w.end - w.start)
        nxt = self._open[car] = _Window(w.end, w.end + self.interval_s)
        return nxt

    def __len__(self) -> int:
        return len(self._open)
