"""The physical charging places: who is plugged into which slot, who waits, what each station
board reports. The gateway only ever learns this through status messages.

A `Device` is one station of the station file (one board, one id on the wire); a `Site` is the
devices a driver sees as one place (`recarga.core.sites` groups them), with one queue of the
drivers who take whichever unit frees first.
"""
from __future__ import annotations

from collections.abc import Sequence

from recarga.core.model import StationMeta
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.core.sites import by_site


class Device:
    """One station board. Slots are 1-based on the wire, 0-based in these lists."""

    __slots__ = ("meta", "occupant", "present", "reserved", "site")

    def __init__(self, meta: StationMeta, site: Site) -> None:
        self.meta = meta
        self.site = site
        n = len(meta.slots)
        self.occupant: list[int | None] = [None] * n  # car index plugged in
        self.reserved: list[bool] = [False] * n  # the LED, as the gateway's commands set it
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


class Site:
    """The devices at one place and the drivers queueing there, first come, first served,
    for any unit of the site they can use."""

    __slots__ = ("devices", "fcfs", "id")

    def __init__(self, site_id: str) -> None:
        self.id = site_id
        self.devices: list[Device] = []
        self.fcfs: list[int] = []  # car indexes, in order of arrival

    def waiting(self) -> int:
        return len(self.fcfs) + sum(len(v) for d in self.devices for v in d.present.values())


def build(stations: Sequence[StationMeta]) -> dict[str, Device]:
    """Every station's device, by station id, each linked to its site (a station whose `site`
    is "" is a site of its own)."""
    devices: dict[str, Device] = {}
    for site_id, members in by_site(stations).items():
        site = Site(site_id)
        for meta in members:
            dev = Device(meta, site)
            site.devices.append(dev)
            devices[meta.id] = dev
    return devices
