"""The virtual board: unmodified MicroPython firmware on the unix port, wired like a Wokwi
diagram.json.

    with VirtualBoard("boards/car", {"main.py": "firmware/car/main.py", ...}) as board:
        board.wait_serial("booted")
        board.set_pot("pot1", 0.15)          # the ADC on pot1's SIG now reads 0.15 × 3.3 V
        board.wait_led("led1", True, timeout=5)

VirtualBoard is the public face; each job is a module of its own, which it composes:
flash.py (the files in the flash directory), process.py (the micropython child, its reboots),
serial_port.py (the pty that is its stdio, captured and writable), control.py (the loopback
connection to the emulated machine/network modules), wifi_proxy.py (the proxies that stand for
its TCP connections over Wi-Fi), leds.py (LED history and blink rates), diagram.py (the
circuit). They share one lock and Condition, notified on every change the board reports.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Self, cast

from .control import ControlChannel
from .diagram import (
    BUTTON_TYPES,
    ESP32_GPIOS,
    LED_TYPES,
    POT_TYPES,
    RGB_TYPES,
    SWITCH_TYPES,
    Circuit,
    Diagram,
    DiagramError,
    Part,
)
from .errors import BoardError
from .flash import cli_flash_files, default_flash_files, fill, list_files
from .leds import LedHistory
from .process import HARD_RESET, BoardProcess, find_micropython, prepare_emulation
from .serial_port import SerialPort
from .wifi_proxy import Address, WifiProxies

__all__ = ["BoardError", "VirtualBoard", "cli_flash_files", "default_flash_files", "find_micropython"]

GPIOS = sorted(ESP32_GPIOS)


class VirtualBoard:
    """One virtual ESP32 running MicroPython firmware, wired as a Wokwi diagram says.

    diagram: path of diagram.json (or of the directory holding it).
    files: {board path: host file or directory, or bytes}, copied into the flash ("" or "/"
        means the flash root: {"": "firmware/car", "lib": "firmware/lib",
        "config.json": cfg_path}). Missing lib/umqtt/simple.py is added (vendored).
    flash_dir: use this directory as the flash (kept after stop) instead of a temporary one.
    heapsize: MicroPython's -X heapsize (the emulation's own share counts: see `boot_heap`).
    serial: None (captured by the harness only) or "pty" (also at `pty_path` for mpremote).
    proxy: route config.json's broker/regions addresses through cuttable proxies (Wi-Fi).
    ssid/password: if given, the only credentials the access point accepts.
    env: extra environment variables for the micropython process.
    """

    def __init__(self, diagram: str | Path | Diagram, files: Mapping[str, object] | None = None,
                 *, flash_dir: str | Path | None = None, heapsize: str = "96k",
                 serial: str | None = None, name: str | None = None, proxy: bool = True,
                 micropython: str | None = None, wifi_delay_ms: int = 300,
                 ssid: str | None = None, password: str | None = None,
                 boot_timeout: float = 15.0,
                 env: Mapping[str, str] | None = None):
        if serial not in (None, "pty"):
            raise ValueError("serial must be None or 'pty'")
        self.diagram = diagram if isinstance(diagram, Diagram) else Diagram.load(diagram)
        self.circuit = Circuit(self.diagram)
        self.name = name or Path(self.diagram.source).parent.name or "board"
        self.heapsize = heapsize
        self.serial_mode = serial
        self.proxy_enabled = proxy
        self.micropython = micropython or find_micropython()
        self.wifi_delay_ms = wifi_delay_ms
        self.ssid, self.password = ssid, password
        self.boot_timeout = boot_timeout
        self.extra_env = dict(env or {})
        self._tmp = Path(tempfile.mkdtemp(prefix=f"vboard-{re.sub(r'[^A-Za-z0-9_-]', '_', self.name)}-"))
        self.flash = Path(flash_dir) if flash_dir is not None else self._tmp / "flash"
        try:
            fill(self.flash, files or {})
            emulation = prepare_emulation(self._tmp / "emu")
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise

        self._cond = threading.Condition(threading.RLock())
        self._started = False
        self._ap_up = True
        self._leds = LedHistory(self.diagram, self.circuit, self._cond)
        self._proxies = WifiProxies()
        self._serial = SerialPort(self._cond, self.name)
        self._process = BoardProcess(self.micropython, heapsize, emulation, home=self._tmp,
                                     serial=self._serial, cond=self._cond, name=self.name,
                                     before_boot=self._before_boot, extra_env=self.extra_env)
        self._control = ControlChannel(
            self._cond, self.name, snapshot=self._power_on_pins, on_pin=self._pin_reported,
            on_reset=self._process.reset_requested,
            on_watchdog_armed=self._process.watchdog_armed,
            on_watchdog_fed=self._process.watchdog_fed, on_up=self._process.emulation_up)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> VirtualBoard:
        if self._started:
            return self
        self._started = True
        try:
            self._serial.open(self._control.drain,
                              self._tmp / "tty" if self.serial_mode == "pty" else None)
            self._control.open()
            self._process.start({
                "VB_PORT": str(self._control.port),
                "VB_FLASH": str(self.flash.resolve()),
                "VB_UID": f"{0x240AC4000000 | (zlib.crc32(self.name.encode()) & 0xFFFFFF):012x}",
                "VB_WIFI_MS": str(self.wifi_delay_ms),
                **({"VB_SSID": self.ssid} if self.ssid is not None else {}),
                **({"VB_PASSWORD": self.password} if self.password is not None else {}),
            })
            self.wait_boot(1, timeout=self.boot_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<VirtualBoard {self.name} pid={self.pid} boots={self.boots}>"

    def stop(self) -> None:
        """Stop the board's process (by pid) and everything the harness runs for it."""
        self._process.stop()
        self._proxies.close()
        self._control.close()
        self._serial.close()
        shutil.rmtree(self._tmp, ignore_errors=True)  # a flash_dir of the caller is elsewhere

    def reset(self, wait: bool = True, timeout: float = 15.0) -> None:
        """Press the EN button: the board restarts and boots main.py again."""
        n = self.boots
        self._process.kill(HARD_RESET)
        if wait:
            self.wait_boot(n + 1, timeout)

    def wait_boot(self, n: int | None = None, timeout: float = 15.0) -> None:
        """Wait until boot number n (default: the current one) has its emulation running."""
        self._process.wait_boot(n, timeout)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def boots(self) -> int:
        """How many times the board has booted (the first boot is 1)."""
        return self._process.boots

    @property
    def reset_causes(self) -> list[int]:
        """machine.reset_cause() of every boot, oldest first (process.PWRON_RESET, ...)."""
        return self._process.reset_causes

    @property
    def error(self) -> str | None:
        """Why the harness gave the board up (it kept dying while booting), else None."""
        return self._process.error

    @property
    def boot_heap(self) -> int | None:
        """gc.mem_alloc() once the emulation was up, at the latest boot: the firmware's own
        heap use is gc.mem_alloc() - boot_heap."""
        return self._control.boot_heap

    @property
    def pwm(self) -> dict[int, int]:
        """{gpio: duty (u16)} of the PWM outputs the firmware set up this boot."""
        return self._control.pwm

    @property
    def wifi_connected(self) -> bool:
        """What the firmware's WLAN.isconnected() last reported."""
        return self._control.wifi_connected

    # ------------------------------------------------------------------ Wi-Fi

    def _before_boot(self) -> None:
        if self.proxy_enabled:
            self._proxies.route_config(self.flash / "config.json", listening=self._ap_up)

    @property
    def upstreams(self) -> dict[Address, Address]:
        """{real broker address: the proxy address config.json now names}."""
        return self._proxies.upstreams

    def wifi(self, up: bool) -> None:
        """Switch the access point on or off. Off: WLAN.isconnected() goes False at the
        firmware's next call, open TCP connections through the proxies are cut and new ones
        refused."""
        with self._cond:
            self._ap_up = bool(up)
            self._control.send_access_point(self._ap_up)
        if up:
            self._proxies.listen()
        else:
            self._proxies.cut()

    # ------------------------------------------------------------------ the wiring

    def _power_on_pins(self) -> tuple[bool, Mapping[int, int]]:
        """A new boot's emulation connected: its pins are as at power-on (lock held)."""
        self.circuit.reset_pins()
        microvolts = self.circuit.external_microvolts(GPIOS)
        self._leds.update()
        return self._ap_up, microvolts

    def _pin_reported(self, gpio: int, mode: int, pull: int, level: int) -> None:
        self.circuit.set_pin(gpio, mode, pull, level)
        self._inputs_changed()

    def _inputs_changed(self) -> None:
        """Re-solve the circuit: push changed pin voltages to the board, record LEDs."""
        self._control.send_inputs(self.circuit.external_microvolts(GPIOS))
        self._leds.update()
        self._cond.notify_all()

    # ------------------------------------------------------------------ inputs

    def _part(self, part: str, types: Iterable[str], what: str) -> Part:
        p = self.diagram.part(part)
        if p.type not in types:
            raise DiagramError(f"{part} is a {p.type}, not a {what}")
        return p

    def set_pot(self, part: str, fraction: float) -> None:
        """Turn a potentiometer: its SIG gives fraction × 3.3 V (0..1)."""
        self._part(part, POT_TYPES, "potentiometer")
        with self._cond:
            self.circuit.pot[part] = min(1.0, max(0.0, float(fraction)))
            self._inputs_changed()

    def press(self, part: str) -> None:
        """Press a pushbutton (its two contacts join; with a pull-up and the other contact at
        GND the pin reads 0)."""
        self._set_button(part, True)

    def release(self, part: str) -> None:
        self._set_button(part, False)

    def hold(self, part: str, seconds: float) -> None:
        """Press, wait, release."""
        self.press(part)
        try:
            time.sleep(seconds)
        finally:
            self.release(part)

    def _set_button(self, part: str, pressed: bool) -> None:
        self._part(part, BUTTON_TYPES, "pushbutton")
        with self._cond:
            self.circuit.pressed[part] = pressed
            self._inputs_changed()

    def set_switch(self, part: str, position: int) -> None:
        """Slide a slide switch: 0 joins pins 2 and 1 (left), 1 joins 2 and 3 (right)."""
        self._part(part, SWITCH_TYPES, "slide switch")
        with self._cond:
            self.circuit.switch[part] = 1 if position else 0
            self._inputs_changed()

    def set_control(self, part: str, control: str, value: object) -> None:
        """Wokwi's automation controls: pushbutton `pressed`, potentiometer `position`,
        slide switch `position`."""
        kind = self.diagram.kind(part)
        if kind == "pushbutton" and control == "pressed":
            self._set_button(part, bool(value))
        elif kind == "potentiometer" and control == "position":
            self.set_pot(part, float(value))
        elif kind == "slide-switch" and control == "position":
            self.set_switch(part, int(value))
        else:
            raise DiagramError(f"{part} ({self.diagram.part(part).type}) has no control {control!r}")

    # ------------------------------------------------------------------ outputs

    def led(self, part: str) -> bool:
        self._part(part, LED_TYPES, "LED")
        with self._cond:
            return self.circuit.led(part)

    def rgb(self, part: str) -> tuple[int, int, int]:
        self._part(part, RGB_TYPES, "RGB LED")
        with self._cond:
            return self.circuit.rgb(part)

    def pin(self, gpio: int) -> int:
        """The level (0/1) on a GPIO: what the board drives, else what is wired to it, else
        its pull."""
        with self._cond:
            return self.circuit.level(self.diagram.board_id, str(gpio))

    def part_pin(self, part: str, pin: str) -> int:
        """The level on any part's pin (what Wokwi's expect-pin reads)."""
        with self._cond:
            return self.circuit.level(part, pin)

    def voltage(self, part: str, pin: str) -> float | None:
        with self._cond:
            return self.circuit.voltage(part, pin)

    def changes(self, part: str, since: float | None = None) -> list[tuple[float, object]]:
        """(time.monotonic(), state) of every change of an LED / RGB LED, oldest first."""
        return self._leds.changes(part, since)

    def blink_hz(self, part: str, window: float = 2.0) -> float:
        """The blink frequency of an LED (or an RGB LED, any colour) over the next `window`
        seconds (this waits for the window to pass); see leds.blink_rate()."""
        return self._leds.blink_hz(part, window)

    # ------------------------------------------------------------------ waiting

    def wait_until(self, predicate: Callable[[], object], timeout: float = 5.0,
                   what: str = "condition") -> object:
        """Wait until predicate() is true (re-checked on every change the board reports and
        every 50 ms); returns its value or raises TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                v = predicate()
                if v:
                    return v
                if self.error:
                    raise BoardError(f"{self.name}: {self.error}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name}: {what} not reached within {timeout} s; "
                                       f"last serial lines: {self._serial.lines()[-5:]}")
                self._cond.wait(min(left, 0.05))

    def wait_led(self, part: str, value: bool, timeout: float = 5.0) -> object:
        return self.wait_until(lambda: self.led(part) == bool(value), timeout,
                               f"LED {part} = {bool(value)}")

    def wait_rgb(self, part: str, value: tuple, timeout: float = 5.0) -> object:
        want = tuple(int(bool(x)) for x in value)
        return self.wait_until(lambda: self.rgb(part) == want, timeout, f"RGB {part} = {want}")

    def wait_pin(self, gpio: int, value: int, timeout: float = 5.0) -> object:
        return self.wait_until(lambda: self.pin(gpio) == int(bool(value)), timeout,
                               f"GPIO {gpio} = {value}")

    # ------------------------------------------------------------------ serial

    @property
    def pty_path(self) -> str | None:
        """With serial="pty", the serial port's path for mpremote (while started)."""
        return self._serial.pty_path

    def serial_text(self) -> str:
        """Everything the board printed (all boots)."""
        return self._serial.text()

    def serial_lines(self, since: int = 0) -> list[str]:
        """Complete lines printed (all boots), without line ends; from index `since`."""
        return self._serial.lines(since)

    def mark(self) -> int:
        """The number of complete lines so far: pass it as wait_serial(since=...)."""
        return self._serial.mark()

    def wait_serial(self, text: str, timeout: float = 5.0, since: int | None = None,
                    partial: bool = False) -> str:
        """Wait for a line containing `text`; returns that line. Searches from `since` (a line
        index, e.g. mark()), by default from just after the line the previous wait_serial
        matched, like an expect script. With partial=True the unfinished last line counts too
        (for prompts such as ">>> ")."""
        start = self._serial.cursor if since is None else since
        hit = cast(tuple[int, str], self.wait_until(
            lambda: self._serial.find(text, start, partial), timeout, f"serial line with {text!r}"))
        self._serial.cursor = hit[0]
        return hit[1]

    @property
    def cursor(self) -> int:
        """The line index just after the line the last wait_serial matched."""
        return self._serial.cursor

    def write_serial(self, data: str | bytes) -> None:
        """Type into the board's serial port (its stdin; "\\x03" is ^C)."""
        self._serial.write(data.encode() if isinstance(data, str) else data)

    # ------------------------------------------------------------------ flash

    def files(self) -> list[str]:
        """Paths of the files in the flash, relative, sorted ("lib/umqtt/simple.py", ...)."""
        return list_files(self.flash)

