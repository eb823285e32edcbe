"""The gateway's functional core: events and `now` in, state changes and messages out.

No sockets, clock, threads or database in here. The MQTT adapter feeds events in, commits
`Result.changed` and `Result.request` to the store, then publishes `Result.messages` and
acknowledges the inbound message. Replaying the same events gives the same results.
"""
from __future__ import annotations

import hashlib
import logging
import math
from collections import deque
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from operator import attrgetter
from typing import Any, Mapping

from recarga.core import evmodels
from recarga.core.evmodels import CarModel
from recarga.core.model import (
    AC_MAX_KW,
    CarNeed,
    Choice,
    Reservation,
    SelectionParams,
    SlotMeta,
    StationMeta,
)
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.core.selection import DEFAULT_POLICY, Selector
from recarga.gateway.floodlog import FloodLog
from recarga.gateway.ratelimit import Limited, RateLimit, RateLimiter

log = logging.getLogger("recarga.engine")

# A car's own requests (reserve, confirm, cancel) are logged at DEBUG, one line each: at
# INFO a busy region would write thousands a second (their CPU, and journald drops lines
# past ~330 a second). INFO gets a summary of them every SUMMARY_S, and a line for every
# transition a car did not ask for (check-in, completion, expiry, fault, overflow hold).
# Every answer is in the database anyway (table requests).
SUMMARY_S = 60.0
_COUNTED = ("reserved", "confirmed", "cancelled", "refused", "invalid", "repeated")

# Why a reservation faulted (the `reason` of its car's faulted event, docs/protocol.md)
FAULT_OUT_OF_SERVICE = "out_of_service"  # the slot went out of service
FAULT_GONE = "gone"  # the slot no longer exists
FAULT_LATE = "late"  # confirmed, deadline passed while the slot was still busy: re-planned


@dataclass(frozen=True, slots=True)
class EngineConfig:
    region: str
    policy: str = DEFAULT_POLICY
    hold_s: float = 120.0  # a held offer lapses unless the car confirms within this
    grace_s: float = 600.0  # a confirmed reservation is a no-show this long after its start
    expected_session_s: float = 3600.0  # unknown car on a slot: assume it charges this long
    min_remaining_s: float = 600.0  # ... and at least this much longer once overdue
    max_wait_s: float = 1800.0  # book a busy slot only if it is expected free within this
    # a refused car (no_capacity) is told to ask again when the earliest slot comes within
    # max_wait_s, but no sooner than retry_min_s and no later than retry_max_s
    retry_min_s: float = 60.0
    retry_max_s: float = 1800.0
    request_memory_s: float = 86400.0  # a request id is answered identically for this long
    selection: SelectionParams = SelectionParams()
    rate_limit: RateLimit = RateLimit()  # per car (gateway/ratelimit.py)


@dataclass(frozen=True, slots=True)
class Outbound:
    topic: str
    payload: dict[str, Any]
    retain: bool = False


@dataclass(frozen=True, slots=True)
class RequestRecord:
    car: str
    rid: str
    at: float
    reply: dict[str, Any]


@dataclass(slots=True)
class StationLive:
    online: bool = False
    slots: list[str] | None = None  # last reported slot states, None until first status
    occupied_since: list[float | None] = field(default_factory=list)
    numbering: tuple[int, int] | None = None  # (boot, seq) of the latest numbered status applied


@dataclass(frozen=True, slots=True)
class SlotMark:
    """A slot an operator took out of service (recarga-gateway slot out-of-service)."""

    reason: str
    since: float


@dataclass(frozen=True, slots=True)
class CommandDone:
    """An operator command's outcome, stored with what it changed (gateway/admin.py)."""

    id: int
    ok: bool
    message: str
    at: float


class CommandRefused(ValueError):
    """An operator command that cannot apply (unknown id, wrong state); nothing changed."""


@dataclass(slots=True)
class Result:
    """What one event did: messages to publish, rows to persist, and for a car's request the
    answer and what it decided, as values (the reply is among `messages` as well)."""

    messages: list[Outbound] = field(default_factory=list)
    changed: list[Reservation] = field(default_factory=list)  # to persist, in order
    request: RequestRecord | None = None  # to persist with them (idempotency)
    # persisted too: after a restart, queued requests arrive before the retained statuses
    station: tuple[str, StationLive] | None = None
    reply: dict[str, Any] | None = None  # the answer to the car's request; None: no request answered
    reservation: Reservation | None = None  # the one a reserve (or central's hold) chose, exact times
    need: CarNeed | None = None  # what a reserve (or central's hold) asked for, also when refused
    # persisted too: operator out-of-service marks set (SlotMark) or cleared (None), by slot
    marks: list[tuple[str, int, SlotMark | None]] = field(default_factory=list)
    command: CommandDone | None = None  # the operator command this applied, marked done with it

    def withhold_reply(self) -> None:
        """Take the car's reply out of `messages` (it is answered later); `reply` keeps it."""
        reply = self.reply
        self.messages = [m for m in self.messages if m.payload is not reply]


@dataclass(slots=True)
class HoldOutcome:
    """The engine's answer to central's hold (gateway/overflow.py answers central with it)."""

    reservation: dict[str, Any] | None  # the held reservation's view (state "held")
    code: str | None = None  # why not (no_capacity, unknown_station, bad_state)
    message: str = ""
    results: list[Result] = field(default_factory=list)  # for the service to commit and publish


def reservation_id(*parts: str) -> str:
    """Deterministic id, so a replay or a redelivered request yields the same id."""
    return "r" + hashlib.blake2s("/".join(parts).encode(), digest_size=6).hexdigest()


_HANDLERS = {"reserve": "_reserve", "confirm": "_confirm", "cancel": "_cancel"}  # Engine's, by op
_DONE = {"reserve": "reserved", "confirm": "confirmed", "cancel": "cancelled"}  # counts, by op
_reservation_values = attrgetter(*(f.name for f in fields(Reservation)))


def _changed(r: Reservation, **changes: Any) -> Reservation:
    """dataclasses.replace(r, **changes), cheaper: a copy from all field values fetched in one
    call, then the changes (replace looks every field up by name, on every call)."""
    new = Reservation(*_reservation_values(r))
    for name, value in changes.items():
        setattr(new, name, value)
    return new


def reservation_view(r: Reservation) -> dict[str, Any]:
    """What a car is told about its reservation (docs/protocol.md, "reservation object")."""
    return {
        "id": r.id,
        "station": r.station,
        "slot": r.slot,
        "state": r.state,
        "distance_km": round(r.distance_km, 2),
        "eta": round(r.eta),
        "wait_min": round(r.wait_s / 60, 1),
        "charge_min": round(r.charge_s / 60, 1),
        "energy_kwh": round(r.energy_kwh, 2),
        "power_kw": round(r.power_kw, 1),
        "price_eur": round(r.price_eur, 2),
        "hold_until": round(r.hold_until) if r.state == "held" else round(r.deadline),
    }


class Engine:
    def __init__(self, config: EngineConfig, stations: list[StationMeta],
                 models: Mapping[str, CarModel] | None = None):
        """models: the car models a reserve request may name, by id (evmodels.by_id); None:
        those of the shipped EV models data, read when a request first names one."""
        self.cfg = config
        self._models = models
        self.stations: dict[str, StationMeta] = {s.id: s for s in stations}
        self.live: dict[str, StationLive] = {}
        self.reservations: dict[str, Reservation] = {}  # active ones only
        self.by_car: dict[str, str] = {}
        self.by_slot: dict[tuple[str, int], list[str]] = {}  # active ids, by start
        self.led: dict[tuple[str, int], bool] = {}  # last reserved-flag told to / seen from the station
        self.requests: dict[tuple[str, str], RequestRecord] = {}
        self._remembered: deque[tuple[float, tuple[str, str]]] = deque()  # (at, key) in arrival order
        self._selector: Selector | None = None
        self._now = 0.0  # decision time, for the SlotView methods
        self._horizon = float("inf")  # slots busy beyond this are not offered (see _choose)
        self.counts: dict[str, int] = dict.fromkeys(_COUNTED, 0)  # car requests since the last summary
        self._counting_since: float | None = None  # start of the summary's window (the first tick)
        self._miscounted: dict[str, int] = {}  # station -> slot count it reported against its metadata
        self.stale_statuses = 0  # replayed statuses ignored as older than one applied (the service reports them)
        self.limiter = RateLimiter(config.rate_limit)
        self.refusals = FloodLog(log)  # a car's refused requests: a line, or a summary in a flood
        self.out_of_service: dict[str, dict[int, SlotMark]] = {}  # operator's marks: station -> slot -> mark
        self._back_in_service: set[tuple[str, int]] = set()  # told in_service, not yet seen so
        # restored reservations on a slot no station has (yet): ended at the first tick unless
        # a retained meta message brought their station back before it
        self._unplaced: set[str] = set()

    # ------------------------------------------------------------ recovery

    def restore(self, active: list[Reservation], requests: list[RequestRecord],
                live: dict[str, StationLive] | None = None,
                marks: dict[tuple[str, int], SlotMark] | None = None) -> None:
        """Load what the store kept; retained station messages then bring it up to date."""
        for sid, state in (live or {}).items():
            if sid in self.stations:
                self.live[sid] = state
        for (sid, slot), mark in (marks or {}).items():
            self.out_of_service.setdefault(sid, {})[slot] = mark
        for r in active:
            self._index(r)
            if not self._slot_exists(r.station, r.slot):
                self._unplaced.add(r.id)
        for rec in sorted(requests, key=attrgetter("at")):
            self._remember(rec)

    def _slot_exists(self, sid: str, slot: int) -> bool:
        meta = self.stations.get(sid)
        return meta is not None and 1 <= slot <= len(meta.slots)

    # ------------------------------------------------------------ SlotView for selection

    def busy_until(self, station_id: str, slot: int) -> float | None:
        # Called for every candidate slot of every decision: _occupant_until inlined, one
        # lookup of the slot's queue.
        live = self.live.get(station_id)
        if live is None or not live.online:
            return None
        states = live.slots
        if states is None or slot > len(states):
            return None
        state = states[slot - 1]
        if state == "out_of_service":
            return None
        ids = self.by_slot.get((station_id, slot))
        if ids:
            reservations = self.reservations
            first = reservations[ids[0]]
            if first.state == "checked_in":
                t = first.end
            else:
                t = self._now
                if state == "occupied":
                    t = self._occupied_until(live, slot, t)
            t = max(t, reservations[ids[-1]].end)  # the queue is ordered by start
        else:
            t = self._now
            if state == "occupied":
                t = self._occupied_until(live, slot, t)
        return t if t <= self._horizon else None

    def _occupied_until(self, live: StationLive, slot: int, t: float) -> float:
        since = live.occupied_since[slot - 1]
        expected = (since if since is not None else t) + self.cfg.expected_session_s
        return max(expected, t + self.cfg.min_remaining_s)

    def _occupant_until(self, live: StationLive, station_id: str, slot: int) -> float:
        """When the car on the slot now (if any) is expected to leave."""
        ids = self.by_slot.get((station_id, slot))
        if ids and self.reservations[ids[0]].state == "checked_in":
            return self.reservations[ids[0]].end  # our own car: its estimate, not the generic one
        t = self._now
        if live.slots is not None and live.slots[slot - 1] == "occupied":
            t = self._occupied_until(live, slot, t)
        return t

    def free_slots(self, station_id: str) -> int:
        live = self.live.get(station_id)
        if live is None or not live.online or live.slots is None:
            return 0
        return sum(1 for i, s in enumerate(live.slots, 1)
                   if s in ("free", "reserved") and not self.by_slot.get((station_id, i)))

    def queue_len(self, station_id: str) -> int:
        live = self.live.get(station_id)
        if live is None or live.slots is None:
            return 0
        n = 0
        for i, s in enumerate(live.slots, 1):
            ids = self.by_slot.get((station_id, i), ())
            n += sum(1 for rid in ids if self.reservations[rid].state != "checked_in")
            n += s == "occupied"
        return n

    # ------------------------------------------------------------ events

    def car_message(self, car: str, payload: bytes, now: float) -> Result:
        res = Result()
        limited = self.limiter.admit(car, now)  # every message counts, valid or not
        if limited is not None:
            self._rate_limited(res, car, payload, limited, now)
            return res
        try:
            req = D.parse_car_request(car, payload)
        except W.ProtocolError as e:
            self.refusals.refused(car, "invalid", now, "car %s: rejected request (%s): %s", car, e.code, e)
            self.counts["invalid"] += 1
            self._reply(res, car, D.error_reply(D.request_rid(payload), e.code, str(e), e.field))
            return res
        known = self.requests.get((car, req.rid))
        if known is not None:
            # QoS 1 redelivery or a car retrying: same answer, nothing new
            self.counts["repeated"] += 1
            self._reply(res, car, known.reply)
            return res
        self._now = now
        reply = getattr(self, _HANDLERS[req.op])(req, now, res)
        if reply["ok"]:
            self.counts[_DONE[req.op]] += 1
        else:
            self.counts["refused"] += 1
            err = reply["error"]
            self.refusals.refused(car, err["code"], now, "car %s: refused request %s (%s): %s", car, req.rid,
                                  err["code"], err["message"])
        res.request = RequestRecord(car, req.rid, now, reply)
        self._remember(res.request)
        self._reply(res, car, reply)
        return res

    def _rate_limited(self, res: Result, car: str, payload: bytes, limited: Limited, now: float) -> None:
        """Over the car's limit: nothing decided, nothing stored (the same rid gets a real answer
        once the car may ask again); a reply only to the first such request until then."""
        rl = self.cfg.rate_limit
        retry_after = max(1, math.ceil(limited.retry_after))
        self.refusals.refused(car, D.RATE_LIMITED, now, "car %s: request refused (%s): over %g requests a minute "
                              "(burst %d); may ask again in %d s", car, D.RATE_LIMITED, rl.requests_per_min,
                              rl.burst, retry_after)
        if limited.answer:
            self._reply(res, car, D.error_reply(
                D.request_rid(payload), D.RATE_LIMITED, f"more than {rl.requests_per_min:g} requests a minute "
                f"(burst {rl.burst}) from car {car}; ask again in {retry_after} s", retry_after=retry_after))

    def station_status(self, sid: str, payload: bytes, now: float, replayed: bool = False) -> Result:
        """A station's status. `replayed`: it may be a copy the broker kept (its retained
        status, or a message queued for the gateway's session, before the gateway has caught
        up after connecting, possibly restored from an older save after a broker crash); one
        numbered before the latest applied is then stale and ignored. A status sent while the
        gateway listens is the station's latest, whatever its numbers (a station whose flash
        was wiped starts counting again)."""
        res = Result()
        meta = self.stations.get(sid)
        if meta is None:
            log.warning("status from unknown station %s ignored", sid)
            return res
        try:
            status = D.parse_station_report(payload)
        except W.ProtocolError as e:
            log.warning("station %s: bad status (%s): %s", sid, e.code, e)
            return res
        known = self.live.get(sid)
        numbering, seen = status.numbering, known.numbering if known is not None else None
        if numbering is not None and seen is not None and D.status_before(numbering, seen):
            if replayed:
                self.stale_statuses += 1
                log.debug("station %s: stale status (boot %d seq %d, applied boot %d seq %d) ignored",
                          sid, *numbering, *seen)
                return res
            log.info("station %s numbers its statuses anew (boot %d seq %d after boot %d seq %d)",
                     sid, *numbering, *seen)
        slots = status.slots
        if len(slots) != len(meta.slots):
            if self._miscounted.get(sid) != len(slots):  # once, not on every retained replay
                log.warning("station %s reports %d slots, metadata has %d; using the overlap",
                            sid, len(slots), len(meta.slots))
            self._miscounted[sid] = len(slots)
            slots = (slots + ["out_of_service"] * len(meta.slots))[: len(meta.slots)]
        else:
            self._miscounted.pop(sid, None)
        marked = self.out_of_service.get(sid)
        if marked:
            # an operator's out-of-service stands until in-service, whatever the station shows
            slots = ["out_of_service" if i in marked else s for i, s in enumerate(slots, 1)]
        self._now = now
        live = self.live.setdefault(sid, StationLive())
        res.station = (sid, live)
        if numbering is not None:
            live.numbering = numbering
        if live.slots is None:
            self._selector = None  # now assignable
        old = live.slots or ["free"] * len(slots)
        if len(live.occupied_since) != len(slots):
            live.occupied_since = [now if s == "occupied" else None for s in slots]
        live.slots = list(slots)
        self._forget(sid)
        for i, (before, after) in enumerate(zip(old, slots), 1):
            key = (sid, i)
            if after in ("free", "reserved"):
                self.led[key] = after == "reserved"
            if after != "out_of_service" and self._back_in_service:
                self._back_in_service.discard(key)
            if after == "out_of_service" and before != "out_of_service":
                self._fault_slot(key, now, res, FAULT_OUT_OF_SERVICE)
            elif after == "occupied" and before != "occupied":
                live.occupied_since[i - 1] = now
                self._check_in(key, now, res)
            elif after != "occupied" and before == "occupied":
                live.occupied_since[i - 1] = None
                self._complete(key, now, res)
            self._sync_led(key, res)
        return res

    def station_online(self, sid: str, payload: bytes, now: float) -> Result:
        res = Result()
        try:
            online = D.parse_online(payload)
        except W.ProtocolError as e:
            log.warning("station %s: bad online message: %s", sid, e)
            return res
        if sid not in self.stations:
            log.warning("online message from unknown station %s ignored", sid)
            return res
        live = self.live.setdefault(sid, StationLive())
        if live.online != online:
            self._selector = None
            # a change only: the broker replays every station's retained flag on each reconnect
            log.info("station %s %s", sid, "online" if online else "offline")
        live.online = online
        res.station = (sid, live)
        if online:
            # it may have missed commands while away: tell it again what is reserved (slots it
            # shows reserved without cause are released when its retained status arrives)
            for key in [k for k in self.by_slot if k[0] == sid]:
                self.led.pop(key, None)
                self._sync_led(key, res)
            # ... and what an operator took out of service or put back (a station's session
            # is clean: commands sent while it was away are lost)
            for slot in self.out_of_service.get(sid, ()):
                self._station_cmd(res, sid, "out_of_service", slot)
            for key in [k for k in self._back_in_service if k[0] == sid]:
                self._station_cmd(res, sid, "in_service", key[1])
        return res

    def station_meta(self, sid: str, payload: bytes, now: float) -> Result:
        res = Result()
        try:
            m = D.parse_station_meta(payload)
        except W.ProtocolError as e:
            log.warning("station %s: bad meta (%s): %s", sid, e.code, e)
            return res
        slots = tuple(SlotMeta(float(s["power_kw"]), bool(s.get("dc", float(s["power_kw"]) > AC_MAX_KW)))
                      for s in m["slots"])
        old = self.stations.get(sid)
        # site and access come from the station file only (the meta message has neither)
        kept = {"site": old.site, "access": old.access} if old else {}
        new = StationMeta(sid, float(m["lat"]), float(m["lon"]), slots,
                          operator=m.get("operator", old.operator if old else ""),
                          price_per_kwh=float(m.get("price_per_kwh", old.price_per_kwh if old else 0.49)),
                          name=m.get("name", old.name if old else ""), **kept)
        if new != old:
            if old is not None and len(old.slots) != len(slots):
                live = self.live.get(sid)
                if live is not None:
                    live.slots = None  # slot numbering changed: wait for a fresh status
                    res.station = (sid, live)
            self.stations[sid] = new
            self._selector = None  # rebuilt on the next decision
            log.info("station %s metadata %s", sid, "updated" if old else "added")
            for key in sorted(k for k in self.by_slot if k[0] == sid and k[1] > len(slots)):
                log.warning("station %s slot %d no longer exists (its metadata has %d slots); "
                            "ending its reservations", sid, key[1], len(slots))
                self._fault_slot(key, now, res, FAULT_GONE)
        return res

    def tick(self, now: float, expire: bool = True) -> Result:
        """Expire lapsed holds and no-shows, end restored reservations whose slot is gone;
        forget request ids past their memory. Without `expire` only the latter: the service
        holds the endings back until it has caught up with what the broker kept (a car may
        have plugged in meanwhile, a retained meta may bring a station back)."""
        res = Result()
        self._now = now
        lapsed = [r for r in self.reservations.values() if expire and (
            (r.state == "held" and now >= r.hold_until) or (r.state == "confirmed" and now >= r.deadline))]
        # whether a car could have plugged in is judged before any of them ends
        late = {r.id for r in lapsed if r.state == "confirmed" and self._blocked(r)}
        for r in lapsed:
            r = self.reservations.get(r.id, r)  # as a requeue left it
            if r.id in late:
                self._fault(r, now, res, FAULT_LATE, exclude=False)
            else:
                ended = self._end(r, "expired", res)
                self._event(res, r.car, D.car_event("expired", reservation_view(ended)))
        if expire and self._unplaced:
            self._end_unplaced(now, res)
        # oldest first, so a tick costs what it forgets, not a copy of a day's requests
        horizon, old, requests = now - self.cfg.request_memory_s, self._remembered, self.requests
        while old and old[0][0] < horizon:
            rec = requests.get(old.popleft()[1])
            if rec is not None and rec.at < horizon:
                del requests[(rec.car, rec.rid)]
        self.refusals.flush(now)
        self._summarise(now)
        return res

    def _blocked(self, r: Reservation) -> bool:
        """r's car cannot have plugged in: its slot is occupied, or another reservation is
        next on it. Such a car may be waiting on site; at its deadline it is re-planned, not
        taken for a no-show. A station the gateway cannot see (offline, no status yet) gives
        no such evidence."""
        live = self.live.get(r.station)
        if live is None or not live.online or live.slots is None or r.slot > len(live.slots):
            return False
        key = (r.station, r.slot)
        return live.slots[r.slot - 1] == "occupied" or self._first_waiting(key) is not r

    def _end_unplaced(self, now: float, res: Result) -> None:
        """Fault the restored reservations whose slot no station has now (their station left
        the station file, or has fewer slots): nothing else would end them, and their cars
        could never reserve again."""
        ids, self._unplaced = self._unplaced, set()
        for rid in sorted(ids):
            r = self.reservations.get(rid)
            if r is None or self._slot_exists(r.station, r.slot):
                continue
            meta = self.stations.get(r.station)
            why = "is not in the station file" if meta is None else f"has {len(meta.slots)} slots"
            log.warning("reservation %s (car %s): station %s %s, so slot %d is gone; ending it",
                        r.id, r.car, r.station, why, r.slot)
            self._fault(r, now, res, FAULT_GONE)

    def _summarise(self, now: float) -> None:
        """Every SUMMARY_S, an INFO line with the car requests since the last one (none if
        there were none)."""
        since = self._counting_since
        if since is None:
            self._counting_since = now
        elif now - since >= SUMMARY_S:
            c = self.counts
            if any(c.values()):
                log.info("last %.0f s: %d car requests: %d reserved, %d confirmed, %d cancelled, %d refused, "
                         "%d invalid, %d repeated; %d active reservations", now - since,
                         sum(c.values()), *(c[k] for k in _COUNTED), len(self.reservations))
            self.counts = dict.fromkeys(_COUNTED, 0)
            self._counting_since = now
            self.limiter.forget_idle(now)  # here: once a minute is enough to keep it small

    def _remember(self, rec: RequestRecord) -> None:
        """Answer (car, rid) with rec.reply from now on, until request_memory_s after rec.at."""
        key = (rec.car, rec.rid)
        if key not in self.requests:
            self._remembered.append((rec.at, key))
        self.requests[key] = rec

    # ------------------------------------------------------------ overflow (docs/architecture.md)

    def assignable(self) -> list[StationMeta]:
        """The stations the selector indexes (online, with a reported status)."""
        live = self.live
        return [m for sid, m in self.stations.items()
                if sid in live and live[sid].online and live[sid].slots is not None]

    def slot_times(self, sid: str, now: float) -> list[float | None]:
        """busy_until of every slot of a station at `now`, with no horizon (for the summary)."""
        meta = self.stations.get(sid)
        if meta is None:
            return []
        self._now = now
        return [self.busy_until(sid, k) for k in range(1, len(meta.slots) + 1)]

    def overflow_hold(self, car: str, xid: str, need: CarNeed, station: str | None, hold_until: float,
                      now: float) -> HoldOutcome:
        """Central's hold: at `station` if it still can, else the policy's best; a held
        reservation (rid = xid) lasting until central's confirm_by. The request record (car,
        xid) makes a repeated hold request answer the same. The car is not on this broker
        yet, so it gets no reply; the station gets its command."""
        known = self.requests.get((car, xid))
        if known is not None:
            return _outcome(known.reply, [])
        res = Result(need=need)
        self._now = now
        previous = self.reservations.get(self.by_car.get(car, ""))
        if previous is not None and previous.state == "checked_in":
            reply = D.error_reply(xid, D.BAD_STATE, f"car is checked in at {previous.station} slot {previous.slot}")
        else:
            if previous is not None:
                self._unindex(previous)  # its own hold must not stand in the way (as in reserve)
            choice = self._choose(need, now, only=station) if station in self.stations else None
            if choice is None:
                choice = self._choose(need, now)
            if previous is not None:
                self._index(previous)
            if choice is None:
                reply = self._no_capacity(xid, need, now, None)
            else:
                if previous is not None:
                    self._end(previous, "cancelled", res)
                r = _changed(self._new_reservation(reservation_id(car, xid), car, xid, need, choice, now),
                             hold_until=hold_until)
                self._add(r, res)
                res.reservation = r
                log.info("overflow %s: car %s held at %s slot %d until %.0f", xid, car, r.station, r.slot, hold_until)
                reply = D.ok_reply(xid, "reserve", reservation_view(r))
        res.request = RequestRecord(car, xid, now, reply)
        self._remember(res.request)
        return _outcome(reply, [res])

    def overflow_release(self, car: str, xid: str, reservation: str, now: float) -> Result:
        """Central gives back a hold it did not use: cancelled, no car reply. Unknown, ended,
        another request's or checked in: no change (a release may repeat or come late)."""
        res = Result()
        r = self.reservations.get(reservation)
        if r is None or r.car != car or r.rid != xid or r.state == "checked_in":
            return res
        self._now = now
        self._end(r, "cancelled", res)
        return res

    def cancel(self, car: str, reservation: str, now: float) -> Result:
        """End the car's local hold because overflow sent it elsewhere; no car event (its one
        reply says where to go). Unknown, ended or checked in: no change."""
        res = Result()
        r = self.reservations.get(reservation)
        if r is None or r.car != car or r.state == "checked_in":
            return res
        self._now = now
        self._end(r, "cancelled", res)
        return res

    def replace_reply(self, car: str, rid: str, reply: dict[str, Any], now: float) -> Result:
        """The final reply to a deferred request: stored as its record (a retried rid gets
        this, not the local answer) and sent to the car."""
        known = self.requests.get((car, rid))
        res = Result()
        res.request = RequestRecord(car, rid, known.at if known is not None else now, reply)
        self._remember(res.request)
        self._reply(res, car, reply)
        return res

    # ------------------------------------------------------------ operator commands (gateway/admin.py)

    def end_reservation(self, reservation: str, now: float) -> tuple[Result, str]:
        """End an active reservation for an operator: a checked-in one completes, a held or
        confirmed one is cancelled; its car gets that event. CommandRefused if not active."""
        r = self.reservations.get(reservation)
        if r is None:
            raise CommandRefused(f"no active reservation {reservation!r}")
        res = Result()
        self._now = now
        ended = self._end(r, "completed" if r.state == "checked_in" else "cancelled", res)
        self._event(res, r.car, D.car_event(ended.state, reservation_view(ended)))
        return res, f"reservation {r.id} (car {r.car}, {r.station} slot {r.slot}, {r.state}) {ended.state}"

    def take_out_of_service(self, sid: str, slot: int, reason: str, now: float) -> tuple[Result, str]:
        """An operator's out-of-service: the slot is not offered until put back in service,
        whatever its station reports; its reservations are faulted (their cars offered the
        next best slot) and the station is told. CommandRefused if there is no such slot or
        it already is out of service by an operator."""
        meta = self.stations.get(sid)
        if meta is None:
            raise CommandRefused(f"unknown station {sid!r} in region {self.cfg.region}")
        if not 1 <= slot <= len(meta.slots):
            raise CommandRefused(f"station {sid} has {len(meta.slots)} slot(s); there is no slot {slot}")
        mark = self.out_of_service.get(sid, {}).get(slot)
        if mark is not None:
            raise CommandRefused(f"station {sid} slot {slot} is already out of service since "
                                 f"{utc_text(mark.since)} ({mark.reason})")
        res = Result()
        self._now = now
        key = (sid, slot)
        mark = SlotMark(reason, now)
        self.out_of_service.setdefault(sid, {})[slot] = mark
        self._back_in_service.discard(key)
        res.marks.append((sid, slot, mark))
        live = self.live.get(sid)
        if live is not None and live.slots is not None and slot <= len(live.slots):
            live.slots[slot - 1] = "out_of_service"
            res.station = (sid, live)
        self._forget(sid, slot)
        ended = len(self.by_slot.get(key, ()))
        self._fault_slot(key, now, res, FAULT_OUT_OF_SERVICE)
        self._station_cmd(res, sid, "out_of_service", slot)
        log.info("station %s slot %d out of service by an operator (%s); %d reservation(s) faulted",
                 sid, slot, reason, ended)
        return res, f"station {sid} slot {slot} out of service ({reason}); {ended} reservation(s) faulted"

    def put_in_service(self, sid: str, slot: int, now: float) -> tuple[Result, str]:
        """Back in service: the operator's mark goes and the station is told; the slot is
        offered again once the station reports it free. CommandRefused if the slot is not
        out of service."""
        marks = self.out_of_service.get(sid, {})
        meta = self.stations.get(sid)
        if slot not in marks:
            if meta is None:
                raise CommandRefused(f"unknown station {sid!r} in region {self.cfg.region}")
            if not 1 <= slot <= len(meta.slots):
                raise CommandRefused(f"station {sid} has {len(meta.slots)} slot(s); there is no slot {slot}")
            live = self.live.get(sid)
            if live is None or live.slots is None or slot > len(live.slots) \
                    or live.slots[slot - 1] != "out_of_service":
                raise CommandRefused(f"station {sid} slot {slot} is not out of service")
        res = Result()
        self._now = now
        if slot in marks:
            del marks[slot]
            if not marks:
                del self.out_of_service[sid]
            res.marks.append((sid, slot, None))
        if self._slot_exists(sid, slot):
            self._back_in_service.add((sid, slot))
            self._station_cmd(res, sid, "in_service", slot)
        log.info("station %s slot %d put back in service by an operator", sid, slot)
        return res, f"station {sid} slot {slot} in service; offered again once the station reports it free"

    # ------------------------------------------------------------ car operations

    @property
    def models(self) -> Mapping[str, CarModel]:
        if self._models is None:
            self._models = evmodels.by_id(evmodels.load_models())
        return self._models

    def _reserve(self, req: D.CarRequest, now: float, res: Result) -> dict[str, Any]:
        need = CarNeed.from_fields(req.fields)
        notice: dict[str, Any] = {}
        model_id = req.fields.get("model")
        if model_id is not None:
            model = self.models.get(model_id)
            if model is not None:
                need = replace(need, model=model)
            else:
                # an id from a newer models table than the gateway's must not stop the car
                notice["notice"] = {"code": D.UNKNOWN_MODEL, "field": "model", "message":
                                    f"model {model_id!r} is not in the gateway's EV models; "
                                    "charge time estimated at constant power"}
        res.need = need
        only = req.fields.get("station")
        if only is not None and only not in self.stations:
            return D.error_reply(req.rid, D.UNKNOWN_STATION, f"station {only!r} is not in region {self.cfg.region}", "station")
        previous = self.reservations.get(self.by_car.get(req.car, ""))
        if previous is not None and previous.state == "checked_in":
            return D.error_reply(req.rid, D.BAD_STATE, f"car is checked in at {previous.station} slot {previous.slot}")
        # the car's own current hold must not stand in the way of its new answer
        if previous is not None:
            self._unindex(previous)
        choice = self._choose(need, now, only=only)
        if choice is None:
            if previous is not None:
                self._index(previous)
            return self._no_capacity(req.rid, need, now, only)
        if previous is not None:
            self._index(previous)
            self._end(previous, "cancelled", res, logging.DEBUG)
        r = self._new_reservation(reservation_id(req.car, req.rid), req.car, req.rid, need, choice, now)
        self._add(r, res)
        res.reservation = r
        log.debug("car %s rid %s -> %s slot %d (drive %.0fs wait %.0fs charge %.0fs)", req.car, req.rid,
                 r.station, r.slot, choice.drive_s, choice.wait_s, choice.charge_s)
        return D.ok_reply(req.rid, "reserve", reservation_view(r), **notice)

    def _confirm(self, req: D.CarRequest, now: float, res: Result) -> dict[str, Any]:
        r = self._own(req)
        if isinstance(r, dict):
            return r
        if r.state != "held":
            return D.error_reply(req.rid, D.BAD_STATE, f"reservation {r.id} is {r.state}, only a held one can be confirmed")
        r = _changed(r, state="confirmed")
        self.reservations[r.id] = r
        res.changed.append(r)
        log.debug("reservation %s (car %s, %s slot %d) confirmed", r.id, r.car, r.station, r.slot)
        return D.ok_reply(req.rid, "confirm", reservation_view(r))

    def _cancel(self, req: D.CarRequest, now: float, res: Result) -> dict[str, Any]:
        r = self._own(req)
        if isinstance(r, dict):
            return r
        if r.state == "checked_in":
            return D.error_reply(req.rid, D.BAD_STATE, f"reservation {r.id} is checked in; unplug to end it")
        return D.ok_reply(req.rid, "cancel", reservation_view(self._end(r, "cancelled", res, logging.DEBUG)))

    def _own(self, req: D.CarRequest) -> Reservation | dict[str, Any]:
        r = self.reservations.get(req.fields["reservation"])
        if r is None or r.car != req.car:
            return D.error_reply(req.rid, D.UNKNOWN_RESERVATION,
                                 f"no active reservation {req.fields['reservation']!r} for car {req.car}", "reservation")
        return r

    # ------------------------------------------------------------ station-driven transitions

    def _check_in(self, key: tuple[str, int], now: float, res: Result) -> None:
        first = self._first_waiting(key)
        if first is None:
            return
        r = _changed(first, state="checked_in", start=now, end=now + first.charge_s)
        self.reservations[r.id] = r
        self._forget(*key)
        res.changed.append(r)
        log.info("reservation %s (car %s, %s slot %d) checked in", r.id, r.car, r.station, r.slot)
        self._event(res, r.car, D.car_event("checked_in", reservation_view(r)))

    def _complete(self, key: tuple[str, int], now: float, res: Result) -> None:
        for rid in list(self.by_slot.get(key, ())):
            r = self.reservations[rid]
            if r.state == "checked_in":
                ended = self._end(r, "completed", res)
                self._event(res, r.car, D.car_event("completed", reservation_view(ended)))

    def _fault_slot(self, key: tuple[str, int], now: float, res: Result, reason: str) -> None:
        for rid in list(self.by_slot.get(key, ())):
            self._fault(self.reservations[rid], now, res, reason)

    def _fault(self, r: Reservation, now: float, res: Result, reason: str, exclude: bool = True) -> None:
        """End r as faulted (its slot cannot serve it, or not in time: FAULT_LATE) and offer
        its car the best slot now: another one (`exclude`), or any, its own again included."""
        key = (r.station, r.slot)
        faulted = self._end(r, "faulted", res)
        offer = None
        need = r.need if exclude else self._at_station(r)
        choice = self._choose(need, now, exclude={key} if exclude else frozenset())
        if choice is not None:
            new = self._new_reservation(reservation_id(r.id, "faulted"), r.car, r.rid, need, choice, now)
            self._add(new, res)
            log.info("car %s offered %s slot %d as %s after the fault (%s)", r.car, new.station, new.slot,
                     new.id, reason)
            offer = reservation_view(new)
        self._event(res, r.car, D.car_event("faulted", reservation_view(faulted), offer, reason=reason))

    def _at_station(self, r: Reservation) -> CarNeed:
        """r's car as it is expected by its deadline: at r's station, with the charge it
        arrives with (at least selection's safety margin, which the choice guaranteed)."""
        meta = self.stations.get(r.station)
        need = r.need
        if meta is None:
            return need
        used = r.distance_km * need.consumption_kwh_per_100km / 100.0 / need.battery_kwh
        soc = min(max(need.soc - used, self.cfg.selection.safety_margin_soc), need.soc)
        return replace(need, lat=meta.lat, lon=meta.lon, soc=soc)

    # ------------------------------------------------------------ helpers

    @property
    def selector(self) -> Selector:
        if self._selector is None:
            # only stations that can be assigned: the index stays small and every candidate
            # it yields is a real one (most of a city's register may be offline)
            self._selector = Selector(self.assignable(), self.cfg.selection, learn=True)
        return self._selector

    def _choose(self, need: CarNeed, now: float, only: str | None = None,
                exclude: set[tuple[str, int]] | frozenset = frozenset()) -> Choice | None:
        self._now = now
        self._horizon = now + self.cfg.max_wait_s
        try:
            if only is not None:
                return self.selector.choose_at(only, need, now, self, exclude)
            return self.selector.choose(self.cfg.policy, need, now, self, exclude)
        finally:
            self._horizon = float("inf")

    def _no_capacity(self, rid: str, need: CarNeed, now: float, only: str | None) -> dict[str, Any]:
        earliest = self.selector.earliest_free(need, now, self, only)
        where = f"at station {only}" if only else f"within reach in region {self.cfg.region}"
        if earliest is None:
            msg = f"no usable slot {where}"
        else:
            at = datetime.fromtimestamp(earliest, timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
            msg = f"every slot {where} is busy beyond {self.cfg.max_wait_s / 60:.0f} min; the earliest frees up at {at}"
        return D.error_reply(rid, W.NO_CAPACITY, msg, earliest_free=None if earliest is None else round(earliest),
                             retry_after=self._retry_after(earliest, now))

    def _retry_after(self, earliest: float | None, now: float) -> int:
        """Whole seconds until a refused car should ask again: when the earliest slot comes
        within max_wait_s (asking sooner only gets the same answer), bounded; with nothing
        usable in reach, the upper bound."""
        lo, hi = self.cfg.retry_min_s, self.cfg.retry_max_s
        wait = hi if earliest is None else earliest - self.cfg.max_wait_s - now
        return max(1, math.ceil(min(max(wait, lo), hi)))

    def _new_reservation(self, rid_: str, car: str, rid: str, need: CarNeed, c: Choice, now: float) -> Reservation:
        eta = now + c.drive_s
        start = eta + c.wait_s
        return Reservation(
            id=rid_, car=car, rid=rid, station=c.station_id, slot=c.slot, state="held", created=now,
            hold_until=now + self.cfg.hold_s, eta=eta, start=start, end=start + c.charge_s,
            deadline=start + self.cfg.grace_s, distance_km=c.distance_km, wait_s=c.wait_s,
            charge_s=c.charge_s, energy_kwh=c.energy_kwh, price_eur=c.price_eur, power_kw=c.power_kw,
            need=need,
        )

    def _index(self, r: Reservation) -> None:
        self.reservations[r.id] = r
        self.by_car[r.car] = r.id
        ids = self.by_slot.setdefault((r.station, r.slot), [])
        ids.append(r.id)
        if len(ids) > 1:
            ids.sort(key=lambda i: (self.reservations[i].state != "checked_in", self.reservations[i].start))

    def _unindex(self, r: Reservation) -> None:
        self.reservations.pop(r.id, None)
        if self.by_car.get(r.car) == r.id:
            del self.by_car[r.car]
        key = (r.station, r.slot)
        ids = self.by_slot.get(key)
        if ids is not None:
            ids.remove(r.id)
            if not ids:
                del self.by_slot[key]
        self._forget(*key)

    def _forget(self, sid: str, slot: int | None = None) -> None:
        """busy_until of the slot (every slot of the station if None) may have dropped:
        selection forgets what it learnt about it. Any change that can make a slot free
        earlier must call this (see Selector's learn)."""
        if self._selector is not None:
            self._selector.forget(sid, slot)

    def _add(self, r: Reservation, res: Result) -> None:
        self._index(r)
        res.changed.append(r)
        self._sync_led((r.station, r.slot), res)

    def _end(self, r: Reservation, state: str, res: Result, level: int = logging.INFO) -> Reservation:
        self._unindex(r)
        ended = _changed(r, state=state)
        res.changed.append(ended)
        self._requeue((r.station, r.slot), res)
        self._sync_led((r.station, r.slot), res)
        log.log(level, "reservation %s (car %s, %s slot %d) %s", r.id, r.car, r.station, r.slot, state)
        return ended

    def _requeue(self, key: tuple[str, int], res: Result) -> None:
        """Move the reservations queued on a slot forward when one ahead of them ended, so
        that waits shrink again. Only ever earlier; the no-show deadline a car was told stays."""
        ids = self.by_slot.get(key)
        live = self.live.get(key[0])
        if not ids or live is None:
            return
        t = self._occupant_until(live, *key)
        for i in ids:  # checked-in first, then by start
            r = self.reservations[i]
            if r.state == "checked_in":
                continue
            start = max(r.eta, t)
            if start < r.start:
                r = _changed(r, start=start, end=start + r.charge_s, wait_s=start - r.eta)
                self.reservations[i] = r
                res.changed.append(r)
            t = max(t, r.end)

    def _sync_led(self, key: tuple[str, int], res: Result) -> None:
        """Tell the station when a slot's reserved flag should change."""
        live = self.live.get(key[0])
        if live is None or not live.online:
            return  # told when it comes back online
        if not self._slot_exists(*key):
            self.led.pop(key, None)  # a slot the station no longer has: nothing to show
            return
        nxt = self._first_waiting(key)
        want = nxt is not None
        if self.led.get(key) == want:
            return
        # sent even while the slot is occupied: the station keeps the flag and shows it once free
        self.led[key] = want
        if nxt is not None:
            cmd = D.station_cmd("reserve", key[1], nxt.id, nxt.hold_until if nxt.state == "held" else nxt.deadline)
        else:
            cmd = D.station_cmd("release", key[1])
        res.messages.append(Outbound(D.station_topic(self.cfg.region, key[0], "cmd"), cmd))

    def _station_cmd(self, res: Result, sid: str, cmd: str, slot: int) -> None:
        res.messages.append(Outbound(D.station_topic(self.cfg.region, sid, "cmd"), D.station_cmd(cmd, slot)))

    def _first_waiting(self, key: tuple[str, int]) -> Reservation | None:
        """The first reservation queued on the slot that is not checked in (the next car)."""
        reservations = self.reservations
        for i in self.by_slot.get(key, ()):
            r = reservations[i]
            if r.state != "checked_in":
                return r
        return None

    def _reply(self, res: Result, car: str, reply: dict[str, Any]) -> None:
        res.reply = reply
        res.messages.append(Outbound(D.car_topic(self.cfg.region, car, "reply"), reply))

    def _event(self, res: Result, car: str, payload: dict[str, Any]) -> None:
        res.messages.append(Outbound(D.car_topic(self.cfg.region, car, "reply"), payload))


def utc_text(t: float) -> str:
    """Unix seconds as the logs, the CLI and operators read them: 2027-01-15T08:00:00Z."""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _outcome(reply: dict[str, Any], results: list[Result]) -> HoldOutcome:
    if reply.get("ok"):
        return HoldOutcome(reply["reservation"], results=results)
    err = reply.get("error", {})
    return HoldOutcome(None, err.get("code", W.NO_CAPACITY), err.get("message", ""), results)
