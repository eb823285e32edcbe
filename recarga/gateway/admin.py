"""Operator commands for a running gateway: end a reservation, take a slot out of service
and put it back.

The CLI appends a command to a queue table in the gateway's database (durable at once, so
a command given while the gateway is down waits for it); the gateway's loop applies the
queued commands in order with its tick (also the first one after a start) through the
engine, and stores what a command changed and its outcome in one transaction. So a command
never races the engine's state in memory, and the CLI reads the outcome from the database.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from recarga.core.model import Reservation
from recarga.core.protocol import wire as W
from recarga.gateway.engine import CommandDone, CommandRefused, Engine, Result
from recarga.gateway.store import command_outcome, queue_command

RESERVATION_END = "reservation_end"
SLOT_OUT_OF_SERVICE = "slot_out_of_service"
SLOT_IN_SERVICE = "slot_in_service"
MAX_SLOT = 32  # a station status carries at most 32 slots
MAX_REASON = 200  # characters


def check(op: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """The command's arguments, checked; ValueError naming what is wrong."""
    if op == RESERVATION_END:
        rid = args.get("reservation")
        if not isinstance(rid, str) or not W.RID_RE.match(rid):
            raise ValueError(f"reservation id {rid!r} is not valid (1-64 of A-Z a-z 0-9 . _ : -)")
        return {"reservation": rid}
    if op not in (SLOT_OUT_OF_SERVICE, SLOT_IN_SERVICE):
        raise ValueError(f"unknown operator command {op!r}")
    sid, slot = args.get("station"), args.get("slot")
    if not isinstance(sid, str) or not W.ID_RE.match(sid):
        raise ValueError(f"station id {sid!r} is not valid (1-32 of A-Z a-z 0-9 _ -)")
    if type(slot) is not int or not 1 <= slot <= MAX_SLOT:
        raise ValueError(f"slot {slot!r} is not a slot number (1-{MAX_SLOT})")
    if op == SLOT_IN_SERVICE:
        return {"station": sid, "slot": slot}
    reason = args.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON or not reason.isprintable():
        raise ValueError(f"reason must be printable text of at most {MAX_REASON} characters")
    return {"station": sid, "slot": slot, "reason": reason or "no reason given"}


def apply(engine: Engine, command: int, op: str, args: Mapping[str, Any], now: float,
          ended: Callable[[str], Reservation | None]) -> Result:
    """Apply one queued command; the Result carries its outcome (CommandDone), refused or
    not. `ended` looks up a reservation that is no longer active (to say how it ended)."""
    try:
        a = check(op, args)
        if op == RESERVATION_END:
            if a["reservation"] not in engine.reservations:
                old = ended(a["reservation"])
                if old is not None:
                    raise CommandRefused(f"reservation {old.id} already ended ({old.state})")
            res, message = engine.end_reservation(a["reservation"], now)
        elif op == SLOT_OUT_OF_SERVICE:
            res, message = engine.take_out_of_service(a["station"], a["slot"], a["reason"], now)
        else:
            res, message = engine.put_in_service(a["station"], a["slot"], now)
        ok = True
    except (CommandRefused, ValueError) as e:
        res, message, ok = Result(), str(e), False
    res.command = CommandDone(command, ok, message, now)
    return res


def submit(database: Path, op: str, args: Mapping[str, Any]) -> int:
    """Queue a command (checked first) for the gateway; returns its id."""
    return queue_command(database, op, check(op, args), time.time())


def wait(database: Path, command: int, timeout: float, poll_s: float = 0.1) -> tuple[bool, str] | None:
    """(ok, message) once the gateway applied the command; None if not within `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = command_outcome(database, command)
        if outcome is not None or time.monotonic() >= deadline:
            return outcome
        time.sleep(poll_s)
