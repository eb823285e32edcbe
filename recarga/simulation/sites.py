"""The physical charging stations: who is plugged into which slot, who waits, what the
station board reports. The gateway only ever learns this through status messages."""
from __future__ import annotations

from recarga.core.model import StationMeta
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W


class Site:
    """One station. Slots are 1-based on the wire, 0-based in these lists."""

    __slots__ = ("meta", "occupant", "reserved", "fcfs", "present")

    def __init__(self, meta: StationMeta) -> None:
        self.meta = meta
        n = len(meta.slots)
        self.occupant: list[int | None] = [None] * n  # car index plugged in
        self.reserved: list[bool] = [False] * n  # the LED, as the gateway's commands set it
        self.fcfs: list[int] = []  # advisory apps: cars waiting on site, first come first served
        self.present: dict[int, list[int]] = {}  # reservations: slot -> cars waiting there for it

    def status(self) -> bytes:
        """The retained status the station board publishes after every change."""
        slots = ["occupied" if o is not None else "reserved" if r else "free"
                 for o, r in zip(self.occupant, self.reserved)]
        return W.encode(D.station_status(slots))

    def command(self, cmd: dict) -> None:
        """A reserve/release command from the gateway (the board obeys it; it only moves the
        LED, which the gateway's decisions do not read back)."""
        k = cmd["slot"] - 1
        if cmd["cmd"] == "reserve":
            self.reserved[k] = True
        elif cmd["cmd"] == "release":
            self.reserved[k] = False

    def waiting(self) -> int:
        return len(self.fcfs) + sum(len(v) for v in self.present.values())
