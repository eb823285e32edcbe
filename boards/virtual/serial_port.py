"""The board's serial port: a pseudo-terminal that is the micropython process's stdin, stdout
and stderr, raw as a UART (^C raises KeyboardInterrupt). Everything the board prints is kept,
as bytes and as lines; with a user pty, a second pseudo-terminal is bridged to it for mpremote.
It outlives the process, so it survives the board's reboots (a socat EXEC pty would die with
the process, which is why the ptys are bridged here and socat is not needed)."""
from __future__ import annotations

import os
import select
import termios
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

from .errors import BoardError


def set_serial_mode(fd: int, isig: bool) -> None:
    """Raw, no echo, no output processing (a UART passes bytes as they are); with isig, the
    ^C byte interrupts the foreground process (MicroPython's KeyboardInterrupt)."""
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    if isig:
        attrs[3] |= termios.ISIG
    attrs[6][termios.VINTR] = 3
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


class SerialPort:
    """The port and what came out of it. Shares the board's Condition: it is notified on every
    output, and `before_output` (the control channel's drain) runs under it before output is
    taken in, so that pin changes the board sent before a line are seen before that line."""

    def __init__(self, cond: threading.Condition, name: str):
        self._cond = cond
        self._name = name
        self._data = bytearray()
        self._lines: list[str] = []
        self._partial = bytearray()
        self.cursor = 0  # line index just after the line the last expect-style wait matched
        self.pty_path: str | None = None
        self._dev_master: int | None = None
        self._dev_slave: int | None = None
        self._user_master: int | None = None
        self._user_slave: int | None = None
        self._closed = False

    def open(self, before_output: Callable[[], object], user_pty: Path | None = None) -> None:
        """Open the port and start reading it; with `user_pty`, also offer it there (a
        symlink to a second pty bridged to it)."""
        self._dev_master, self._dev_slave = os.openpty()
        if user_pty is not None:
            self._user_master, self._user_slave = os.openpty()
            set_serial_mode(self._user_slave, isig=False)
            os.set_blocking(self._user_master, False)
            self.pty_path = str(user_pty)
            os.symlink(os.ttyname(self._user_slave), self.pty_path)
            threading.Thread(target=self._user_reader, daemon=True,
                             name=f"vboard-{self._name}-pty").start()
        threading.Thread(target=self._reader, args=(before_output,), daemon=True,
                         name=f"vboard-{self._name}-serial").start()

    def boot_stdio(self) -> int:
        """The fd a new process gets as stdio, in UART mode with nothing pending."""
        fd = self._dev_slave
        if fd is None:
            raise BoardError(f"{self._name}: serial port not open")
        set_serial_mode(fd, isig=True)
        termios.tcflush(fd, termios.TCIOFLUSH)
        return fd

    def close(self) -> None:
        self._closed = True
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

    # ------------------------------------------------------------------ in and out

    def write(self, data: bytes) -> None:
        """Type into the board's stdin."""
        fd = self._dev_master
        if fd is None:
            raise BoardError(f"{self._name}: not running")
        os.write(fd, data)

    def add_output(self, data: bytes) -> None:
        """Bytes on the board's output: to the log, the lines, the user's pty."""
        with self._cond:
            if self._user_master is not None:
                try:
                    os.write(self._user_master, data)
                except OSError:
                    pass  # nobody reads the port: the bytes are lost, as on a UART
            self._data += data
            self._partial += data
            if b"\n" in self._partial:
                *done, rest = bytes(self._partial).split(b"\n")
                self._lines.extend(x.decode("utf-8", "replace").rstrip("\r") for x in done)
                self._partial = bytearray(rest)
            self._cond.notify_all()

    def end_line(self) -> None:
        """End an unfinished line (a reset cuts it short; the next boot starts a new one)."""
        with self._cond:
            if self._partial:
                self.add_output(b"\r\n")

    def _reader(self, before_output: Callable[[], object]) -> None:
        fd = self._dev_master
        while True:
            try:
                data = os.read(fd, 4096)
            except OSError:
                if self._closed or self._dev_master is None:
                    return
                time.sleep(0.02)
                continue
            if not data:
                if self._closed:
                    return
                time.sleep(0.02)
                continue
            with self._cond:
                before_output()
                self.add_output(data)

    def _user_reader(self) -> None:
        fd = self._user_master
        while not self._closed:
            try:
                r, _, _ = select.select([fd], [], [], 0.2)
                if not r:
                    continue
                data = os.read(fd, 4096)
            except OSError:
                if self._closed or self._user_master is None:
                    return
                time.sleep(0.05)
                continue
            if data and self._dev_master is not None:
                try:
                    os.write(self._dev_master, data)
                except OSError:
                    pass

    # ------------------------------------------------------------------ what was printed

    def text(self) -> str:
        """Everything the board printed (all boots)."""
        with self._cond:
            return self._data.decode("utf-8", "replace")

    def endswith(self, tail: bytes) -> bool:
        with self._cond:
            return self._data.endswith(tail)

    def lines(self, since: int = 0) -> list[str]:
        """Complete lines (all boots), without line ends; from index `since`."""
        with self._cond:
            return self._lines[since:]

    def mark(self) -> int:
        """The number of complete lines so far."""
        with self._cond:
            return len(self._lines)

    def find(self, text: str, start: int, partial: bool = False) -> tuple[int, str] | None:
        """The first line from index `start` containing `text`, as (index after it, line);
        with partial=True the unfinished last line counts too. None if there is none yet."""
        with self._cond:
            for i in range(start, len(self._lines)):
                if text in self._lines[i]:
                    return (i + 1, self._lines[i])
            if partial:
                part = self._partial.decode("utf-8", "replace")
                if text in part:
                    return (len(self._lines) + 1, part)
            return None
