"""What people read: the terminal table, the CSV, the PNG plots, the goals and the headline
lines, each labelled with the city and its data's attribution (recarga.simulation.labels)."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from recarga.core.geo import KM_PER_DEG_LAT, km_per_deg_lon
from recarga.core.model import StationMeta
from recarga.simulation.labels import Labels
from recarga.simulation.loop import RESERVING
from recarga.simulation.metrics import Metrics

# A baseline figure below this (one second) has nothing to cut: a percentage of it would be
# noise (a float residue of 0 gives -1e15 %).
EPSILON_MIN = 1.0 / 60.0
WAIT_GOAL_ABOVE_MIN = 10.0  # the mean-wait goal applies where the best baseline waits longer
WAIT_GOAL_CUT = 0.5

_COLUMNS = (  # header, Metrics field, format
    ("policy", "policy", "{}"),
    ("cars/slot/day", "load", "{:g}"),
    ("cars", "cars", "{:d}"),
    ("util %", "utilisation", "{:.1%}"),
    ("slots used", "slots_used", "{:.0%}"),
    ("gini", "gini", "{:.2f}"),
    ("lost min", "mean_lost_min", "{:.1f}"),
    ("p95 lost", "p95_lost_min", "{:.1f}"),
    ("wait min", "mean_wait_min", "{:.1f}"),
    ("p95 min", "p95_wait_min", "{:.1f}"),
    ("drive min", "mean_drive_min", "{:.1f}"),
    ("charge min", "mean_charge_min", "{:.1f}"),
    ("MWh", "energy_kwh", "{:.1f}", 1e-3),
    ("stranded", "stranded", "{:d}"),
    ("gave up", "gave_up", "{:d}"),
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


def _cell(p: Point, col: tuple) -> str:
    _, attr, fmt, *scale = col
    v = p.load if attr == "load" else getattr(p.metrics, attr)
    return fmt.format(v * scale[0] if scale else v)


def table(points: Sequence[Point], labels: Labels) -> str:
    """The terminal table under a line naming the city; times are minutes per car."""
    rows = [[c[0] for c in _COLUMNS]]
    for p in sorted(points, key=lambda p: (p.load, p.metrics.policy != RESERVING, p.metrics.policy)):
        rows.append([_cell(p, c) for c in _COLUMNS])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [(f"{labels.city}: per policy and load; lost = drive to the station + wait + charge, "
              "minutes per car that asked and came")]
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(labels.attribution)
    return "\n".join(lines)


def write_csv(points: Sequence[Point], path: str | os.PathLike[str], labels: Labels) -> None:
    names = ["city", "load_cars_per_slot_day"] + [f.name for f in fields(Metrics)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(names)
        for p in sorted(points, key=lambda p: (p.load, p.metrics.policy)):
            row = p.metrics.row()
            w.writerow([labels.city, p.load] + [round(v, 6) if isinstance(v, float) else v for v in row.values()])


def high_load(points: Sequence[Point], max_stranded: float = 0.01) -> float | None:
    """The load level with the highest utilisation at which no policy strands more than
    max_stranded of its cars (a level's utilisation: the highest any policy reached)."""
    by_load: dict[float, list[Point]] = {}
    for p in points:
        by_load.setdefault(p.load, []).append(p)
    ok = [(max(p.metrics.utilisation for p in ps), load) for load, ps in by_load.items()
          if all(p.metrics.stranded <= max_stranded * max(p.metrics.cars, 1) for p in ps)]
    return max(ok)[1] if ok else None


def cut(ours: float, base: float) -> float | None:
    """How much lower ours is than base (0.6: 60 % lower; negative: higher); None when the
    base is ~0 and there is nothing to cut."""
    return None if base < EPSILON_MIN else 1.0 - ours / base


def _empty(ms: Sequence[Metrics]) -> str | None:
    """Why a level cannot be judged, or None: a run with no car that asked and came."""
    empty = [m.policy for m in ms if m.came == 0]
    return f"no car asked and came under {', '.join(empty)}" if empty else None


def _at_high_load(points: Sequence[Point]) -> tuple[float | None, Metrics | None, list[Metrics]]:
    load = high_load(points)
    at = [p.metrics for p in points if p.load == load]
    return load, next((m for m in at if m.policy == RESERVING), None), [m for m in at if m.policy != RESERVING]


def _compare(what: str, points: Sequence[Point], attr: str, p95: bool) -> str:
    head = f"{what} vs best baseline at high load"
    load, ours, base = _at_high_load(points)
    if load is None or ours is None or not base:
        return f"{head}: n/a (need {RESERVING} and a baseline at a level stranding <= 1 %)"
    why = _empty([ours, *base])
    if why:
        return f"{head}: n/a ({why})"
    best = min(base, key=lambda m: getattr(m, attr))
    a, b = getattr(ours, attr), getattr(best, attr)
    tail = f", p95 ours {ours.p95_wait_min:.1f} min" if p95 else ""
    c = cut(a, b)
    if c is None:
        return f"{head}: n/a (best baseline ~0: nothing to cut; ours {a:.1f} min, best baseline {b:.1f} min{tail})"
    return f"{head}: {-100.0 * c:+.0f}% (ours {a:.1f} min, best baseline {b:.1f} min{tail})"


def headline_time_lost(points: Sequence[Point]) -> str:
    """The line before the last: Recarga's mean time lost against the best baseline's."""
    return _compare("mean time lost", points, "mean_lost_min", p95=False)


def headline(points: Sequence[Point]) -> str:
    """The last line: Recarga's mean wait against the best baseline's at high load."""
    return _compare("mean wait", points, "mean_wait_min", p95=True)


@dataclass(frozen=True, slots=True)
class Verdict:
    """One goal at one level: "met", "NOT met", "n/a" (with the reason) or "" (a figure)."""

    goal: str
    status: str
    detail: str

    def line(self) -> str:
        if self.status == "n/a":
            return f"{self.goal}: n/a ({self.detail})"
        return f"{self.goal}: {self.detail}" + (f": {self.status}" if self.status else "")


def check(ms: Sequence[Metrics]) -> list[Verdict]:
    """The goals at one level (one row of a scenario matrix): Recarga's mean time lost is
    the lowest of all policies; where the best baseline's mean wait exceeds 10 min, Recarga's
    is at least 50 % lower; never more stranded or gave-up cars than any baseline. Also the
    p95 wait, as a figure. A level with an empty run is n/a, never met."""
    ours = next((m for m in ms if m.policy == RESERVING), None)
    base = [m for m in ms if m.policy != RESERVING]
    if ours is None or not base:
        return [Verdict("goals", "n/a", f"need {RESERVING} and a baseline")]
    why = _empty(ms)
    if why:
        return [Verdict(g, "n/a", why) for g in ("mean time lost", "mean wait", "stranded and gave up")]
    out = []
    lost = min(base, key=lambda m: m.mean_lost_min)
    out.append(Verdict("mean time lost", "met" if ours.mean_lost_min <= lost.mean_lost_min else "NOT met",
                       f"ours {ours.mean_lost_min:.1f} min, lowest baseline {lost.mean_lost_min:.1f} min "
                       f"({lost.policy}) (goal: ours the lowest)"))
    best = min(base, key=lambda m: m.mean_wait_min)
    c = cut(ours.mean_wait_min, best.mean_wait_min)
    figures = f"ours {ours.mean_wait_min:.1f} min, best baseline {best.mean_wait_min:.1f} min ({best.policy})"
    if c is None:
        out.append(Verdict("mean wait", "n/a", f"{figures}: best baseline ~0, nothing to cut"))
    elif best.mean_wait_min <= WAIT_GOAL_ABOVE_MIN:
        out.append(Verdict("mean wait", "n/a", f"{figures}, cut {c:.0%}: the goal (cut >= "
                           f"{WAIT_GOAL_CUT:.0%}) applies where the best baseline waits > {WAIT_GOAL_ABOVE_MIN:g} min"))
    else:
        out.append(Verdict("mean wait", "met" if c >= WAIT_GOAL_CUT else "NOT met",
                           f"{figures}, cut {c:.0%} (goal >= {WAIT_GOAL_CUT:.0%})"))
    best_p95 = min(m.p95_wait_min for m in base)
    c95 = cut(ours.p95_wait_min, best_p95)
    out.append(Verdict("p95 wait", "n/a" if c95 is None else "",
                       f"ours {ours.p95_wait_min:.1f} min, best baseline {best_p95:.1f} min, "
                       + ("best baseline ~0, nothing to cut" if c95 is None else f"cut {c95:.0%}")))
    fewest_s, fewest_g = min(m.stranded for m in base), min(m.gave_up for m in base)
    ok = ours.stranded <= fewest_s and ours.gave_up <= fewest_g
    out.append(Verdict("stranded and gave up", "met" if ok else "NOT met",
                       f"ours {ours.stranded} and {ours.gave_up}, fewest of a baseline {fewest_s} and "
                       f"{fewest_g} (goal: never more)"))
    return out


def goals(points: Sequence[Point]) -> list[str]:
    """The goals at high load, each with the numbers behind it, and the levels missing one."""
    load = high_load(points)
    if load is None:
        return ["goals: n/a (every level strands more than 1 % of some policy's cars)"]
    lines = [f"goals at high load ({load:g} cars/slot/day):"]
    lines += ["  " + v.line() for v in check([p.metrics for p in points if p.load == load])]
    missed = sorted({p.load for p in points
                     if any(v.status == "NOT met" for v in check([q.metrics for q in points if q.load == p.load]))})
    lines.append("levels missing a goal: " + (", ".join(f"{x:g}" for x in missed) if missed else "none"))
    return lines


# ----------------------------------------------------------------------------- plots

_STYLE = {"least_completion": ("tab:green", "o"), "nearest": ("tab:red", "s"),
          "most_free": ("tab:orange", "^"), "shortest_queue": ("tab:blue", "D")}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def plot_wait(points: Sequence[Point], path: str | os.PathLike[str], labels: Labels) -> None:
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
    fig.suptitle(f"{labels.city}: waiting time against utilisation (labels: cars per slot per day)")
    fig.text(0.01, 0.005, labels.attribution, fontsize=6)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_map(points: Sequence[Point], stations: Sequence[StationMeta], load: float,
             path: str | os.PathLike[str], labels: Labels) -> None:
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
    aspect = KM_PER_DEG_LAT / km_per_deg_lon(float(lat.mean())) if len(lat) else 1.0  # true to scale
    sc = None
    for ax, p in zip(axes.flat, at):
        u = p.station_util
        order = np.argsort(u)  # busiest drawn on top
        sc = ax.scatter(lon[order], lat[order], c=100 * u[order], s=size[order], cmap="inferno_r",
                        vmin=0, vmax=100, linewidths=0)
        ax.set_title(f"{p.metrics.policy}: util {p.metrics.utilisation:.0%}, gini {p.metrics.gini:.2f}, "
                     f"wait {p.metrics.mean_wait_min:.0f} min, lost {p.metrics.mean_lost_min:.0f} min", fontsize=9)
        ax.set_aspect(aspect)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if sc is not None:
        fig.colorbar(sc, ax=axes, shrink=0.7, label="station utilisation over the day (%)")
    fig.suptitle(f"{labels.city}: stations coloured by load at {load:g} cars per slot per day "
                 "(dot size: slots)")
    fig.get_layout_engine().set(h_pad=0.1, rect=(0, 0.02, 1, 0.98))  # room for the attribution
    fig.text(0.01, 0.003, labels.attribution, fontsize=6)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(points: Sequence[Point], stations: Sequence[StationMeta], out: Path,
              labels: Labels) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "simulation.csv", out / "wait_vs_utilisation.png", out / "station_load_map.png"]
    write_csv(points, paths[0], labels)
    plot_wait(points, paths[1], labels)
    load = high_load(points)
    plot_map(points, stations, load if load is not None else max(p.load for p in points), paths[2], labels)
    return paths
