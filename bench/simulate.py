"""City simulation: Recarga's least-completion policy against the baselines on a city's
stations (Berlin's register unless --stations names another file) over a simulated day
(docs/simulation.md). Prints a table, writes a CSV and plots to run/simulation/; the last two
lines are the headlines (mean time lost, then mean wait, against the best baseline).

    .venv/bin/python bench/simulate.py            # whole city, a few minutes on 2 cores
    .venv/bin/python bench/simulate.py --quick    # the centre, about a minute
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recarga.simulation.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="bench/simulate.py"))
