"""A damaged database and one the service user cannot write: the gateway refuses to start
with a clear message and exit status 78 (the unit does not restart on it), rather than run
on part of its reservations; requests sent meanwhile wait in the broker and are answered
once the operator has restored the backup or mended the permissions, with nothing booked
twice."""
from __future__ import annotations

import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import ROOT
from harness.region import reserve_msg, station_set
from harness.wait import wait_until
from recarga.core.protocol import wire as W

pytestmark = pytest.mark.integration

EXIT_UNUSABLE = 78  # deploy/recarga-gateway.service: RestartPreventExitStatus=78


def fill(s, cars: list[str]) -> None:
    for c in cars:
        s.car(c)
        assert s.ledger.ask(c, reserve_msg(c, "q1"), "q1")["ok"]


def refused_to_start(gw, text: str) -> None:
    """Start the gateway and wait until it has exited with EXIT_UNUSABLE, saying `text`."""
    gw.start()
    wait_until(lambda: not gw.running, 20, f"{gw.who} to exit")
    assert gw.returncode == EXIT_UNUSABLE, gw.log_text()[-2000:]
    assert text in gw.log_text()


def test_a_damaged_database_is_refused_and_its_backup_restored_books_nothing_twice(scenario, tmp_path):
    s = scenario(["c1", "c2", "c3", "c4", "late"], station_set(2, 2))  # 4 slots
    fill(s, ["c1", "c2", "c3", "c4"])
    copy = tmp_path / "backup.db"
    done = subprocess.run([sys.executable, "-m", "recarga.gateway.cli", "backup", "--config", str(s.gw.config),
                           "--to", str(copy)], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    s.gw.stop()
    # one page of the index the gateway restores its active reservations through, overwritten
    with sqlite3.connect(f"file:{s.gw.db}?mode=ro", uri=True) as db:
        page = db.execute("PRAGMA page_size").fetchone()[0]
        [(root,)] = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'reservations_active'")
    with open(s.gw.db, "r+b") as f:
        f.seek((root - 1) * page)
        f.write(b"\xa5" * page)
    s.car("late")
    s.ledger.send("late", reserve_msg("late", "q1"), "q1")  # waits in the broker meanwhile
    refused_to_start(s.gw, "is damaged")
    assert "restore a backup" in s.gw.log_text()
    # the operator restores the backup (docs/deployment.md) and starts the gateway again
    shutil.copyfile(copy, s.gw.db)
    s.gw.start().wait_connected()
    late = s.ledger.cars["late"].wait(lambda: s.ledger.replies("late", "q1"), 10, "the late car's answer")[0]
    assert late["ok"] is False and late["error"]["code"] == W.NO_CAPACITY  # all 4 slots still held
    snap = s.check()
    assert len([r for r in snap.reservations if r.state == "held"]) == 4


@pytest.fixture
def service_dir() -> Iterator[Path]:
    """A directory outside pytest's private (mode 0700) temporary tree, which the service
    user can enter."""
    d = Path(tempfile.mkdtemp(prefix="recarga-faults-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


SERVICE_USER = "nobody"  # stands for the unit's User=recarga: not root, who may write anything


def as_service_user(gw) -> None:
    """Run the gateway as SERVICE_USER, owning its directory (as StateDirectory= makes it)."""
    user = pwd.getpwnam(SERVICE_USER)
    for p in [gw.root, *gw.root.iterdir()]:
        os.chown(p, user.pw_uid, user.pw_gid)
    gw.argv = [shutil.which("setpriv"), f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
               *gw.argv]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run the gateway as another user")
def test_a_read_only_database_is_refused_for_good_and_served_once_writable(scenario, service_dir):
    s = scenario(["c1", "c2", "late"], station_set(2, 2), start=False, root=service_dir)
    as_service_user(s.gw)
    s.gw.start().wait_connected()
    fill(s, ["c1", "c2"])
    s.gw.stop()
    # a restored backup copied in as root: the service user may read it, not write it
    os.chmod(s.gw.db, 0o444)
    s.car("late")
    s.ledger.send("late", reserve_msg("late", "q1"), "q1")
    refused_to_start(s.gw, "not readable and writable")
    assert "exiting for a clean restart" not in s.gw.log_text()
    os.chmod(s.gw.db, 0o644)
    s.gw.start().wait_connected()
    late = s.ledger.cars["late"].wait(lambda: s.ledger.replies("late", "q1"), 10, "the late car's answer")[0]
    assert late["ok"] is True
    snap = s.check()
    assert sorted(r.car for r in snap.reservations if r.state == "held") == ["c1", "c2", "late"]
