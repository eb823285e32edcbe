"""Central's SQLite store (WAL): overflow requests, holds, and the latest summaries.

Several central instances may share one database file. Each batch of messages runs in one
`BEGIN IMMEDIATE` transaction (`Store.batch`), which reads the rows it decides on and
writes the outcome, so two instances never decide on the same request at once. The keys
back this up: one request row per xid, one hold per xid, one hold per (region, reservation).
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recarga.core.protocol import central as PC
from recarga.core.protocol import wire as W

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    xid TEXT PRIMARY KEY,
    origin TEXT NOT NULL,
    car TEXT NOT NULL,
    need TEXT NOT NULL,
    beat_s REAL,
    deadline REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('holding', 'answered', 'expired', 'abandoned')),
    target TEXT,
    station TEXT,
    tried TEXT NOT NULL,
    answer TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_holding ON requests(deadline) WHERE state = 'holding';
CREATE INDEX IF NOT EXISTS requests_updated ON requests(updated);
CREATE TABLE IF NOT EXISTS holds (
    xid TEXT PRIMARY KEY REFERENCES requests(xid),
    region TEXT NOT NULL,
    car TEXT NOT NULL,
    station TEXT NOT NULL,
    slot INTEGER NOT NULL,
    reservation TEXT NOT NULL,
    state TEXT NOT NULL,
    hold_until REAL NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    UNIQUE (region, reservation)
);
CREATE INDEX IF NOT EXISTS holds_held ON holds(hold_until) WHERE state = 'held';
CREATE TABLE IF NOT EXISTS summaries (
    region TEXT NOT NULL,
    shard INTEGER NOT NULL,
    at REAL NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (region, shard)
);
"""


@dataclass(frozen=True, slots=True)
class RequestRow:
    xid: str
    origin: str
    car: str
    need: dict[str, float]
    beat_s: float | None
    deadline: float
    state: str  # holding (a region is asked) | answered | expired | abandoned
    target: str | None  # the region asked last
    station: str | None  # the station proposed to it
    tried: tuple[str, ...]  # regions asked, in order
    answer: dict[str, Any] | None  # what the origin was told (re-sent on redelivery)
    created: float
    updated: float


@dataclass(frozen=True, slots=True)
class HoldRow:
    xid: str
    region: str
    car: str
    station: str
    slot: int
    reservation: str
    state: str  # held, then one of protocol.HOLD_EVENTS, or released
    hold_until: float
    created: float
    updated: float


HOLD_ACTIVE = ("held", "confirmed", "checked_in")

_REQ_COLS = "xid, origin, car, need, beat_s, deadline, state, target, station, tried, answer, created, updated"
_HOLD_COLS = "xid, region, car, station, slot, reservation, state, hold_until, created, updated"


class Store:
    def __init__(self, path: str | Path, synchronous: str = "FULL"):
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout=10000")  # another instance's batch
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def batch(self) -> Iterator[Store]:
        """One write transaction, taken at once (BEGIN IMMEDIATE): reads inside it see what
        no other instance can change before COMMIT. ROLLBACK on any error."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------ requests

    def request(self, xid: str) -> RequestRow | None:
        row = self.db.execute(f"SELECT {_REQ_COLS} FROM requests WHERE xid = ?", (xid,)).fetchone()
        return None if row is None else _request(row)

    def put_request(self, r: RequestRow) -> None:
        self.db.execute(
            f"INSERT INTO requests ({_REQ_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT (xid) DO UPDATE SET state = excluded.state, target = excluded.target, "
            "station = excluded.station, tried = excluded.tried, answer = excluded.answer, "
            "updated = excluded.updated",
            (r.xid, r.origin, r.car, json.dumps(r.need), r.beat_s, r.deadline, r.state, r.target, r.station,
             json.dumps(list(r.tried)), None if r.answer is None else json.dumps(r.answer), r.created, r.updated))

    def holding_past(self, now: float) -> list[RequestRow]:
        cur = self.db.execute(f"SELECT {_REQ_COLS} FROM requests WHERE state = 'holding' AND deadline < ?", (now,))
        return [_request(row) for row in cur]

    def requests(self) -> list[RequestRow]:
        return [_request(row) for row in self.db.execute(f"SELECT {_REQ_COLS} FROM requests ORDER BY created, xid")]

    # ------------------------------------------------------------ holds

    def hold(self, xid: str) -> HoldRow | None:
        row = self.db.execute(f"SELECT {_HOLD_COLS} FROM holds WHERE xid = ?", (xid,)).fetchone()
        return None if row is None else HoldRow(*row)

    def put_hold(self, h: HoldRow) -> None:
        """Insert a hold, or change an existing one's state. A second, different hold for the
        same xid or the same reservation is refused by the keys (sqlite3.IntegrityError)."""
        self.db.execute(
            f"INSERT INTO holds ({_HOLD_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT (xid) DO UPDATE SET state = excluded.state, updated = excluded.updated "
            "WHERE holds.reservation = excluded.reservation AND holds.region = excluded.region",
            (h.xid, h.region, h.car, h.station, h.slot, h.reservation, h.state, h.hold_until, h.created, h.updated))

    def held_past(self, now: float) -> list[HoldRow]:
        cur = self.db.execute(f"SELECT {_HOLD_COLS} FROM holds WHERE state = 'held' AND hold_until < ?", (now,))
        return [HoldRow(*row) for row in cur]

    def holds(self, active_only: bool = False) -> list[HoldRow]:
        where = f" WHERE state IN {HOLD_ACTIVE}" if active_only else ""
        return [HoldRow(*row) for row in self.db.execute(f"SELECT {_HOLD_COLS} FROM holds{where} ORDER BY created, xid")]

    def prune(self, before: float) -> None:
        """Forget finished requests (and their holds) last changed before `before`."""
        with self.batch():
            self.db.execute(f"DELETE FROM holds WHERE updated < ? AND state NOT IN {HOLD_ACTIVE}", (before,))
            self.db.execute("DELETE FROM requests WHERE updated < ? AND state != 'holding' "
                            "AND xid NOT IN (SELECT xid FROM holds)", (before,))

    # ------------------------------------------------------------ summaries

    def put_summary(self, region: str, shard: int, at: float, payload: bytes) -> None:
        if payload:
            self.db.execute("INSERT OR REPLACE INTO summaries VALUES (?, ?, ?, ?) ", (region, shard, at, payload))
        else:
            self.db.execute("DELETE FROM summaries WHERE region = ? AND shard = ?", (region, shard))

    def summaries(self) -> list[PC.Summary]:
        """Every stored shard that is still valid (a bad one is skipped: it came validated)."""
        out = []
        for region, shard, _, payload in self.db.execute("SELECT * FROM summaries ORDER BY region, shard"):
            try:
                out.append(PC.parse_summary(region, shard, payload))
            except W.ProtocolError:
                continue
        return out


def _request(row: tuple) -> RequestRow:
    xid, origin, car, need, beat_s, deadline, state, target, station, tried, answer, created, updated = row
    return RequestRow(xid, origin, car, json.loads(need), beat_s, deadline, state, target, station,
                      tuple(json.loads(tried)), None if answer is None else json.loads(answer), created, updated)
