"""SQLite persistence for the gateway: reservations and answered request ids.

WAL mode; every engine Result is written in one transaction before the inbound MQTT
message is acknowledged, so an acknowledged request survives a crash and a redelivered
one is recognised by its (car, request id).
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from dataclasses import fields
from functools import lru_cache
from operator import attrgetter
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from recarga.core.model import CarNeed, Reservation
from recarga.core.protocol import device as D
from recarga.gateway.engine import RequestRecord, Result, SlotMark, StationLive


class DatabaseUnusable(RuntimeError):
    """A database the gateway must not run on, for a reason a restart does not mend: damaged,
    read-only, or in a directory it cannot write."""


def _writable(path: Path) -> None:
    """DatabaseUnusable unless the database (or, before it exists, its directory) and its
    directory can be written: SQLite needs both (the WAL and its index live beside it)."""
    directory = path.parent
    if not directory.is_dir():
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DatabaseUnusable(f"cannot create the database directory {directory}: {e.strerror}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DatabaseUnusable(f"the database directory {directory} is not writable by this user")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise DatabaseUnusable(f"the database {path} is not readable and writable by this user")


def is_permanent(error: sqlite3.Error) -> bool:
    """A write error that a restart does not mend (a read-only database, a damaged file)."""
    return getattr(error, "sqlite_errorname", "") in ("SQLITE_READONLY", "SQLITE_CORRUPT", "SQLITE_NOTADB")


def backup(source: Path, target: Path) -> int:
    """Copy the database at `source` to `target` with SQLite's online backup (consistent
    while the gateway writes); returns the pages copied. `target` must not exist."""
    if not source.exists():
        raise DatabaseUnusable(f"database {source} does not exist")
    if target.exists():
        raise FileExistsError(f"{target} exists; name a new file")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
        return dst.execute("PRAGMA page_count").fetchone()[0]
    finally:
        dst.close()
        src.close()


def _open_existing(path: Path) -> sqlite3.Connection:
    """A connection to the gateway's database for a command beside the running gateway;
    DatabaseUnusable if it does not exist (opening it would create an empty one)."""
    if not path.exists():
        raise DatabaseUnusable(f"database {path} does not exist (the gateway creates it when it first runs)")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA busy_timeout=5000")  # the gateway's commits are short
    return db


def queue_command(path: Path, op: str, args: Mapping[str, Any], at: float) -> int:
    """Append an operator command for the gateway to apply (gateway/operator.py); durable on
    disk when this returns. Returns its id."""
    db = _open_existing(path)
    try:
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_COMMANDS_SCHEMA)  # a database the gateway last ran on before it had them
        with db:
            cur = db.execute("INSERT INTO operator_commands (at, op, args) VALUES (?, ?, ?)",
                             (at, op, json.dumps(dict(args))))
        return int(cur.lastrowid)
    finally:
        db.close()


def command_outcome(path: Path, command: int) -> tuple[bool, str] | None:
    """(ok, message) of an applied operator command; None while it waits."""
    db = _open_existing(path)
    try:
        row = db.execute("SELECT done_at, ok, result FROM operator_commands WHERE id = ?", (command,)).fetchone()
    finally:
        db.close()
    if row is None:
        raise DatabaseUnusable(f"operator command {command} is not in {path}")
    return None if row[0] is None else (bool(row[1]), row[2])


_SCHEMA = """
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY,
    car TEXT NOT NULL,
    rid TEXT NOT NULL,
    station TEXT NOT NULL,
    slot INTEGER NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    hold_until REAL NOT NULL,
    eta REAL NOT NULL,
    start REAL NOT NULL,
    "end" REAL NOT NULL,
    deadline REAL NOT NULL,
    distance_km REAL NOT NULL,
    wait_s REAL NOT NULL,
    charge_s REAL NOT NULL,
    energy_kwh REAL NOT NULL,
    price_eur REAL NOT NULL,
    power_kw REAL NOT NULL,
    need TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_active ON reservations(state)
    WHERE state IN ('held', 'confirmed', 'checked_in');
CREATE TABLE IF NOT EXISTS requests (
    car TEXT NOT NULL,
    rid TEXT NOT NULL,
    at REAL NOT NULL,
    reply TEXT NOT NULL,
    PRIMARY KEY (car, rid)
);
CREATE INDEX IF NOT EXISTS requests_at ON requests(at);
CREATE TABLE IF NOT EXISTS stations_live (
    id TEXT PRIMARY KEY,
    online INTEGER NOT NULL,
    slots TEXT,
    occupied_since TEXT NOT NULL,
    boot INTEGER,  -- numbering of the latest numbered status applied (NULL: none yet)
    seq INTEGER
);
CREATE TABLE IF NOT EXISTS slots_out_of_service (
    station TEXT NOT NULL,
    slot INTEGER NOT NULL,
    reason TEXT NOT NULL,
    since REAL NOT NULL,
    PRIMARY KEY (station, slot)
);
"""
# Operator commands (gateway/operator.py): the CLI appends, the gateway's loop applies them in
# order and marks each done (ok, result) in the transaction that stores what it changed.
_COMMANDS_SCHEMA = """
CREATE TABLE IF NOT EXISTS operator_commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    op TEXT NOT NULL,
    args TEXT NOT NULL,
    done_at REAL,
    ok INTEGER,
    result TEXT
);
CREATE INDEX IF NOT EXISTS operator_commands_pending ON operator_commands(id) WHERE done_at IS NULL;
"""

log = logging.getLogger("recarga.store")

MMAP_BYTES = 128 * 1024 * 1024  # see Store.__init__

_COLUMNS = [f.name for f in fields(Reservation)]
_COLUMN_LIST = ", ".join(f'"{c}"' for c in _COLUMNS)
# an upsert: a reservation is written several times in its life, and updating its row in
# place costs SQLite less than INSERT OR REPLACE's delete and insert
_INSERT = (f"INSERT INTO reservations ({_COLUMN_LIST}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
           "ON CONFLICT(id) DO UPDATE SET " + ", ".join(f'"{c}" = excluded."{c}"' for c in _COLUMNS[1:]))
_SELECT = f"SELECT {_COLUMN_LIST} FROM reservations"
_ACTIVE = "('" + "', '".join(sorted(D.ACTIVE_STATES)) + "')"


class Store:
    def __init__(self, path: str | Path, synchronous: str = "FULL", deferred_sync: bool = False):
        """synchronous=FULL survives power loss; NORMAL survives a process crash only.

        deferred_sync (with FULL): a commit does not wait for the disk; what it wrote is on
        disk once a later sync() returns, which another thread may call (see sync()). The
        gateway makes many commits durable with one sync, and its loop does not wait."""
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        _writable(Path(path))
        self.path, self.synchronous = str(path), synchronous
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            # a damaged page would lose reservations silently (their slots double-booked)
            found = [row[0] for row in self.db.execute("PRAGMA integrity_check(5)")]
        except sqlite3.DatabaseError as e:
            self.db.close()
            raise DatabaseUnusable(f"database {path} is damaged ({e}); restore a backup "
                                   "(docs/deployment.md)") from None
        if found != ["ok"]:
            self.db.close()
            raise DatabaseUnusable(f"database {path} is damaged ({'; '.join(found)}); restore a backup "
                                   "(docs/deployment.md)")
        self.db.execute("PRAGMA journal_mode=WAL")
        deferred = deferred_sync and synchronous == "FULL"
        self.db.execute(f"PRAGMA synchronous={'NORMAL' if deferred else synchronous}")
        self.db.execute("PRAGMA busy_timeout=5000")
        # Pages read through a memory map rather than a read() each: ~20% less CPU per commit
        # (B-tree pages of the upserts' lookups). Address space only; the file stays as it is.
        self.db.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        self.db.executescript(_SCHEMA + _COMMANDS_SCHEMA)
        self._add_columns("stations_live", ("boot INTEGER", "seq INTEGER"))
        self._checkpointer: Checkpointer | None = None
        self._wal_fd: int | None = self._open_wal() if deferred else None

    def _add_columns(self, table: str, columns: Iterable[str]) -> None:
        """Columns a database written by an earlier version lacks (NULL in its rows)."""
        have = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
        for column in columns:
            if column.split()[0] not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")

    def _open_wal(self) -> int:
        """The WAL file, to fsync it from outside SQLite. SQLite keeps it (same inode) while
        a connection is open; written once here so that it exists, and its directory entry
        made durable too."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")  # takes the write lock: SQLite creates the WAL
        fd = os.open(self.path + "-wal", os.O_RDONLY)
        os.fsync(fd)
        dir_fd = os.open(str(Path(self.path).parent), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return fd

    @property
    def deferred_sync(self) -> bool:
        return self._wal_fd is not None

    @property
    def wal_fd(self) -> int | None:
        """The WAL file's descriptor that sync() fdatasyncs (deferred_sync), else None."""
        return self._wal_fd

    @property
    def checkpointer(self) -> Checkpointer | None:
        """The background checkpointer (checkpoint_in_background) while it works; None when
        the commits checkpoint."""
        return self._checkpointer

    def sync(self) -> None:
        """Make every commit that has returned durable (deferred_sync; otherwise each commit
        already was). An fdatasync of the WAL, which is what SQLite's FULL does at the end of
        each commit; it releases the GIL and may run in another thread while the next
        commits go on, and then covers those that returned before it began. OSError if the
        disk fails."""
        if self._wal_fd is not None:
            os.fdatasync(self._wal_fd)

    def checkpoint_in_background(self) -> None:
        """Copy the WAL into the database from a thread of its own (see Checkpointer) instead
        of in the commit that crosses SQLite's 1,000 pages."""
        if self._checkpointer is None:
            self._checkpointer = Checkpointer(self.path, self.synchronous)
            self.db.execute("PRAGMA wal_autocheckpoint=0")

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._wal_fd is not None:
            os.fdatasync(self._wal_fd)
            os.close(self._wal_fd)
            self._wal_fd = None
        self.db.close()

    def commit(self, changed: Iterable[Reservation], request: RequestRecord | None,
               station: tuple[str, StationLive] | None = None) -> None:
        """Write one engine Result atomically (all of it or nothing)."""
        self.commit_all([Result(changed=list(changed), request=request, station=station)])

    def commit_all(self, results: Iterable[Result], encoded: Mapping[int, str] | None = None) -> None:
        """Write several engine Results in one transaction (group commit), in order.

        encoded: JSON text of reply dicts by id(), from a caller that encodes them for
        publishing anyway (each is encoded once); others are encoded here."""
        rows, requests, stations = [], [], []
        others: list[tuple[str, tuple]] = []  # operator marks and commands (rare), in order
        for res in results:
            for sid, slot, mark in res.marks:
                others.append(("DELETE FROM slots_out_of_service WHERE station = ? AND slot = ?", (sid, slot))
                              if mark is None else
                              ("INSERT OR REPLACE INTO slots_out_of_service VALUES (?, ?, ?, ?)",
                               (sid, slot, mark.reason, mark.since)))
            if res.command is not None:
                c = res.command
                others.append(("UPDATE operator_commands SET done_at = ?, ok = ?, result = ? WHERE id = ?",
                               (c.at, int(c.ok), c.message, c.id)))
            rows += [_row(r) for r in res.changed]
            if res.request is not None:
                q = res.request
                text = encoded.get(id(q.reply)) if encoded else None
                requests.append((q.car, q.rid, q.at, text if text is not None else encode_json(q.reply)))
            if res.station is not None:
                sid, live = res.station
                boot, seq = live.numbering or (None, None)
                stations.append((sid, int(live.online), None if live.slots is None else json.dumps(live.slots),
                                 json.dumps(live.occupied_since), boot, seq))
        if not (rows or requests or stations or others):
            return
        if self._checkpointer is not None and self._checkpointer.failed:
            self._checkpointer = None
            self.db.execute("PRAGMA wal_autocheckpoint=1000")  # SQLite's default
        with self.db:  # BEGIN ... COMMIT, ROLLBACK on error
            self.db.execute("BEGIN")
            if rows:
                self.db.executemany(_INSERT, rows)
            if requests:
                self.db.executemany("INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?)", requests)
            if stations:
                self.db.executemany("INSERT OR REPLACE INTO stations_live (id, online, slots, occupied_since, "
                                    "boot, seq) VALUES (?, ?, ?, ?, ?, ?)", stations)
            for sql, params in others:
                self.db.execute(sql, params)

    def stations_live(self) -> dict[str, StationLive]:
        cur = self.db.execute("SELECT id, online, slots, occupied_since, boot, seq FROM stations_live")
        return {sid: StationLive(bool(online), None if slots is None else json.loads(slots), json.loads(since),
                                 None if seq is None else (boot, seq))
                for sid, online, slots, since, boot, seq in cur}

    def slots_out_of_service(self) -> dict[tuple[str, int], SlotMark]:
        cur = self.db.execute("SELECT station, slot, reason, since FROM slots_out_of_service")
        return {(sid, slot): SlotMark(reason, since) for sid, slot, reason, since in cur}

    def pending_commands(self, after: int = 0) -> list[tuple[int, str, dict[str, Any]]]:
        """Operator commands not yet applied, with ids above `after`, oldest first."""
        cur = self.db.execute("SELECT id, op, args FROM operator_commands WHERE done_at IS NULL AND id > ? "
                              "ORDER BY id", (after,))
        return [(cid, op, json.loads(args)) for cid, op, args in cur]

    def reservation(self, rid: str) -> Reservation | None:
        row = self.db.execute(f"{_SELECT} WHERE id = ?", (rid,)).fetchone()
        return None if row is None else _reservation(row)

    def active(self) -> list[Reservation]:
        cur = self.db.execute(f"{_SELECT} WHERE state IN {_ACTIVE} ORDER BY start")
        return [_reservation(row) for row in cur]

    def reservations(self, car: str | None = None) -> list[Reservation]:
        if car is None:
            cur = self.db.execute(f"{_SELECT} ORDER BY created, id")
        else:
            cur = self.db.execute(f"{_SELECT} WHERE car = ? ORDER BY created, id", (car,))
        return [_reservation(row) for row in cur]

    def requests(self, since: float) -> list[RequestRecord]:
        cur = self.db.execute("SELECT car, rid, at, reply FROM requests WHERE at >= ? ORDER BY at", (since,))
        return [RequestRecord(car, rid, at, json.loads(reply)) for car, rid, at, reply in cur]

    def prune_requests(self, before: float) -> int:
        with self.db:
            return self.db.execute("DELETE FROM requests WHERE at < ?", (before,)).rowcount


class Checkpointer:
    """Checkpoints the WAL from its own thread and connection, so that commits do not
    (SQLite's default: the commit that passes 1,000 pages copies them into the database
    and fsyncs it, milliseconds several times a second under load, with the writer's loop
    standing still). PASSIVE checkpoints never wait for the writer, and SQLite releases
    the GIL while it copies; one that could not get everything (commits went on) is
    followed at once by the next, with less to do. The WAL starts from the beginning
    again only when a commit begins with everything copied: under steady load a RESTART
    checkpoint every MAX_FRAMES makes sure of that. It holds the writer back, but only
    for the few pages the last PASSIVE one left and an fsync."""

    IDLE_S = 0.05  # between checkpoints once all is copied
    MAX_FRAMES = 4000  # WAL pages (~16 MB) before a RESTART checkpoint
    RESTART_WAIT_MS = 50

    def __init__(self, path: str, synchronous: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        # A RESTART checkpoint waits for readers (the CLI, say) holding the writer back; it
        # gives up soon instead and is tried again after a pause.
        self.db.execute(f"PRAGMA busy_timeout={self.RESTART_WAIT_MS}")
        self.stopping = threading.Event()
        self.failed = False
        self.thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        last = -1
        try:
            while not self.stopping.is_set():
                _, frames, copied = self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if frames > self.MAX_FRAMES:
                    busy, _, _ = self.db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                    if busy:
                        self.stopping.wait(self.IDLE_S)  # a reader: let the writer on meanwhile
                elif copied >= frames:
                    self.stopping.wait(self.IDLE_S)
                elif copied == last:
                    self.stopping.wait(self.IDLE_S / 10)  # a reader holds the rest back: no spinning
                last = copied
        except sqlite3.Error:
            log.exception("background WAL checkpoint failed; the commits checkpoint again")
            self.failed = True
        finally:
            self.db.close()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)


_NEED = _COLUMNS.index("need")
_values = attrgetter(*_COLUMNS)
# protocol.encode's text (compact), without building an encoder per call
encode_json: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":")).encode


@lru_cache(maxsize=4096)
def _need_json(need: CarNeed) -> str:
    # a reservation is written several times in its life with the same (frozen) need
    return json.dumps(need.to_fields())


def _need(text: str) -> CarNeed:
    """The need column: the protocol's need object (CarNeed.to_fields)."""
    f = json.loads(text)
    # a need stored under CarNeed's attribute names reads the same
    if "consumption_kwh_per_100km" in f:
        f["consumption_kwh_100km"] = f.pop("consumption_kwh_per_100km")
    return CarNeed.from_fields(f)


def _row(r: Reservation) -> tuple:
    values = _values(r)
    return values[:_NEED] + (_need_json(r.need),) + values[_NEED + 1:]


def _reservation(row: tuple) -> Reservation:
    values = dict(zip(_COLUMNS, row))
    values["need"] = _need(values["need"])
    return Reservation(**values)
