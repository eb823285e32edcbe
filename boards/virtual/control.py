"""The control channel: the harness's end of the loopback TCP connection the board's emulation
(mp/machine.py, mp/network.py) opens at every boot, before any firmware runs; its port is in
the board's $VB_PORT. Lines of text:

    harness -> board   I<gpio> <µV>                    what the outside world puts on a pin
                                                       (-1 floating)
                       W<0|1>                          the access point is up
                       .                               end of the snapshot sent on connect
    board -> harness   P<gpio> <mode> <pull> <level>   pin setup and output changes
                       Q<gpio> <duty>                  PWM duty (u16)
                       N<0|1>                          Wi-Fi connected
                       R<cause>                        reset me
                       D<ms> / F                       watchdog armed / fed
                       M<bytes>                        heap in use once the emulation is up

The board applies inputs when the firmware next calls into machine/network; it sends its
outputs fire and forget. Everything runs under the board's lock (one Condition, shared with
the serial port), and what the board reports is handled in the order it was sent.
"""
from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable, Mapping


class ControlChannel:
    """Accepts the emulation's connection (a new one each boot), sends it pin voltages and the
    access point's state, and hands what it reports to the board: pins to `on_pin`, resets,
    the watchdog and "emulation up" to the process's callbacks. PWM duties, Wi-Fi connected
    and the heap after boot are kept here."""

    def __init__(self, cond: threading.Condition, name: str, *,
                 snapshot: Callable[[], tuple[bool, Mapping[int, int]]],
                 on_pin: Callable[[int, int, int, int], None],
                 on_reset: Callable[[int | None], None],
                 on_watchdog_armed: Callable[[float], None],
                 on_watchdog_fed: Callable[[], None],
                 on_up: Callable[[], None]):
        """snapshot() -> (access point up, {gpio: µV}) for a new connection, with the pins'
        state reset as at power-on; on_reset(cause or None) for R."""
        self._cond = cond
        self._name = name
        self._snapshot = snapshot
        self._on_pin = on_pin
        self._on_reset = on_reset
        self._on_watchdog_armed = on_watchdog_armed
        self._on_watchdog_fed = on_watchdog_fed
        self._on_up = on_up
        self._lsock: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._buf = b""
        self._sent: Mapping[int, int] = {}  # the pin voltages the board has been told
        self.pwm: dict[int, int] = {}
        self.wifi_connected = False
        self.boot_heap: int | None = None

    def open(self) -> None:
        self._lsock = socket.socket()
        self._lsock.bind(("127.0.0.1", 0))
        self._lsock.listen(2)
        threading.Thread(target=self._serve, daemon=True, name=f"vboard-{self._name}-ctl").start()

    @property
    def port(self) -> int:
        if self._lsock is None:
            raise RuntimeError("control channel not open")
        return self._lsock.getsockname()[1]

    def close(self) -> None:
        for s in (self._conn, self._lsock):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        self._conn = self._lsock = None

    # ------------------------------------------------------------------ harness -> board

    def send_inputs(self, microvolts: Mapping[int, int]) -> None:
        """Tell the board the pin voltages that differ from what it was told (lock held)."""
        diff = [(g, v) for g, v in microvolts.items() if self._sent.get(g) != v]
        self._sent = microvolts
        if diff:
            self._send("".join(f"I{g} {v}\n" for g, v in diff))

    def send_access_point(self, up: bool) -> None:
        self._send(f"W{1 if up else 0}\n")

    def _send(self, msg: str) -> None:
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

    # ------------------------------------------------------------------ board -> harness

    def _serve(self) -> None:
        while True:
            lsock = self._lsock
            if lsock is None:
                return
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            with self._cond:
                if self._conn is not None:
                    self._conn.close()
                self._conn = conn
                self._buf = b""
                self.pwm = {}
                self.wifi_connected = False
                ap_up, microvolts = self._snapshot()
                self._sent = microvolts
                snap = [f"W{int(ap_up)}"] + [f"I{g} {v}" for g, v in microvolts.items() if v >= 0]
                self._send("\n".join(snap) + "\n.\n")
            while True:
                try:
                    select.select([conn], [], [], 0.5)
                except (OSError, ValueError):
                    break
                with self._cond:
                    if not self._drain(conn):
                        break
            with self._cond:
                if self._conn is conn:
                    self._conn = None
                    self.wifi_connected = False
                    self._cond.notify_all()
            conn.close()

    def drain(self) -> bool:
        """Handle what the board sent so far, without waiting (lock held). The serial port
        calls it before it takes output in: the board sent its pin changes before it printed,
        so a line and the pins it reports agree. False when there is no connection."""
        return self._drain(self._conn)

    def _drain(self, conn: socket.socket | None) -> bool:
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
            *lines, self._buf = (self._buf + data).split(b"\n")
            for ln in lines:
                if ln:
                    self._handle(ln.decode(errors="replace"))

    def _handle(self, msg: str) -> None:
        kind, rest = msg[0], msg[1:]
        if kind == "P":
            g, mode, pull, level = (int(x) for x in rest.split())
            self._on_pin(g, mode, pull, level)
        elif kind == "Q":
            g, duty = (int(x) for x in rest.split())
            self.pwm[g] = duty
        elif kind == "N":
            self.wifi_connected = rest.strip() == "1"
        elif kind == "R":
            self._on_reset(int(rest) if rest else None)
        elif kind == "D":
            self._on_watchdog_armed(int(rest) / 1000)
        elif kind == "F":
            self._on_watchdog_fed()
        elif kind == "M":
            self.boot_heap = int(rest)
            self._on_up()
        self._cond.notify_all()
