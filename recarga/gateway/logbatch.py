"""The gateway's log lines, written once per pass of its loop instead of once per line.

LogBatch wraps the root logger's stream handlers while the service runs: lines are kept
(Buffered) and written with one write() at the end of each pass; under journald they lose
their asctime (journald stamps lines itself), elsewhere it is formatted once a second
(SecondFormatter).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # the gateway's log lines (cli.py)


class Buffered:
    """A stream that keeps what a StreamHandler writes until drain()."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass  # StreamHandler flushes after every record; drain() writes once per pass

    def drain(self) -> None:
        if self.parts:
            text = "".join(self.parts)
            self.parts.clear()
            self.stream.write(text)
            self.stream.flush()


class SecondFormatter(logging.Formatter):
    """The same asctime as logging.Formatter's, its strftime() done once a second rather than
    once a line."""

    _second = -1
    _stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None or self.datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(self.default_time_format, self.converter(record.created))
        return self.default_msec_format % (self._stamp, record.msecs)


class LogBatch:
    """The log lines of one pass of the loop go out with one write() when it ends, not a
    write and a flush per line (stderr is unbuffered under systemd, and journald wakes for
    every write). Wraps the root logger's stream handlers while the service runs. Under
    journald, which stamps every line itself, the lines lose their asctime (elsewhere it is
    formatted once a second, see SecondFormatter). A handler with a plain logging.Formatter
    gets the gateway's LOG_FORMAT this way (the gateway's command sets its handler up with it).
    Records skip the thread and process lookups (a getpid() call each): the format names
    neither."""

    _FLAGS = ("logThreads", "logProcesses", "logMultiprocessing")

    def __init__(self) -> None:
        self.wrapped: list[tuple[logging.StreamHandler, Buffered, logging.Formatter | None]] = []
        self.flags: dict[str, Any] = {}

    def install(self) -> None:
        self.flags = {f: getattr(logging, f) for f in self._FLAGS}
        for f in self._FLAGS:
            setattr(logging, f, False)
        journal = os.environ.get("JOURNAL_STREAM", "")
        for h in logging.getLogger().handlers:
            if type(h) is logging.StreamHandler:
                buffered, formatter = Buffered(h.stream), h.formatter
                self.wrapped.append((h, buffered, formatter))
                h.setStream(buffered)  # type: ignore[arg-type]
                if formatter is None or type(formatter) is not logging.Formatter:
                    continue
                if journal and is_journal(buffered.stream, journal):
                    h.setFormatter(logging.Formatter(LOG_FORMAT.replace("%(asctime)s ", "")))
                elif formatter.datefmt is None:
                    h.setFormatter(SecondFormatter(LOG_FORMAT))

    def drain(self) -> None:
        for _, buffered, _ in self.wrapped:
            buffered.drain()

    def uninstall(self) -> None:
        for h, buffered, formatter in self.wrapped:
            buffered.drain()
            h.setStream(buffered.stream)
            h.setFormatter(formatter)
        self.wrapped.clear()
        for f, value in self.flags.items():
            setattr(logging, f, value)
        self.flags = {}


def is_journal(stream: Any, journal: str) -> bool:
    """systemd sets JOURNAL_STREAM to "device:inode" of the stream it connected to journald."""
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return journal == f"{st.st_dev}:{st.st_ino}"
