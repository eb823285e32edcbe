"""GatewayService without a broker (tests/gateway/conftest.py): a request is on disk before
it is published and acknowledged, a database or fsync failure exits with nothing of it
acknowledged, the loop goes on while an fsync waits; the gateway's paho client settings; its
log lines once per pass."""
from __future__ import annotations

import gc
import json
import logging
import os
import sqlite3
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from recarga.core.config_file import BrokerConfig
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.gateway import service as S
from recarga.gateway.logbatch import LOG_FORMAT, LogBatch, SecondFormatter
from recarga.gateway.mqtt_client import gateway_client

ONLINE = D.station_topic("t", "s1", "online")
STATUS = D.station_topic("t", "s1", "status")
REQUEST = D.car_topic("t", "c1", "request")
REPLY = D.car_topic("t", "c1", "reply")


@pytest.fixture
def service(make_service):
    return make_service("sync_thread = true")  # the fsync on a thread of its own: what most of these tests are about


def acks(events: list) -> list[str]:
    return [e for e in events if isinstance(e, str) and e.startswith("ack ")]


def test_database_failure_exits_without_acknowledging(service, message, monkeypatch):
    assert service.handle([message(ONLINE, W.online_message(True), 1)])

    def broken(results, *encoded):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(service.store, "commit_all", broken)
    service.process([message(ONLINE, W.online_message(True), 2)])
    with pytest.raises(SystemExit) as e:
        service.commit()
    assert e.value.code == S.EXIT_DB_FAILURE
    service.settle(1)
    assert acks(service.client.events) == ["ack 1"]


def test_a_failed_fsync_exits_without_acknowledging_what_it_was_to_cover(service, message, monkeypatch):
    def broken():
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(service.store, "sync", broken)
    assert not service.handle([message(ONLINE, W.online_message(True), 1)], timeout=1)
    assert service.client.events == ["commit", f"exit {S.EXIT_DB_FAILURE}"]  # from the syncer's thread


def test_batch_is_committed_before_it_is_acknowledged(service, message):
    assert service.handle([message(ONLINE, W.online_message(True), 1),
                           message(STATUS, W.encode(D.station_status(["free"])), 2),
                           message(REQUEST, b"{bad", 3)])
    events = [e[0] if isinstance(e, tuple) else e for e in service.client.events]  # topics for publishes
    assert events[0] == "commit" and events[-3:] == ["ack 1", "ack 2", "ack 3"]
    assert events.index("commit") < events.index(REPLY) < events.index("ack 1")
    assert service.store.stations_live()["s1"].slots == ["free"]


def test_the_stored_reply_is_the_published_text(service, message):
    request = W.encode(D.reserve_request("q1", "c1", lat=52.521, lon=13.401, soc=0.2, battery_kwh=58,
                                         consumption_kwh_100km=16.6, max_ac_kw=11, max_dc_kw=0, target_soc=0.8))
    assert service.handle([message(ONLINE, W.online_message(True), 1),
                           message(STATUS, W.encode(D.station_status(["free"])), 2),
                           message(REQUEST, request, 3)])
    [reply] = [e[1] for e in service.client.events if isinstance(e, tuple) and e[0] == REPLY]
    assert json.loads(reply)["ok"] is True
    [(stored,)] = service.store.db.execute("SELECT reply FROM requests WHERE rid = 'q1'").fetchall()
    assert stored.encode() == reply


def test_a_retained_request_replayed_by_the_broker_does_not_act(service, message, caplog):
    request = W.encode(D.reserve_request("q1", "c1", lat=52.521, lon=13.401, soc=0.2, battery_kwh=58,
                                         consumption_kwh_100km=16.6, max_ac_kw=11, max_dc_kw=0, target_soc=0.8))
    assert service.handle([message(ONLINE, W.online_message(True), 1),
                           message(STATUS, W.encode(D.station_status(["free"])), 2, retain=True),
                           message(REQUEST, request, 3, retain=True)])
    assert acks(service.client.events) == ["ack 1", "ack 2", "ack 3"]
    assert [e for e in service.client.events if isinstance(e, tuple)] == []  # no reply, no station command
    assert service.store.active() == [] and service.engine.reservations == {}
    assert f"retained request on {REQUEST} ignored" in caplog.text
    assert service.store.stations_live()["s1"].slots == ["free"]  # retained statuses are the stations' state
    assert service.handle([message(REQUEST, request, 4)])  # the same request sent: it acts
    [reply] = [e[1] for e in service.client.events if isinstance(e, tuple) and e[0] == REPLY]
    assert json.loads(reply)["ok"] is True


def test_a_topic_that_is_not_utf8_is_logged_and_acknowledged_and_the_batch_goes_on(service, message, caplog):
    assert service.handle([message(ONLINE, W.online_message(True), 1),
                           message(b"recarga/v1/t/station/\xff/online", W.online_message(True), 2),
                           message(STATUS, W.encode(D.station_status(["free"])), 3)])
    assert acks(service.client.events) == ["ack 1", "ack 2", "ack 3"]
    assert "not UTF-8" in caplog.text
    assert service.store.stations_live()["s1"].slots == ["free"]


def test_the_loop_goes_on_while_an_fsync_waits_and_stops_deciding_at_the_backlog(service, message, monkeypatch):
    """A slow disk does not stop the loop: the next batches are decided meanwhile, then
    committed together and covered by one fsync; only MAX_BACKLOG messages wait, then the
    loop waits for the syncer alone."""
    entered, gate = threading.Event(), threading.Event()
    synced: list[int] = []
    commits: list[int] = []
    real_sync, real_commit = service.store.sync, service.store.commit_all

    def slow():
        entered.set()
        gate.wait(10)
        synced.append(len(commits))
        real_sync()

    def commit(results, *encoded):
        commits.append(len(results))
        real_commit(results, *encoded)

    monkeypatch.setattr(service.store, "sync", slow)
    monkeypatch.setattr(service.store, "commit_all", commit)
    now = time.time()
    service.clock = lambda: now  # the clock stands still: only the first pass runs the engine's tick
    online = W.online_message(True)

    def read(mids) -> None:
        for mid in mids:
            service.client.deliver(message(ONLINE, online, mid))

    read([1])
    service.step(0.0)
    assert entered.wait(10)  # the first batch's fsync hangs
    read([2])
    service.step(0.0)
    read(range(3, S.MAX_BACKLOG + 1))
    service.step(0.0)
    assert acks(service.client.events) == [] and commits == [2]  # message 1 and the tick; the others wait
    assert service.backlog == S.MAX_BACKLOG
    read([S.MAX_BACKLOG + 1])
    t0 = time.monotonic()
    service.step(0.2)  # the backlog is full: it waits for the syncer, and decides nothing
    assert time.monotonic() - t0 >= 0.15 and service.backlog == S.MAX_BACKLOG
    assert acks(service.client.events) == []
    gate.set()
    assert service.settle()
    assert acks(service.client.events) == [f"ack {m}" for m in range(1, S.MAX_BACKLOG + 1)]
    assert commits == [2, S.MAX_BACKLOG - 1] and synced == [1, 2]  # the later batches in one transaction
    service.step(0.0)  # room again: the message that waited is decided
    assert service.settle() and acks(service.client.events)[-1] == f"ack {S.MAX_BACKLOG + 1}"


@pytest.mark.parametrize("setting", ['synchronous = "NORMAL"', 'synchronous = "FULL"'])
def test_without_a_sync_thread_a_batch_goes_out_in_the_pass_that_decided_it(make_service, message, setting):
    """NORMAL, or FULL with its fsync inside the commit (the default): the pass that commits a
    batch publishes and acknowledges it (a tick's expiry must not wait for the next message
    to wake the loop); with FULL, SQLite fsyncs inside that commit."""
    svc = make_service(setting)
    assert not svc.store.deferred_sync
    svc.client.deliver(message(ONLINE, W.online_message(True), 1))
    svc.step(0.0)
    assert acks(svc.client.events) == ["ack 1"]
    assert "wal-sync" not in {t.name for t in threading.enumerate()}
    assert svc.store.db.execute("PRAGMA synchronous").fetchone() == ((2,) if "FULL" in setting else (1,))


def test_the_gateway_client_speaks_mqtt_311_as_its_user_with_the_offline_flag_as_last_will():
    client = gateway_client(BrokerConfig(username="gw", password="pw"), "t")
    assert client.protocol == mqtt.MQTTv311 and client.username == "gw" and client.password == "pw"
    assert client.will_topic == D.gateway_online_topic("t")
    assert json.loads(client.will_payload)["online"] is False
    assert client.max_inflight_messages == 0  # bounded by what the gateway reads, not by paho


def test_survivors_of_a_full_collection_are_frozen():
    before = gc.get_freeze_count()
    try:
        S.freeze_survivors("stop", {"generation": 1, "collected": 0, "uncollectable": 0})
        assert gc.get_freeze_count() == before
        S.freeze_survivors("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("journald", [False, True])
def test_log_lines_written_once_per_pass_without_asctime_under_journald(tmp_path, monkeypatch, journald):
    out = open(tmp_path / "log", "w")
    st = os.fstat(out.fileno())
    if journald:  # what systemd sets when the stream is connected to the journal
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    else:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    handler = logging.StreamHandler(out)
    fmt = logging.Formatter(LOG_FORMAT)
    handler.setFormatter(fmt)
    root = logging.getLogger()
    root.addHandler(handler)
    logs = LogBatch()
    try:
        logs.install()
        log = logging.getLogger("recarga.test")
        log.warning("one")
        log.warning("two")
        assert (tmp_path / "log").read_text() == ""  # nothing written per line
        logs.drain()
        lines = (tmp_path / "log").read_text().splitlines()
        assert [line.split(" ", 0 if journald else 2)[-1] for line in lines] == [
            "WARNING recarga.test: one", "WARNING recarga.test: two"]
        log.warning("three")
        logs.uninstall()  # drains, and gives the handler back as it was
        assert (tmp_path / "log").read_text().splitlines()[-1].endswith("WARNING recarga.test: three")
        assert handler.stream is out and handler.formatter is fmt
    finally:
        root.removeHandler(handler)
        out.close()


def test_the_once_a_second_timestamp_is_the_one_logging_writes():
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    ours, theirs = SecondFormatter(fmt), logging.Formatter(fmt)
    for created in (1763700000.0, 1763700000.25, 1763700000.999, 1763700001.5, 1763700100.0, 1763700000.5):
        record = logging.LogRecord("recarga.t", logging.INFO, __file__, 1, "m %d", (1,), None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.format(record) == theirs.format(record)


def test_a_read_only_database_exits_with_the_status_the_unit_does_not_restart_on(service, message, monkeypatch,
                                                                                 tmp_path, caplog):
    assert service.handle([message(ONLINE, W.online_message(True), 1)])
    read_only = sqlite3.connect(f"file:{service.store.path}?mode=ro", uri=True)

    def broken(results, *encoded):
        read_only.execute("CREATE TABLE t (x)")  # SQLite's own "attempt to write a readonly database"

    monkeypatch.setattr(service.store, "commit_all", broken)
    service.process([message(ONLINE, W.online_message(True), 2)])
    try:
        with pytest.raises(SystemExit) as e:
            service.commit()
    finally:
        read_only.close()
    assert e.value.code == S.EXIT_DB_UNUSABLE == 78  # deploy/recarga-gateway.service: RestartPreventExitStatus
    assert "SQLITE_READONLY" in caplog.text and "a restart would not mend it" in caplog.text
    assert acks(service.client.events) == ["ack 1"]


@pytest.mark.parametrize(("setting", "site_of_u2"), [("", "u1"), ("site_distance_m = 0", "u2")])
def test_the_service_groups_its_stations_at_the_configured_site_distance(make_service, tmp_path, setting,
                                                                         site_of_u2):
    from recarga.core.model import SlotMeta, StationMeta
    from recarga.core.stations import dump_stations_json

    ac = (SlotMeta(22.0, False),)  # two units of one operator about 20 m apart
    dump_stations_json([StationMeta("u1", 52.52, 13.405, ac, operator="Op"),
                        StationMeta("u2", 52.52018, 13.405, ac, operator="Op")], tmp_path / "st.json")
    svc = make_service(setting)
    assert svc.engine.stations["u2"].site == site_of_u2  # 0: every device its own site
