"""Recarga, a smart EV-charging network.

recarga.core (protocol, model, selection, stations, broker configuration, EV models, the
shipped files) is shared by recarga.gateway, recarga.central, recarga.devices and
recarga.simulation; recarga.commands joins the gateway's and the simulation's command lines.
data/, deploy/, firmware/ and boards/ hold the files shipped with the package
(recarga.core.resources).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("recarga")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "unknown"
