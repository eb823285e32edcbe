"""Central's overflow rules: a message, the stored rows it concerns and `now` in; the rows to
write and the messages to publish out. Pure: no broker, clock or database (docs/central.md).

Lifecycle of an overflow request (xid):

    overflow ──▶ holding (hold request to the best neighbouring region)
                  │ hold answer ok, in time ────────────▶ answered (ok: region, broker, slot)
                  │ refused, attempts left, time left ─▶ holding (the next best region)
                  │ refused, no more ──────────────────▶ answered (no_capacity)
                  │ deadline passes ───────────────────▶ expired (the origin answered locally)
                  └ abandon ───────────────────────────▶ abandoned
    nothing fresh / reachable ─────────────────────────▶ answered (overflow_unavailable / no_capacity)

A hold (one per xid) is recorded only from an ok answer that arrives in time for a request
still `holding`. Any other ok answer (late, for an abandoned/expired/unknown request, from
a region not asked) is released at once, so no hold is left behind. Everything past its
deadline is ignored. Repeated messages (QoS 1 redelivery, a second instance) find the rows
and re-send the same answer or hold request; nothing is decided twice.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from recarga.central.config import OverflowConfig, RegionInfo
from recarga.central.store import HOLD_ACTIVE, HoldRow, RequestRow
from recarga.central.view import NetworkView
from recarga.core.model import CarNeed
from recarga.core.protocol import central as PC
from recarga.core.protocol import wire as W

log = logging.getLogger("recarga.central")


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: dict[str, Any]


@dataclass(slots=True)
class Decision:
    requests: list[RequestRow] = field(default_factory=list)  # to write, in order
    holds: list[HoldRow] = field(default_factory=list)
    publish: list[Message] = field(default_factory=list)


class Overflow:
    def __init__(self, cfg: OverflowConfig, regions: dict[str, RegionInfo], view: NetworkView):
        self.cfg = cfg
        self.regions = regions
        self.view = view

    # ------------------------------------------------------------ from origin gateways

    def on_request(self, msg: PC.OverflowRequest | PC.OverflowAbandon, known: RequestRow | None,
                   hold: HoldRow | None, now: float) -> Decision:
        if isinstance(msg, PC.OverflowAbandon):
            return self._abandon(msg, known, hold, now)
        d = Decision()
        if PC.past_deadline(msg.deadline, now):
            log.info("overflow %s from %s: %.1f s past its deadline, ignored", msg.xid, msg.origin, now - msg.deadline)
            return d
        if known is not None:  # redelivered, or sent again: the same answer or hold request
            self._resend(known, d)
            return d
        if msg.origin not in self.regions:
            log.warning("overflow %s from unconfigured region %s", msg.xid, msg.origin)
        row = RequestRow(msg.xid, msg.origin, msg.car, dict(msg.need), msg.beat_s, msg.deadline, "holding",
                         None, None, (), None, now, now)
        return self._ask_next(row, now, d)

    def _abandon(self, msg: PC.OverflowAbandon, known: RequestRow | None, hold: HoldRow | None,
                 now: float) -> Decision:
        d = Decision()
        if known is None or known.origin != msg.origin:
            return d
        if known.state in ("holding", "answered"):
            d.requests.append(replace(known, state="abandoned", updated=now))
        if hold is not None and hold.state in HOLD_ACTIVE:
            self._release(d, hold.region, hold.car, hold.xid, hold.reservation)
            d.holds.append(replace(hold, state="released", updated=now))
        log.info("overflow %s abandoned by %s", msg.xid, msg.origin)
        return d

    # ------------------------------------------------------------ from target gateways

    def on_hold_answer(self, ans: PC.HoldAnswer, known: RequestRow | None, hold: HoldRow | None,
                       now: float) -> Decision:
        d = Decision()
        r = ans.reservation
        if known is None:
            if r is not None:  # nobody asked for this hold (here): give it back
                self._release(d, ans.region, ans.car, ans.xid, r["id"])
            return d
        in_time = not (PC.past_deadline(ans.deadline, now) or PC.past_deadline(known.deadline, now))
        recorded = hold is not None and r is not None and (hold.region, hold.reservation) == (ans.region, r["id"])
        awaited = known.state == "holding" and known.target == ans.region
        if recorded or (awaited and in_time):
            if recorded:  # redelivered: the answer may not have gone out before a crash
                if in_time:
                    self._resend(known, d)
                return d
            return self._take(ans, known, now, d)
        why = "late" if not in_time else f"not awaited (request {known.state}, asked {known.target})"
        log.info("hold answer %s from %s: %s, ignored%s", ans.xid, ans.region, why, "; releasing it" if r else "")
        if r is not None:
            self._release(d, ans.region, ans.car, ans.xid, r["id"])
        elif in_time:
            self._resend(known, d)
        return d

    def _take(self, ans: PC.HoldAnswer, known: RequestRow, now: float, d: Decision) -> Decision:
        """The awaited answer, in time: record the hold and answer the origin, or ask the next."""
        r = ans.reservation
        if r is None:
            log.info("overflow %s: region %s refused (%s): %s", ans.xid, ans.region, ans.error["code"],
                     ans.error["message"])
            return self._ask_next(known, now, d)
        info = self.regions.get(ans.region)
        if info is None:  # asked from its summary, but cars cannot be sent there
            self._release(d, ans.region, ans.car, ans.xid, r["id"])
            return self._answer(known, now, d, code=PC.OVERFLOW_UNAVAILABLE,
                                message=f"region {ans.region} has no broker address configured at central")
        d.holds.append(HoldRow(ans.xid, ans.region, ans.car, r["station"], r["slot"], r["id"], "held",
                               float(r["hold_until"]), now, now))
        log.info("overflow %s: car %s held at %s/%s slot %d (%s) until %.0f", ans.xid, ans.car, ans.region,
                 r["station"], r["slot"], r["id"], r["hold_until"])
        return self._answer(known, now, d, region=ans.region, host=info.broker_host, port=info.broker_port,
                            reservation=r)

    def on_hold_event(self, ev: PC.HoldEvent, hold: HoldRow | None, now: float) -> Decision:
        d = Decision()
        if hold is None or hold.region != ev.region or hold.reservation != ev.reservation:
            return d
        if hold.state in HOLD_ACTIVE and hold.state != ev.event:
            d.holds.append(replace(hold, state=ev.event, updated=now))
            log.info("overflow %s: hold %s %s", hold.xid, hold.reservation, ev.event)
        return d

    # ------------------------------------------------------------ time

    def tick(self, holding_past: list[RequestRow], held_past: list[HoldRow], now: float) -> Decision:
        """Requests still waiting for a hold answer past their deadline: expired (the origin
        has answered its car). Holds past their hold_until unconfirmed: expired (the target
        gateway expires them itself; this keeps central's record true)."""
        d = Decision()
        d.requests += [replace(r, state="expired", updated=now) for r in holding_past]
        d.holds += [replace(h, state="expired", updated=now) for h in held_past]
        return d

    # ------------------------------------------------------------ inside

    def _ask_next(self, row: RequestRow, now: float, d: Decision) -> Decision:
        """Ask the best region not tried yet, or answer that there is none."""
        hold_deadline = row.deadline - self.cfg.relay_s
        if len(row.tried) >= self.cfg.max_attempts or PC.past_deadline(hold_deadline, now):
            return self._answer(row, now, d, code=W.NO_CAPACITY,
                                message=f"no region could hold a slot (asked: {', '.join(row.tried) or 'none'})")
        candidates = self._neighbours(row.origin) - set(row.tried)
        fresh = self.view.fresh_regions(now)
        if not candidates & set(fresh):
            if row.tried:  # those asked refused; the others are silent
                return self._answer(row, now, d, code=W.NO_CAPACITY,
                                    message=f"no region could hold a slot (asked: {', '.join(row.tried)})")
            return self._answer(row, now, d, code=PC.OVERFLOW_UNAVAILABLE,
                                message="no neighbouring region has reported its capacity recently")
        best = self.view.best(CarNeed.from_fields(row.need), now, candidates, row.beat_s)
        if best is None:
            return self._answer(row, now, d, code=W.NO_CAPACITY,
                                message="nothing better within reach in the neighbouring regions")
        row = replace(row, state="holding", target=best.region, station=best.station,
                      tried=row.tried + (best.region,), updated=now)
        d.requests.append(row)
        d.publish.append(self._hold_request(row))
        log.info("overflow %s (car %s from %s): asking %s for station %s (completion %.0f s)", row.xid, row.car,
                 row.origin, best.region, best.station, best.choice.completion_s)
        return d

    def _resend(self, row: RequestRow, d: Decision) -> None:
        """The request's current outgoing message again (receivers are idempotent)."""
        if row.state == "answered":
            d.publish.append(self._to_origin(row, row.answer))
        elif row.state == "holding":
            d.publish.append(self._hold_request(row))

    def _neighbours(self, origin: str) -> set[str]:
        info = self.regions.get(origin)
        if info is not None and info.neighbours:
            return set(info.neighbours)
        return set(self.regions) - {origin}

    def _hold_request(self, row: RequestRow) -> Message:
        assert row.target is not None
        deadline = row.deadline - self.cfg.relay_s
        msg = PC.hold_request(row.xid, row.origin, row.target, row.car, row.station, deadline,
                             row.deadline + self.cfg.confirm_s, row.need)
        return Message(PC.central_topic(row.target, "hold/request"), msg)

    def _answer(self, row: RequestRow, now: float, d: Decision, **outcome: Any) -> Decision:
        answer = PC.overflow_answer(row.xid, row.origin, row.deadline, **outcome)
        d.requests.append(replace(row, state="answered", answer=answer, updated=now))
        d.publish.append(self._to_origin(row, answer))
        return d

    def _to_origin(self, row: RequestRow, answer: dict[str, Any] | None) -> Message:
        assert answer is not None
        return Message(PC.central_topic(row.origin, "overflow/answer"), answer)

    def _release(self, d: Decision, region: str, car: str, xid: str, reservation: str) -> None:
        d.publish.append(Message(PC.central_topic(region, "hold/request"),
                                 PC.hold_release(xid, region, car, reservation)))
