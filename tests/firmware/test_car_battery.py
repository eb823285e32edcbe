"""Car battery model (firmware/car/battery.py) on the real MicroPython unix port, 96 KB heap."""
from __future__ import annotations

from pathlib import Path

from harness import micropython as mp

CURVE = [[300, 0.0], [345, 0.1], [360, 0.3], [372, 0.5], [388, 0.8], [403, 1.0]]


def run_mp(tmp_path: Path, code: str) -> list:
    """Run `code` on micropython (96 KB heap, firmware/car on the path); its JSON lines."""
    return mp.run_json(code, board="car", cwd=tmp_path)


def test_curve_interpolation_and_clamping(tmp_path):
    volts = [250, 300, 322.5, 345, 352.5, 360, 366, 372, 380, 388, 395.5, 403, 450]
    got = run_mp(tmp_path, f"""
import json
from battery import interpolate
xs = [p[0] for p in {CURVE}]
ys = [p[1] for p in {CURVE}]
print(json.dumps([interpolate(xs, ys, v) for v in {volts}]))
""")[0]
    want = [0.0, 0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.65, 0.8, 0.9, 1.0, 1.0]
    assert [round(g, 4) for g in got] == want


def test_read_uv_times_divider_and_median_filter(tmp_path):
    # 2.7 V at the pin x 130 = 351 V; spikes are rejected by the median of 5
    got = run_mp(tmp_path, f"""
import json
from battery import Battery
class Adc:
    def __init__(self, values): self.values = values; self.i = 0
    def read_uv(self):
        v = self.values[self.i]; self.i += 1; return v
adc = Adc([2700000, 3100000, 2700000, 100000, 2700000, 2710000, 2690000, 3300000])
b = Battery(130.0, {CURVE}, samples=5)
out = []
for _ in range(8):
    b.read(adc)
    out.append(b.volts)
print(json.dumps(out))
""")[0]
    assert abs(got[0] - 351.0) < 0.01  # one sample: itself
    assert abs(got[1] - (351 + 403) / 2) < 0.01  # two samples: the mean of the middle pair
    assert all(abs(v - 351.0) < 1.5 for v in got[2:]), got  # spikes 403 V / 13 V never win


def test_hysteresis_one_episode_while_dithering_around_20_percent(tmp_path):
    # soc dithers 0.19..0.21 for a long time: one episode. Rising to 0.24 does not end it;
    # above 0.25 it ends; the next dip below 0.20 is the second episode.
    got = run_mp(tmp_path, f"""
import json, gc
from battery import Battery
b = Battery(130.0, {CURVE}, samples=3)
def uv(soc):  # the pin voltage that gives this soc on the 345..360 V leg
    return int((345 + (soc - 0.1) / 0.2 * 15) / 130.0 * 1e6)
starts = []
seq = [0.5, 0.3, 0.22] + [0.195, 0.205, 0.19, 0.21, 0.2, 0.199, 0.215, 0.185] * 10 + [0.24] * 5 + [0.19] * 5 \\
      + [0.26] * 5 + [0.21] * 5 + [0.19] * 5
gc.collect()
base = gc.mem_alloc()
for i, s in enumerate(seq):
    if b.add_uv(uv(s)):
        starts.append(i)
gc.collect()
print(json.dumps({{"starts": starts, "low": b.low, "n": len(seq),
                  "drift": gc.mem_alloc() - base}}))
""")[0]
    n_dither = 3 + 80
    assert len(got["starts"]) == 2  # add_uv() is True exactly when an episode starts
    assert got["starts"][0] >= 3 and got["starts"][0] < n_dither  # first dip (median lags by one)
    assert got["starts"][1] > n_dither + 10  # only after rising above 0.25 and dipping again
    assert got["low"] is True
    assert got["drift"] < 256  # preallocated buffers: no growth per reading


def test_bad_battery_config_is_refused(tmp_path):
    got = run_mp(tmp_path, f"""
import json
from battery import Battery
out = []
for make in (lambda: Battery(0, {CURVE}), lambda: Battery(130, [[300, 0.0]]),
             lambda: Battery(130, [[300, 0.0], [290, 1.0]]), lambda: Battery(130, [[300, 0.0], [310, 1.5]]),
             lambda: Battery(130, {CURVE}, 9, 0.3, 0.2), lambda: Battery(130, {CURVE}, 0)):
    try:
        make(); out.append("ok")
    except ValueError as e:
        out.append("ValueError")
print(json.dumps(out))
""")[0]
    assert got == ["ValueError"] * 6
