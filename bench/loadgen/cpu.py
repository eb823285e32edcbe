"""CPU used by processes and left idle on the machine, read from /proc (Linux)."""
from __future__ import annotations

import math
import os
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")

Snapshot = tuple[float, dict[str, float], tuple[float, float]]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def system_idle() -> tuple[float, float]:
    """(idle + iowait, total) jiffies over all cores, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return float(values[3] + values[4]), float(sum(values))


class CpuMeter:
    """CPU used by named processes, this one as "driver", and the whole machine between
    two snapshots."""

    def __init__(self, pids: dict[str, int | None]):
        self.pids = pids

    def snapshot(self) -> Snapshot:
        own = os.times()
        procs = {"driver": own.user + own.system}
        for name, pid in self.pids.items():
            if pid is not None:
                try:
                    procs[name] = cpu_seconds(pid)
                except OSError:
                    procs[name] = math.nan
        return time.perf_counter(), procs, system_idle()

    @staticmethod
    def shares(a: Snapshot, b: Snapshot) -> dict[str, float]:
        """Per process: % of one core; "idle": % of all cores left idle."""
        (t0, p0, (i0, s0)), (t1, p1, (i1, s1)) = a, b
        wall = max(t1 - t0, 1e-9)
        out = {name: 100.0 * (p1[name] - p0[name]) / wall for name in p1 if name in p0}
        out["idle"] = 100.0 * (i1 - i0) / max(s1 - s0, 1.0)
        return out
