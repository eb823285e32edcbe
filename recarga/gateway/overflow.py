"""The gateway's side of overflow between regions: pure rules, no I/O (docs/architecture.md,
"Overflow between regions").

- Origin gateway: `should_forward` decides when a car's request goes to central,
  `OverflowTracker` keeps the forwarded ones with their deadlines and turns central's answer
  (or the deadline, or the bridge going down) into the one reply the car gets.
- Every gateway: `summary_stations` + `SummaryPublisher` build the retained capacity summary.
- Target gateway: `answer_hold` answers central's hold and release requests through a
  `HoldPort` (`EngineHoldPort`: Engine.overflow_hold / overflow_release).

Everything takes plain inputs and `now` and returns what to publish (`Publish`), which car
gets which reply (`CarReply`) and what the engine must do (local holds to cancel).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from recarga.core.model import CarNeed, Reservation, StationMeta
from recarga.core.protocol import central as PC
from recarga.core.protocol import wire as W
from recarga.gateway.engine import Engine, HoldOutcome, Result

log = logging.getLogger("recarga.overflow")


@dataclass(frozen=True, slots=True)
class OverflowSettings:
    """[overflow] in the gateway's config."""

    enabled: bool = True
    wait_limit_s: float = 900.0  # forward when the best local offer waits longer than this
    answer_within_s: float = 5.0  # the request's deadline: central's answer must be back by then
    summary_min_interval_s: float = 5.0  # a changed summary shard goes out at most this often
    summary_refresh_s: float = 60.0  # every shard again this often (central sees the region alive)


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes  # b"" clears a retained message
    retain: bool = False


@dataclass(frozen=True, slots=True)
class CarReply:
    """The final reply to a car's reserve request (replaces the one the engine stored)."""

    car: str
    rid: str
    reply: dict[str, Any]


@dataclass(slots=True)
class Step:
    """What an overflow event asks of the service: replies to cars, messages to publish,
    local reservations (car, reservation id) to cancel because the car goes elsewhere."""

    replies: list[CarReply] = field(default_factory=list)
    publish: list[Publish] = field(default_factory=list)
    cancel_local: list[tuple[str, str]] = field(default_factory=list)


def _publish(topic: str, msg: dict[str, Any], retain: bool = False) -> Publish:
    return Publish(topic, W.encode(msg), retain)


# ---------------------------------------------------------------- origin: when to forward

@dataclass(frozen=True, slots=True)
class LocalOutcome:
    """What the engine answered locally, in the terms overflow needs."""

    wait_s: float | None  # None: nothing local (no_capacity)
    completion_s: float | None  # drive + wait + charge from now; None: nothing local
    reservation: str | None  # the local hold, cancelled if the car goes elsewhere


def local_outcome(reply: Mapping[str, Any], chosen: Reservation | None, now: float) -> LocalOutcome | None:
    """From the engine's answer to a car's request: its reply and the reservation a reserve
    chose (Result.reply, Result.reservation), in exact seconds. None when overflow cannot
    help: not a reserve, or a refusal for bad input or state rather than capacity."""
    if chosen is not None:
        return LocalOutcome(chosen.wait_s, chosen.eta - now + chosen.wait_s + chosen.charge_s, chosen.id)
    if not reply.get("ok") and reply.get("error", {}).get("code") == W.NO_CAPACITY:
        return LocalOutcome(None, None, None)
    return None


def should_forward(settings: OverflowSettings, local: LocalOutcome | None) -> bool:
    """Forward when nothing is reachable locally or the local wait is above the limit."""
    if not settings.enabled or local is None:
        return False
    return local.wait_s is None or local.wait_s > settings.wait_limit_s


# ---------------------------------------------------------------- origin: forwarded requests

@dataclass(frozen=True, slots=True)
class Pending:
    car: str
    rid: str
    deadline: float
    local_reply: dict[str, Any]  # what the car gets if overflow does not help
    local_reservation: str | None


class OverflowTracker:
    """The origin gateway's forwarded requests, until answered, past deadline or the link
    drops. Memory only: after a restart the car's retry (a new rid) asks again, and a late
    answer for an xid it no longer knows is abandoned, which releases the hold."""

    def __init__(self, region: str, settings: OverflowSettings):
        self.region = PC.check_region(region)
        self.settings = settings
        self.pending: dict[str, Pending] = {}
        self.link_up = False  # from the bridge's retained notification; unknown = down

    def forward(self, car: str, rid: str, need: CarNeed, local_reply: dict[str, Any],
                local: LocalOutcome, now: float) -> Step:
        """The car's request goes to central; without a link the car gets its local reply at
        once with overflow_unavailable. A request already pending (redelivered) sends nothing."""
        step = Step()
        if not self.link_up:
            step.replies.append(CarReply(car, rid, PC.with_overflow_note(
                local_reply, PC.OVERFLOW_UNAVAILABLE, "the link to central is down; local answer only")))
            return step
        xid = PC.overflow_id(self.region, car, rid)
        if xid in self.pending:
            return step
        deadline = now + self.settings.answer_within_s
        self.pending[xid] = Pending(car, rid, deadline, local_reply, local.reservation)
        msg = PC.overflow_request(xid, self.region, car, deadline, need.to_fields(), local.completion_s)
        step.publish.append(_publish(PC.central_topic(self.region, "overflow/request"), msg))
        log.info("car %s rid %s forwarded to central as %s (deadline in %.1f s)", car, rid, xid,
                 self.settings.answer_within_s)
        return step

    def on_answer(self, payload: bytes, now: float) -> Step:
        """Central's answer on recarga/v1/<region>/central/overflow/answer."""
        step = Step()
        try:
            a = PC.parse_overflow_answer(self.region, payload)
        except W.ProtocolError as e:
            log.warning("bad overflow answer (%s): %s", e.code, e)
            return step
        p = self.pending.get(a.xid)
        if p is None or PC.past_deadline(a.deadline, now) or PC.past_deadline(p.deadline, now):
            log.info("overflow answer %s %s: ignored", a.xid, "late" if p is not None else "for no pending request")
            if a.ok:  # a hold nobody will use: let central release it now, not at its expiry
                step.publish.append(_publish(PC.central_topic(self.region, "overflow/request"),
                                             PC.overflow_abandon(a.xid, self.region)))
            return step
        del self.pending[a.xid]
        if a.ok:
            step.replies.append(CarReply(p.car, p.rid, PC.overflow_reply(p.rid, a.reservation, a.region, a.broker)))
            if p.local_reservation is not None:
                step.cancel_local.append((p.car, p.local_reservation))
            log.info("car %s rid %s: overflow to region %s station %s", p.car, p.rid, a.region,
                     a.reservation["station"])
        else:
            step.replies.append(CarReply(p.car, p.rid, PC.with_overflow_note(
                p.local_reply, a.error["code"] if a.error["code"] in PC.CENTRAL_ERROR_CODES else PC.OVERFLOW_UNAVAILABLE,
                a.error["message"])))
        return step

    def expire(self, now: float) -> Step:
        """Requests whose deadline passed: the car gets its local reply, said so."""
        step = Step()
        for xid, p in list(self.pending.items()):
            if PC.past_deadline(p.deadline, now):
                del self.pending[xid]
                step.replies.append(CarReply(p.car, p.rid, PC.with_overflow_note(
                    p.local_reply, PC.DEADLINE_PASSED, "central did not answer in time; local answer only")))
        return step

    def on_link(self, payload: bytes, now: float) -> Step:
        """The bridge's notification: down answers every pending request locally at once."""
        step = Step()
        try:
            self.link_up = PC.parse_link(payload)
        except W.ProtocolError as e:
            log.warning("bad bridge notification: %s", e)
            return step
        if not self.link_up:
            for p in self.pending.values():
                step.replies.append(CarReply(p.car, p.rid, PC.with_overflow_note(
                    p.local_reply, PC.OVERFLOW_UNAVAILABLE, "the link to central went down; local answer only")))
            self.pending.clear()
        return step


# ---------------------------------------------------------------- capacity summary

def summary_stations(metas: Sequence[StationMeta], busy_until: Mapping[str, Sequence[float | None]],
                     now: float) -> list[PC.SummaryStation]:
    """Per station its usable slots grouped by power: how many, how many free now, when the
    first busy one frees. busy_until[sid][k-1] is the engine's busy_until for slot k (None:
    not usable; <= now: free). Stations without a usable slot are left out."""
    out = []
    for m in metas:
        times = busy_until.get(m.id)
        if not times:
            continue
        groups: dict[tuple[float, bool], list[float]] = {}
        for slot, t in zip(m.slots, times):
            if t is not None:
                groups.setdefault((slot.power_kw, slot.dc), []).append(t)
        if not groups:
            continue
        out.append(PC.SummaryStation(m.id, m.lat, m.lon, m.price_per_kwh, tuple(
            PC.SlotGroup(kw, dc, len(ts), sum(t <= now for t in ts),
                        min((t for t in ts if t > now), default=None))
            for (kw, dc), ts in sorted(groups.items()))))
    return out


class SummaryPublisher:
    """Which summary shards to publish (retained): a shard whose stations changed, at most
    every `min_interval_s`; every shard every `refresh_s` (its `at` tells central the region
    is alive). When the region needs fewer shards, the surplus retained ones are cleared."""

    def __init__(self, region: str, min_interval_s: float = 5.0, refresh_s: float = 60.0):
        self.region = PC.check_region(region)
        self.min_interval_s = min_interval_s
        self.refresh_s = refresh_s
        self._sent: dict[int, tuple[bytes, float]] = {}  # shard -> (stations JSON, when)
        self._of = 0
        self._refreshed = float("-inf")

    def due(self, stations: list[PC.SummaryStation], now: float, force: bool = False) -> list[Publish]:
        """force: every shard now (the link to central came back)."""
        msgs = PC.summary_messages(self.region, stations, now)
        # a new shard count goes out whole at once: central drops the shards beyond it
        refresh = force or now - self._refreshed >= self.refresh_s or len(msgs) != self._of
        out = [Publish(PC.summary_topic(self.region, k), b"", retain=True) for k in range(len(msgs), self._of)]
        for k in range(len(msgs), self._of):
            self._sent.pop(k, None)
        for m in msgs:
            body = W.encode(m["stations"])
            last = self._sent.get(m["shard"])
            changed = last is None or last[0] != body
            if refresh or (changed and (last is None or now - last[1] >= self.min_interval_s)):
                out.append(_publish(PC.summary_topic(self.region, m["shard"]), m, retain=True))
                self._sent[m["shard"]] = (body, now)
        self._of = len(msgs)
        if refresh:
            self._refreshed = now
        return out


# ---------------------------------------------------------------- target: central's holds

class HoldPort(Protocol):
    """The engine's reservation path as overflow needs it (Engine.overflow_hold /
    Engine.overflow_release, docs/architecture.md)."""

    def hold(self, car: str, xid: str, need: CarNeed, station: str | None, hold_until: float,
             now: float) -> HoldOutcome: ...

    def release(self, car: str, xid: str, reservation: str, now: float) -> Result: ...


def answer_hold(region: str, payload: bytes, now: float, port: HoldPort) -> tuple[Publish | None, list[Result]]:
    """Central's message on recarga/v1/<region>/central/hold/request. A hold past its deadline
    is ignored and holds nothing; otherwise the port holds a slot for the car (central's
    station first, else the region's best) and the answer goes back to central."""
    try:
        req = PC.parse_hold_request(region, payload)
    except W.ProtocolError as e:
        log.warning("bad hold request (%s): %s", e.code, e)
        return None, []
    if isinstance(req, PC.HoldRelease):
        log.info("overflow %s: central releases %s of car %s", req.xid, req.reservation, req.car)
        return None, [port.release(req.car, req.xid, req.reservation, now)]
    if PC.past_deadline(req.deadline, now):
        log.info("overflow %s: hold request arrived %.1f s past its deadline, ignored", req.xid, now - req.deadline)
        return None, []
    out = port.hold(req.car, req.xid, CarNeed.from_fields(req.need), req.station, req.confirm_by, now)
    if out.reservation is not None:
        answer = PC.hold_answer(req.xid, region, req.car, req.deadline, reservation=out.reservation)
    else:
        answer = PC.hold_answer(req.xid, region, req.car, req.deadline, code=out.code or W.NO_CAPACITY,
                               message=out.message)
    return _publish(PC.central_topic(region, "hold/answer"), answer), out.results


def hold_events(region: str, changed: Sequence[Reservation]) -> list[Publish]:
    """Hold events for central from the engine's changed reservations: those made for an
    overflow (request id = xid) that left `held`.
    Repeats are harmless."""
    out = []
    for r in changed:
        xid = r.rid
        if PC.XID_RE.match(xid) and r.state in PC.HOLD_EVENTS:
            out.append(_publish(PC.central_topic(region, "hold/event"), PC.hold_event(xid, region, r.state, r.id)))
    return out


class EngineHoldPort:
    """HoldPort over the engine's overflow methods: Engine.overflow_hold (central's station
    first, then the region's best; the hold lasts until central's confirm_by; a repeated hold
    request answers the same) and Engine.overflow_release."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def hold(self, car: str, xid: str, need: CarNeed, station: str | None, hold_until: float,
             now: float) -> HoldOutcome:
        return self.engine.overflow_hold(car, xid, need, station, hold_until, now)

    def release(self, car: str, xid: str, reservation: str, now: float) -> Result:
        return self.engine.overflow_release(car, xid, reservation, now)
