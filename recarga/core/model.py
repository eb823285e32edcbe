"""Plain value types shared by the engine, selection and store (no I/O; conversions only)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from recarga.core.evmodels import CarModel

# Slot is DC (fast) when its rated power is above this; AC wallboxes top out at 22 kW.
AC_MAX_KW = 22.0


@dataclass(frozen=True, slots=True)
class SlotMeta:
    power_kw: float
    dc: bool


@dataclass(frozen=True, slots=True)
class StationMeta:
    """Static facts about a station; slots are numbered 1..len(slots) on the wire."""

    id: str
    lat: float
    lon: float
    slots: tuple[SlotMeta, ...]
    operator: str = ""
    price_per_kwh: float = 0.49
    name: str = ""
    site: str = ""  # the site (devices a driver sees as one place) it belongs to; "" = not grouped
    access: str = "public"  # one of ACCESS


# Who may charge at a station: anyone, or only some (customers, residents, fleets).
ACCESS: tuple[str, ...] = ("public", "restricted")


@dataclass(frozen=True, slots=True)
class CarNeed:
    """What selection needs to know about the car asking (from its request)."""

    lat: float
    lon: float
    soc: float  # 0..1
    battery_kwh: float
    consumption_kwh_per_100km: float
    max_ac_kw: float  # 0 = cannot charge on AC
    max_dc_kw: float  # 0 = cannot charge on DC
    target_soc: float  # 0..1, > soc
    # the car's model, when its request named one the gateway knows: charge times follow
    # its curves (limited by the figures above) instead of a constant power; not sent across
    # regions (to_fields)
    model: CarModel | None = None

    @classmethod
    def from_fields(cls, f: Mapping[str, float]) -> CarNeed:
        """From the protocol's need fields: a reserve request's, or the need object of
        overflow and hold requests (docs/protocol.md)."""
        return cls(f["lat"], f["lon"], f["soc"], f["battery_kwh"], f["consumption_kwh_100km"],
                   f["max_ac_kw"], f["max_dc_kw"], f["target_soc"])

    def to_fields(self) -> dict[str, float]:
        """As the protocol's need object (from_fields reads it back)."""
        return {"lat": self.lat, "lon": self.lon, "soc": self.soc, "battery_kwh": self.battery_kwh,
                "consumption_kwh_100km": self.consumption_kwh_per_100km, "max_ac_kw": self.max_ac_kw,
                "max_dc_kw": self.max_dc_kw, "target_soc": self.target_soc}


@dataclass(frozen=True, slots=True)
class SelectionParams:
    road_factor: float = 1.3  # road distance / straight-line distance
    speed_kmh: float = 30.0  # mean urban driving speed
    safety_margin_soc: float = 0.05  # charge that must be left on arrival
    nearest_k: int = 5  # "shortest queue at the nearest stations" looks at this many


@dataclass(frozen=True, slots=True)
class Choice:
    """One offer: a slot at a station and what the car should expect there."""

    station_id: str
    slot: int  # 1-based
    distance_km: float  # road distance (straight line x road factor)
    drive_s: float
    wait_s: float  # from arrival until the slot is expected to be free
    charge_s: float
    energy_kwh: float
    price_eur: float
    power_kw: float  # power the car will actually draw there

    @property
    def completion_s(self) -> float:
        return self.drive_s + self.wait_s + self.charge_s


class SlotView(Protocol):
    """The live side of the stations, as the engine knows it at decision time."""

    def busy_until(self, station_id: str, slot: int) -> float | None:
        """Epoch seconds when the slot is expected free (<= now: free now); None: not usable
        (station offline, slot out of service, or unknown)."""

    def free_slots(self, station_id: str) -> int:
        """Usable slots that are free now and carry no reservation."""

    def queue_len(self, station_id: str) -> int:
        """Cars ahead at the station: occupied slots plus active reservations."""


@dataclass(slots=True)
class Reservation:
    id: str
    car: str
    rid: str  # request id of the car request that created it
    station: str
    slot: int
    state: str  # one of protocol.RESERVATION_STATES
    created: float
    hold_until: float  # held: expires then unless confirmed
    eta: float
    start: float  # expected start of charging: max(eta, slot free)
    end: float  # expected end of charging
    deadline: float  # confirmed: no-show after this (start + grace)
    distance_km: float
    wait_s: float
    charge_s: float
    energy_kwh: float
    price_eur: float
    power_kw: float
    need: CarNeed = field(compare=False)
