"""The files shipped inside the package, found with importlib.resources.

The repository keeps them in its top-level folders data/, deploy/, firmware/ and boards/;
recarga/shipped/ holds a symlink to each folder, so a checkout and an editable install read the
repository's files, and a wheel holds copies of them (pyproject.toml's package-data lists
which).
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def shipped(*parts: str) -> Path:
    """The path of a file or folder shipped with the package, e.g. shipped("data", "x.csv")."""
    root = files("recarga") / "shipped"
    if not isinstance(root, Path):  # imported from a zip: the files would need extracting first
        raise RuntimeError(f"recarga is not installed as files on disk ({root}); install it with pip")
    return root.joinpath(*parts)


DATA = shipped("data")  # with SOURCES.md: where the data comes from and its licences
BERLIN_STATIONS = DATA / "berlin_charging_stations_bnetza.csv"
EV_MODELS = DATA / "ev_models_open_ev_data.json"
DEPLOY = shipped("deploy")  # systemd units, Mosquitto templates, example configurations
FIRMWARE = shipped("firmware")  # the boards' MicroPython firmware: lib/, car/, station/
BOARDS = shipped("boards")  # the boards' default config.json and the vendored umqtt.simple
