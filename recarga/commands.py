"""Console scripts whose commands span subpackages (pyproject.toml's [project.scripts]).

`recarga-gateway` is the gateway's command line (recarga.gateway.cli) plus `simulate`, the
city simulation (recarga.simulation.cli). They are joined here, above both packages, so that
the gateway's modules never import the simulation.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from recarga.gateway import cli as gateway_cli
from recarga.simulation import cli as simulation_cli

SIMULATE = gateway_cli.Command(
    "simulate", "city simulation: the policies on a simulated day of any city's stations (docs/simulation.md)",
    simulation_cli.add_arguments, simulation_cli.run)


def gateway(argv: Sequence[str] | None = None) -> int:
    """recarga-gateway: run, reservations, check-config, example-config, systemd-unit, simulate."""
    return gateway_cli.main(argv, extra=[SIMULATE])


if __name__ == "__main__":
    sys.exit(gateway())
