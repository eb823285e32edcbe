"""What people read: the terminal table, the CSV, the PNG plots and the headline line."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from recarga.core.model import StationMeta
from recarga.simulation.loop import RESERVING
from recarga.simulation.metrics import Metrics

ATTRIBUTION = ("Stations: Bundesnetzagentur, Ladesäulenregister, CC BY 4.0 "
               "(https://creativecommons.org/licenses/by/4.0/). "
               "Car models: Open EV Data by Chargeprice, MIT.")

_COLUMNS = (  # header, Metrics field, format
    ("policy", "policy", "{}"),
    ("cars/slot/day", "load", "{:g}"),
    ("cars", "cars", "{:d}"),
    ("util %", "utilisation", "{:.1%}"),
    ("slots used", "slots_used", "{:.0%}"),
    ("gini", "gini", "{:.2f}"),
    ("wait min", "mean_wait_min", "{:.1f}"),
    ("p95 min", "p95_wait_min", "{:.1f}"),
    ("total min", "mean_total_min", "{:.1f}"),
    ("charge min", "mean_charge_min", "{:.1f}"),
    ("drive min", "mean_drive_min", "{:.1f}"),
    ("stranded", "stranded", "{:d}"),
    ("unfinished", "unfinished", "{:d}"),
    ("expired", "expired_waiting", "{:d}"),
    ("charge/est", "charge_vs_estimate", "{:.2f}"),
    ("decisions/s", "decisions_per_s", "{:,.0f}"),
)


@dataclass(frozen=True, slots=True)
class Point:
    """One (policy, load level) of a sweep."""

    load: float  # cars per slot per day
    metrics: Metrics
    station_util: np.ndarray  # per station, in the run's station order


def _cell(p: Point, attr: str, fmt: str) -> str:
    v = p.load if attr == "load" else getattr(p.metrics, attr)
    return fmt.format(v)


def table(points: Sequence[Point]) -> str:
    rows = [[h for h, _, _ in _COLUMNS]]
    for p in sorted(points, key=lambda p: (p.load, p.metrics.policy != RESERVING, p.metrics.policy)):
        rows.append([_cell(p, a, f) for _, a, f in _COLUMNS])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_csv(points: Sequence[Point], path: str | os.PathLike[str]) -> None:
    names = ["load_cars_per_slot_day"] + [f.name for f in fields(Metrics)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(names)
        for p in sorted(points, key=lambda p: (p.load, p.metrics.policy)):
            row = p.metrics.row()
            w.writerow([p.load] + [round(v, 6) if isinstance(v, float) else v for v in row.values()])


def high_load(points: Sequence[Point], max_stranded: float = 0.01) -> float | None:
    """The load level with the highest utilisation at which no policy strands more than
    max_stranded of its cars (a level's utilisation: the highest any policy reached)."""
    by_load: dict[float, list[Point]] = {}
    for p in points:
        by_load.setdefault(p.load, []).append(p)
    ok = [(max(p.metrics.utilisation for p in ps), load) for load, ps in by_load.items()
          if all(p.metrics.stranded <= max_stranded * max(p.metrics.cars, 1) for p in ps)]
    return max(ok)[1] if ok else None


def headline(points: Sequence[Point]) -> str:
    """The last line: Recarga's mean wait against the best baseline's at high load."""
    load = high_load(points)
    at = [p.metrics for p in points if p.load == load]
    ours = next((m for m in at if m.policy == RESERVING), None)
    base = [m for m in at if m.policy != RESERVING]
    if load is None or ours is None or not base:
        return "mean wait vs best baseline at high load: n/a (need least_completion and a baseline at a level stranding <= 1 %)"
    best = min(base, key=lambda m: m.mean_wait_min)
    pct = 100.0 * (ours.mean_wait_min - best.mean_wait_min) / best.mean_wait_min if best.mean_wait_min > 0 else 0.0
    return (f"mean wait vs best baseline at high load: {pct:+.0f}% (ours {ours.mean_wait_min:.1f} min, "
            f"best baseline {best.mean_wait_min:.1f} min, p95 ours {ours.p95_wait_min:.1f} min)")


def goals(points: Sequence[Point]) -> list[str]:
    """The issue's goals at high load, each with the numbers behind it."""
    load = high_load(points)
    at = [p.metrics for p in points if p.load == load]
    ours = next((m for m in at if m.policy == RESERVING), None)
    base = [m for m in at if m.policy != RESERVING]
    if ours is None or not base:
        return []
    best = min(base, key=lambda m: m.mean_wait_min)
    best_p95 = min(m.p95_wait_min for m in base)
    mean_cut = 1 - ours.mean_wait_min / best.mean_wait_min if best.mean_wait_min else 0.0
    p95_cut = 1 - ours.p95_wait_min / best_p95 if best_p95 else (0.0 if ours.p95_wait_min else 1.0)
    strand = max(p.metrics.stranded for p in points if p.metrics.policy == RESERVING and p.load == load)
    fewest = min(m.stranded for m in base)
    strand_ok = all(p.metrics.stranded <= min(q.metrics.stranded for q in points
                                              if q.load == p.load and q.metrics.policy != RESERVING)
                    for p in points if p.metrics.policy == RESERVING)
    return [
        f"high load: {load:g} cars/slot/day; best baseline by mean wait: {best.policy}",
        f"mean wait cut {mean_cut:.0%} (goal >= 50%): {'met' if mean_cut >= 0.5 else 'NOT met'}",
        f"p95 wait cut {p95_cut:.0%} vs the best baseline p95 {best_p95:.1f} min (goal >= 40%): "
        f"{'met' if p95_cut >= 0.4 else 'NOT met'}",
        f"stranded: ours {strand} vs fewest of a baseline {fewest} here; never more at any level: "
        f"{'met' if strand_ok else 'NOT met'}",
    ]


# ----------------------------------------------------------------------------- plots

_STYLE = {"least_completion": ("tab:green", "o"), "nearest": ("tab:red", "s"),
          "most_free": ("tab:orange", "^"), "shortest_queue": ("tab:blue", "D")}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def plot_wait(points: Sequence[Point], path: str | os.PathLike[str]) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
    for policy in sorted({p.metrics.policy for p in points}):
        ps = sorted((p for p in points if p.metrics.policy == policy), key=lambda p: p.load)
        color, marker = _STYLE.get(policy, ("gray", "x"))
        x = [100 * p.metrics.utilisation for p in ps]
        for ax, attr in zip(axes, ("mean_wait_min", "p95_wait_min")):
            ax.plot(x, [getattr(p.metrics, attr) for p in ps], marker=marker, color=color, label=policy)
            for p, xi in zip(ps, x):
                ax.annotate(f"{p.load:g}", (xi, getattr(p.metrics, attr)), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
    for ax, what in zip(axes, ("mean wait (min)", "95th percentile wait (min)")):
        ax.set_xlabel("slot utilisation over the day (%)")
        ax.set_ylabel(what)
        ax.set_yscale("symlog", linthresh=10)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Waiting time against utilisation (labels: cars per slot per day)")
    fig.text(0.01, 0.005, ATTRIBUTION, fontsize=6)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_map(points: Sequence[Point], stations: Sequence[StationMeta], load: float,
             path: str | os.PathLike[str]) -> None:
    plt = _pyplot()
    at = sorted((p for p in points if p.load == load),
                key=lambda p: (p.metrics.policy != RESERVING, p.metrics.policy))
    n = len(at)
    cols = 2 if n > 1 else 1
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows + 0.6), squeeze=False,
                             layout="constrained")
    lat = np.array([s.lat for s in stations])
    lon = np.array([s.lon for s in stations])
    size = np.array([4 + 3 * len(s.slots) for s in stations])
    aspect = 1 / np.cos(np.radians(lat.mean())) if len(lat) else 1.0
    sc = None
    for ax, p in zip(axes.flat, at):
        u = p.station_util
        order = np.argsort(u)  # busiest drawn on top
        sc = ax.scatter(lon[order], lat[order], c=100 * u[order], s=size[order], cmap="inferno_r",
                        vmin=0, vmax=100, linewidths=0)
        ax.set_title(f"{p.metrics.policy}: util {p.metrics.utilisation:.0%}, gini {p.metrics.gini:.2f}, "
                     f"wait {p.metrics.mean_wait_min:.0f} min", fontsize=9)
        ax.set_aspect(aspect)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if sc is not None:
        fig.colorbar(sc, ax=axes, shrink=0.7, label="station utilisation over the day (%)")
    fig.suptitle(f"Berlin's stations coloured by load at {load:g} cars per slot per day "
                 "(dot size: slots)")
    fig.get_layout_engine().set(h_pad=0.1, rect=(0, 0.02, 1, 0.98))  # room for the attribution
    fig.text(0.01, 0.003, ATTRIBUTION, fontsize=6)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(points: Sequence[Point], stations: Sequence[StationMeta], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "simulation.csv", out / "wait_vs_utilisation.png", out / "station_load_map.png"]
    write_csv(points, paths[0])
    plot_wait(points, paths[1])
    load = high_load(points)
    plot_map(points, stations, load if load is not None else max(p.load for p in points), paths[2])
    return paths
