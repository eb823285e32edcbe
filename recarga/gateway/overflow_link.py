"""The gateway service's overflow adapter: wires gateway/overflow.py's pure rules to the
engine and to the service's batch (docs/architecture.md, "Overflow between regions").

The service calls it at four points and otherwise knows nothing of overflow:

- `subscriptions()` on connect; `route(topic)` for topics that are not a car's or station's;
- `car_message` stands in for Engine.car_message: a reserve the region cannot serve well
  is forwarded to central and the car's reply is held back (its request record is committed
  with the batch as usual, so it is on disk before the ack);
- `step(now, results)` once per batch, before the commit: Results the batch's central
  messages and deadlines produced (replies to cars via Engine.replace_reply, local holds
  cancelled, central's holds), to commit with the rest;
- `outbound(results)` after step: what to publish besides the Results' messages (overflow
  requests, hold answers, hold events, summary shards), once the batch is written.

Everything here runs on the service's loop thread.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from recarga.core.protocol import central as PC
from recarga.gateway.engine import Engine, Result
from recarga.gateway.overflow import (
    EngineHoldPort,
    OverflowSettings,
    OverflowTracker,
    Publish,
    Step,
    SummaryPublisher,
    answer_hold,
    hold_events,
    local_outcome,
    should_forward,
    summary_stations,
)

log = logging.getLogger("recarga.overflow")

Handler = Callable[[str, bytes, float], Result]
_LATE = 0.01  # wake this much after a deadline: past_deadline is strict (now > deadline)


class OverflowLink:
    def __init__(self, engine: Engine, settings: OverflowSettings):
        self.engine = engine
        self.region = engine.cfg.region
        self.settings = settings
        self.tracker = OverflowTracker(self.region, settings)
        self.summary = SummaryPublisher(self.region, settings.summary_min_interval_s, settings.summary_refresh_s)
        self.port = EngineHoldPort(engine)
        self._extra: list[Result] = []  # to commit with the current batch
        self._outbox: list[Publish] = []  # to publish after that commit
        self._dirty = True  # the summary may have changed since it was last built
        self._force = True  # every shard at the next chance (start, link back up)
        self._summary_at = 0.0  # when the summary may be built next
        self._refresh_at = 0.0  # when every shard is due again anyway
        self._routes: dict[str, tuple[Handler, str]] = {
            PC.central_topic(self.region, PC.LINK_LEAF): (self._on_link, ""),
            PC.central_topic(self.region, "overflow/answer"): (self._on_answer, ""),
            PC.central_topic(self.region, "hold/request"): (self._on_hold, ""),
        }

    # ------------------------------------------------------------ hooks

    def subscriptions(self) -> list[str]:
        return PC.gateway_central_subscriptions(self.region)

    def route(self, topic: str) -> tuple[Handler, str] | None:
        return self._routes.get(topic)

    def car_message(self, car: str, payload: bytes, now: float) -> Result:
        res = self.engine.car_message(car, payload, now)
        try:
            self._after_car(car, res, now)
        except Exception:
            # overflow must never cost the car its local answer
            log.exception("overflow for car %s failed; the local answer stands", car)
        return res

    def step(self, now: float, results: Sequence[Result]) -> list[Result]:
        """Once per batch before its commit: deadlines, the summary, the Results to add."""
        self._apply(self.tracker.expire(now), now)
        extra, self._extra = self._extra, []
        if not self._dirty and any(r.changed or r.station for r in (*results, *extra)):
            self._dirty = True
        # only while the link is up: the bridge keeps the retained shards on central meanwhile
        if self.tracker.link_up and (self._force or now >= self._refresh_at
                                     or (self._dirty and now >= self._summary_at)):
            self._publish_summary(now)
        return extra

    def outbound(self, results: Sequence[Result]) -> list[Publish]:
        """The batch's messages to central, and hold events for the overflow holds its
        Results changed; the service publishes them once the batch is written."""
        out, self._outbox = self._outbox, []
        for r in results:
            if r.changed and any(c.rid.startswith(PC.XID_PREFIX) for c in r.changed):
                out += hold_events(self.region, r.changed)
        return out

    def next_due(self) -> float:
        """When step() has work without any message: a deadline or the summary."""
        due = float("inf")
        if self.tracker.link_up:
            due = self._summary_at if self._dirty or self._force else self._refresh_at
        if self.tracker.pending:
            due = min(due, min(p.deadline for p in self.tracker.pending.values()) + _LATE)
        return due

    # ------------------------------------------------------------ inside

    def _after_car(self, car: str, res: Result, now: float) -> None:
        reply = res.reply
        if reply is None:
            return
        if res.request is None:
            # a redelivered or repeated request still waiting for central: its one reply comes later
            rid = reply.get("rid")
            if self.tracker.pending and isinstance(rid, str) and PC.overflow_id(self.region, car, rid) in self.tracker.pending:
                res.withhold_reply()
            return
        local = local_outcome(reply, res.reservation, now)
        if res.need is None or local is None or not should_forward(self.settings, local):
            return
        res.withhold_reply()  # the car waits for central's answer (or the deadline)
        self._apply(self.tracker.forward(car, res.request.rid, res.need, reply, local, now), now)

    def _apply(self, step: Step, now: float) -> None:
        self._outbox += step.publish
        for r in step.replies:
            self._extra.append(self.engine.replace_reply(r.car, r.rid, r.reply, now))
        for car, reservation in step.cancel_local:
            self._extra.append(self.engine.cancel(car, reservation, now))

    def _on_link(self, _: str, payload: bytes, now: float) -> Result:
        was = self.tracker.link_up
        self._apply(self.tracker.on_link(payload, now), now)
        if self.tracker.link_up != was:
            log.info("link to central %s", "up" if self.tracker.link_up else "down: answering locally")
            self._force = self.tracker.link_up  # central sees the region alive again at once
        return Result()

    def _on_answer(self, _: str, payload: bytes, now: float) -> Result:
        self._apply(self.tracker.on_answer(payload, now), now)
        return Result()

    def _on_hold(self, _: str, payload: bytes, now: float) -> Result:
        pub, results = answer_hold(self.region, payload, now, self.port)
        if pub is not None:
            self._outbox.append(pub)
        self._extra += results
        return Result()

    def _publish_summary(self, now: float) -> None:
        metas = self.engine.assignable()
        stations = summary_stations(metas, {m.id: self.engine.slot_times(m.id, now) for m in metas}, now)
        refresh = self._force or now >= self._refresh_at
        self._outbox += self.summary.due(stations, now, force=refresh)
        self._dirty = self._force = False
        self._summary_at = now + self.settings.summary_min_interval_s
        if refresh:
            self._refresh_at = now + self.settings.summary_refresh_s
