"""A per-car limit on requests: pure, the time passed in by the caller.

The generic cell rate algorithm (GCRA), a token bucket kept as one number per car: the
"theoretical arrival time" up to which the car has used its allowance. A car may send `burst`
requests at once and `requests_per_min` a minute after that. The `limits` package would need
a wall clock of its own (its in-memory storage reads time.time() and expires keys on a timer
thread); the engine's rules take `now` from their caller, so that replays and tests decide the
same, hence these few lines here.

A refused car is answered once per refusal period (until it may ask again); the refusals
that follow within it get no reply, so a flooding car cannot make the gateway flood back.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Per car, on its request topic (gateway config [rate_limit]). The defaults are far above
    what a car's firmware sends (one request pending at a time, retries seconds apart)."""

    requests_per_min: float = 20.0
    burst: int = 20


@dataclass(frozen=True, slots=True)
class Limited:
    """A refused request: the car may ask again after `retry_after` s; `answer`: the first
    refusal since the car was last told so (reply to it; drop the others silently)."""

    retry_after: float
    answer: bool


class RateLimiter:
    """admit(car, now) for each request; forget_idle(now) now and then keeps the table to the
    cars that used part of their allowance recently."""

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self.interval = 60.0 / limit.requests_per_min  # one request's share of the allowance
        self.tolerance = (limit.burst - 1) * self.interval  # how far ahead a burst may run
        # car -> [theoretical arrival time, refusals unanswered until]
        self._cars: dict[str, list[float]] = {}

    def admit(self, car: str, now: float) -> Limited | None:
        """None: the request may go ahead (and is counted); else the refusal."""
        entry = self._cars.get(car)
        if entry is None:
            self._cars[car] = [now + self.interval, 0.0]
            return None
        # never further ahead than an admitted request can put it: a clock set back (the
        # gateway's clock is the wall clock) must not lock a car out for the difference
        tat = min(max(entry[0], now), now + self.tolerance + self.interval)
        wait = tat - self.tolerance - now
        if wait <= 0:
            entry[0] = tat + self.interval
            return None
        entry[0] = tat
        if now < entry[1] <= now + self.interval:
            return Limited(wait, False)
        entry[1] = now + wait
        return Limited(wait, True)

    def forget_idle(self, now: float) -> None:
        """Drop the cars whose allowance is whole again (they start afresh when they ask)."""
        idle = [car for car, (tat, quiet) in self._cars.items() if tat <= now and quiet <= now]
        for car in idle:
            del self._cars[car]

    def __len__(self) -> int:
        return len(self._cars)
