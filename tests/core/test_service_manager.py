"""recarga.core.service_manager: the sd_notify datagrams on a real unix datagram socket
standing in for systemd's (harness.systemd.NotifySocket)."""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator

import pytest

from harness.systemd import NotifySocket
from recarga.core.service_manager import ServiceManager, watchdog_interval


@pytest.fixture
def notify(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    """A notification socket, named in NOTIFY_SOCKET; no watchdog unless a test sets one."""
    with NotifySocket() as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", str(sock.path))
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        yield sock


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ready_once_then_status_lines_and_stopping(notify: NotifySocket):
    m = ServiceManager.from_environment()
    m.status("checking the database")
    m.ready("serving region a")
    m.ready("serving region a again")  # a reconnect: a status line, not a second READY=1
    m.stopping()
    notify.wait_for("STOPPING", "1")
    assert [f for _, f in notify.received()] == [
        {"STATUS": "checking the database"},
        {"READY": "1", "STATUS": "serving region a"},
        {"STATUS": "serving region a again"},
        {"STOPPING": "1", "STATUS": "stopping"},
    ]
    assert m.is_ready


def test_pets_every_half_of_watchdog_usec(notify: NotifySocket, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    clock = Clock()
    m = ServiceManager.from_environment(clock)
    assert m.watchdog_s == 1.5
    m.pet()  # the first pass pets at once
    assert m.until_pet() == 1.5
    clock.now += 1.0
    m.pet()  # not due: nothing sent
    assert m.until_pet() == 0.5
    clock.now += 0.5
    assert m.until_pet() == 0.0
    m.pet()
    clock.now += 0.1
    m.pet()
    notify.wait_for("WATCHDOG", "1", count=2)
    m.status("marker")
    notify.wait_for("STATUS", "marker")  # datagrams arrive in order: nothing else came between
    assert [f for _, f in notify.received()] == [{"WATCHDOG": "1"}, {"WATCHDOG": "1"}, {"STATUS": "marker"}]


def test_no_watchdog_without_watchdog_usec(notify: NotifySocket):
    m = ServiceManager.from_environment()
    assert m.watchdog_s is None and m.until_pet() == math.inf
    m.pet()
    m.status("marker")
    notify.wait_for("STATUS", "marker")
    assert notify.times("WATCHDOG") == []


def test_nothing_without_notify_socket(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    m = ServiceManager.from_environment()
    assert m.watchdog_s is None and m.until_pet() == math.inf
    m.status("x")
    m.ready("x")
    m.pet()
    m.stopping()  # no socket, no error


def test_an_unreachable_socket_is_said_once_and_sends_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path,
                                                             caplog: pytest.LogCaptureFixture):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "no-such-socket"))
    with caplog.at_level(logging.WARNING, "recarga.service_manager"):
        m = ServiceManager.from_environment()
    assert "cannot reach the service manager" in caplog.text
    m.ready("x")
    m.pet()


def test_a_socket_that_goes_away_is_said_once(notify: NotifySocket, caplog: pytest.LogCaptureFixture):
    m = ServiceManager.from_environment()
    m.status("up")
    notify.wait_for("STATUS", "up")
    notify.close()  # the receiving end is gone: sends fail
    with caplog.at_level(logging.WARNING, "recarga.service_manager"):
        m.status("one")
        m.status("two")
    assert caplog.text.count("cannot notify the service manager") == 1


@pytest.mark.parametrize("env, interval", [
    ({}, None),
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # systemd watches another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
])
def test_watchdog_interval(env: dict[str, str], interval: float | None):
    assert watchdog_interval(env, os.getpid()) == interval
