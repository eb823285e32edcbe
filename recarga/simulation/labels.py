"""What the simulator's outputs say they show: the city or area, and where its data came from.

Every output (table, plots, report lines) names the area and carries the data's own
attribution, so a run on another city never says Berlin or credits the Bundesnetzagentur.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from recarga.core import resources

# The BNetzA register is the only CSV station format (recarga.core.stations.load_stations).
BNETZA = ("Bundesnetzagentur, Ladesäulenregister, CC BY 4.0 "
          "(https://creativecommons.org/licenses/by/4.0/)")
OPEN_EV_DATA = "Open EV Data by Chargeprice, MIT"


@dataclass(frozen=True, slots=True)
class Labels:
    city: str  # the city or area the stations are in
    stations_source: str  # the station data's attribution
    models_source: str  # the car models' attribution

    @property
    def attribution(self) -> str:
        return f"Stations: {self.stations_source}. Car models: {self.models_source}."


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def city_from_path(path: str | os.PathLike[str]) -> str:
    """An area name from a station file's name: the shipped register is Berlin; otherwise
    the file's stem in words ("porto_locations.json" -> "porto locations")."""
    if _same_file(path, resources.BERLIN_STATIONS):
        return "Berlin"
    words = Path(path).stem.replace("_", " ").replace("-", " ").split()
    return " ".join(words) or Path(path).name


def labels_for(stations_path: str | os.PathLike[str], models_path: str | os.PathLike[str],
               city: str | None = None, attribution: str | None = None) -> Labels:
    """The labels of a run: city and station attribution as given, else derived from the
    files (the register's attribution for a BNetzA CSV, "source: <file name>" otherwise)."""
    if attribution is None:
        attribution = BNETZA if Path(stations_path).suffix.lower() == ".csv" \
            else f"source: {Path(stations_path).name}"
    models = OPEN_EV_DATA if _same_file(models_path, resources.EV_MODELS) \
        else f"source: {Path(models_path).name}"
    return Labels(city or city_from_path(stations_path), attribution, models)
