"""GatewayService without a broker: the database-failure path (no ack, clean exit)."""
from __future__ import annotations

import gc
import json
import logging
import os
import socket
import sqlite3
import struct
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from recarga.core import protocol as P
from recarga.core.model import SlotMeta, StationMeta
from recarga.core.stations import dump_stations_json
from recarga.gateway import config as C
from recarga.gateway import service as S
from recarga.gateway.logbatch import LogBatch, SecondFormatter
from recarga.gateway.mqtt_client import GatewayClient, InboundMessage


@pytest.fixture
def service(tmp_path):
    dump_stations_json([StationMeta("s1", 52.52, 13.40, (SlotMeta(22.0, False),))], tmp_path / "st.json")
    # the fsync on a thread of its own: what most of these tests are about
    (tmp_path / "gw.toml").write_text('region = "t"\ndatabase = "gw.db"\nstations = "st.json"\nsync_thread = true\n')
    svc = S.GatewayService(C.load(tmp_path / "gw.toml"))
    yield svc
    svc._syncer.stop()
    svc.store.close()


def message(topic: str, payload: bytes, mid: int) -> mqtt.MQTTMessage:
    m = mqtt.MQTTMessage(mid, topic.encode())
    m.payload, m.qos = payload, 1
    return m


def process(svc: S.GatewayService, batch: list) -> None:
    """One batch through the engine, the store, the syncer thread, and out (publish, ack)."""
    svc._process(batch)
    assert svc._settle(), "the syncer did not finish"


class Exited(Exception):
    pass


def fake_exit(code):
    raise Exited(code)


def test_database_failure_exits_without_acknowledging(service, monkeypatch):
    acked: list[int] = []
    monkeypatch.setattr(service.client, "ack", lambda mid, qos: acked.append(mid))
    monkeypatch.setattr(service.client, "publish", lambda *a, **k: None)
    process(service, [message(P.station_topic("t", "s1", "online"), P.online_message(True), 1)])

    def broken(results, *encoded):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(service.store, "commit_all", broken)
    monkeypatch.setattr(S.os, "_exit", fake_exit)
    service._process([message(P.station_topic("t", "s1", "online"), P.online_message(True), 2)])
    with pytest.raises(Exited) as e:
        service._commit()
    assert e.value.args == (S.EXIT_DB_FAILURE,)
    service._settle(1)
    assert acked == [1]


def test_a_failed_fsync_exits_without_acknowledging_what_it_was_to_cover(service, monkeypatch):
    acked: list[int] = []
    monkeypatch.setattr(service.client, "ack", lambda mid, qos: acked.append(mid))
    monkeypatch.setattr(service.client, "publish", lambda *a, **k: None)

    def broken():
        raise OSError(5, "Input/output error")

    exits: list[int] = []
    monkeypatch.setattr(service.store, "sync", broken)
    monkeypatch.setattr(S.os, "_exit", exits.append)  # in the syncer thread, which then ends
    service._process([message(P.station_topic("t", "s1", "online"), P.online_message(True), 1)])
    service._commit()
    service._syncer._thread.join(10)
    service._release()
    assert exits == [S.EXIT_DB_FAILURE] and acked == []


def test_batch_is_committed_before_it_is_acknowledged(service, monkeypatch):
    events: list[str] = []
    monkeypatch.setattr(service.client, "ack", lambda mid, qos: events.append(f"ack {mid}"))
    monkeypatch.setattr(service.client, "publish", lambda topic, *a, **k: events.append(f"pub {topic}"))
    real = service.store.commit_all
    monkeypatch.setattr(service.store, "commit_all", lambda *a: (events.append("commit"), real(*a)))
    batch = [message(P.station_topic("t", "s1", "online"), P.online_message(True), 1),
             message(P.station_topic("t", "s1", "status"), P.encode(P.station_status(["free"])), 2),
             message(P.car_topic("t", "c1", "request"), b"{bad", 3)]
    process(service, batch)
    assert events[0] == "commit" and events[-2:] == ["ack 1", "ack 2", "ack 3"][-2:]
    assert events.index("commit") < events.index(f"pub {P.car_topic('t', 'c1', 'reply')}") < events.index("ack 1")
    assert service.store.stations_live()["s1"].slots == ["free"]


def test_the_stored_reply_is_the_published_text(service, monkeypatch):
    published: dict[str, bytes] = {}
    monkeypatch.setattr(service.client, "ack", lambda mid, qos: None)
    monkeypatch.setattr(service.client, "publish", lambda topic, payload, **k: published.setdefault(topic, payload))
    request = P.encode(P.reserve_request("q1", "c1", lat=52.521, lon=13.401, soc=0.2, battery_kwh=58,
                                         consumption_kwh_100km=16.6, max_ac_kw=11, max_dc_kw=0, target_soc=0.8))
    process(service, [message(P.station_topic("t", "s1", "online"), P.online_message(True), 1),
                      message(P.station_topic("t", "s1", "status"), P.encode(P.station_status(["free"])), 2),
                      message(P.car_topic("t", "c1", "request"), request, 3)])
    reply = published[P.car_topic("t", "c1", "reply")]
    assert json.loads(reply)["ok"] is True
    [(stored,)] = service.store.db.execute("SELECT reply FROM requests WHERE rid = 'q1'").fetchall()
    assert stored.encode() == reply


@pytest.mark.parametrize("journald", [False, True])
def test_log_lines_written_once_per_pass_without_asctime_under_journald(tmp_path, monkeypatch, journald):
    out = open(tmp_path / "log", "w")
    st = os.fstat(out.fileno())
    if journald:  # what systemd sets when the stream is connected to the journal
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    else:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    handler = logging.StreamHandler(out)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
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


# ------------------------------------------------------------------ the paho client's shortcuts

def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, b = n >> 7, n & 127
        out.append(b | (128 if n else 0))
        if not n:
            return bytes(out)


def mqtt_publish(topic: str | bytes, payload: bytes, mid: int, qos: int = 1, retain: bool = False) -> bytes:
    """A PUBLISH packet as the broker sends it (MQTT 3.1.1)."""
    name = topic.encode() if isinstance(topic, str) else topic
    var = struct.pack("!H", len(name)) + name + (struct.pack("!H", mid) if qos else b"") + payload
    return bytes([0x30 | qos << 1 | retain]) + remaining_length(len(var)) + var


def read_all(client: GatewayClient) -> None:
    client.loop_read()
    while client.pending():
        client.loop_read()


@pytest.fixture
def wired():
    """A GatewayClient on one end of a socket pair, as if connected; the test is the broker."""
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client = GatewayClient(mqtt.CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv311,
                       clean_session=False, manual_ack=True)
    client.max_inflight_messages_set(0)
    got: list[mqtt.MQTTMessage] = []
    client.on_message = lambda c, u, m: got.append(m)
    client._sock = ours  # what reconnect() would have opened
    client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED
    yield client, broker, got
    ours.close()
    broker.close()


def test_packets_arriving_together_are_all_read_from_one_recv(wired):
    client, broker, got = wired
    broker.sendall(b"".join(mqtt_publish(f"t/{i}", b"x" * i, i + 1) for i in range(5)))
    assert client.loop_read() == mqtt.MQTT_ERR_SUCCESS  # paho reads 1 packet: nothing in flight
    assert len(got) == 1 and client.pending() > 0  # the rest is buffered, no selector sees it
    while client.pending():
        client.loop_read()
    assert [(m.topic, m.payload, m.mid, m.qos) for m in got] == [(f"t/{i}", b"x" * i, i + 1, 1) for i in range(5)]


def test_a_packet_split_across_reads_is_put_together(wired):
    client, broker, got = wired
    packet = mqtt_publish("t/split", b"payload", 7)
    broker.sendall(packet[:5])
    assert client.loop_read() == mqtt.MQTT_ERR_SUCCESS and got == []
    broker.sendall(packet[5:] + mqtt_publish("t/next", b"", 8))
    client.loop_read()
    while client.pending():
        client.loop_read()
    assert [(m.topic, m.payload) for m in got] == [("t/split", b"payload"), ("t/next", b"")]


def test_puback_releases_the_acknowledged_message(wired):
    client, broker, _ = wired
    infos = [client.publish(f"t/{i}", b"x", qos=1) for i in range(3)]
    broker.recv(4096)
    broker.sendall(struct.pack("!BBH", 0x40, 2, infos[1].mid) + struct.pack("!BBH", 0x40, 2, 999))
    client.loop_read()
    while client.pending():
        client.loop_read()
    assert [i.is_published() for i in infos] == [False, True, False]  # an unknown mid is ignored
    broker.sendall(b"".join(struct.pack("!BBH", 0x40, 2, i.mid) for i in (infos[0], infos[2])))
    client.loop_read()
    while client.pending():
        client.loop_read()
    assert all(i.is_published() for i in infos)


def test_large_qos0_retained_and_byte_by_byte_packets_read_alike(wired):
    """The fast reader (a whole packet in the buffer) and paho's (a packet still arriving)
    give the same messages: multi-byte lengths, QoS 0, the retain flag."""
    client, broker, got = wired
    big = bytes(range(256)) * 80  # 20 KB: a 3-byte remaining length
    packets = [mqtt_publish("t/big", big, 1), mqtt_publish("t/q0", b"zero", 0, qos=0),
               mqtt_publish("t/kept", b"r", 2, retain=True)]
    broker.sendall(b"".join(packets))
    read_all(client)
    for p in packets:  # again, one byte at a time: paho's reader puts each together
        for k in range(len(p)):
            broker.sendall(p[k:k + 1])
            client.loop_read()
    seen = [(m.topic, m.payload, m.qos, m.mid, m.retain) for m in got]
    expected = [("t/big", big, 1, 1, False), ("t/q0", b"zero", 0, 0, False), ("t/kept", b"r", 1, 2, True)]
    assert seen == expected * 2
    assert isinstance(got[0], InboundMessage) and not isinstance(got[-1], InboundMessage)


def test_a_topic_that_is_not_utf8_goes_to_paho_which_reports_it(wired):
    client, broker, got = wired
    broker.sendall(mqtt_publish(b"t/\xff", b"x", 1) + mqtt_publish("t/ok", b"y", 2))
    read_all(client)
    assert len(got) == 2 and got[1].topic == "t/ok"
    with pytest.raises(UnicodeDecodeError):
        got[0].topic  # paho's MQTTMessage: the topic raises when read


def test_reading_a_packet_counts_for_the_keepalive(wired):
    client, broker, got = wired
    client._last_bytes_received = 0.0
    broker.sendall(mqtt_publish("t/1", b"x", 1) * 2)
    read_all(client)
    assert len(got) == 2 and time.monotonic() - client._last_bytes_received < 5


def parse_publishes(data: bytes) -> list[tuple[str, int, bytes]]:
    """(topic, mid, payload) of each QoS 1 PUBLISH in a byte stream."""
    out, i = [], 0
    while i < len(data):
        assert data[i] & 0xF0 == 0x30
        j, length, shift = i + 1, 0, 0
        while True:
            b = data[j]
            j += 1
            length |= (b & 127) << shift
            shift += 7
            if b < 128:
                break
        tlen = struct.unpack_from("!H", data, j)[0]
        mid = struct.unpack_from("!H", data, j + 2 + tlen)[0]
        out.append((data[j + 2:j + 2 + tlen].decode(), mid, data[j + 4 + tlen:j + length]))
        i = j + length
    return out


def test_queued_packets_go_out_together_and_a_full_socket_resumes_where_it_stopped(wired):
    client, broker, _ = wired
    client.on_socket_register_write = lambda c, u, s: None
    client.on_socket_unregister_write = lambda c, u, s: None
    infos = [client.publish(f"t/{i}", bytes([i % 256]) * 1000, qos=1) for i in range(3000)]  # ~3 MB
    received = bytearray()
    broker.setblocking(False)
    rounds = 0
    while client.want_write():
        assert client.loop_write() == mqtt.MQTT_ERR_SUCCESS
        rounds += 1
        try:
            while chunk := broker.recv(1 << 20):
                received += chunk
        except BlockingIOError:
            pass
    assert rounds > 1  # the socket filled up at least once
    try:
        while chunk := broker.recv(1 << 20):
            received += chunk
    except BlockingIOError:
        pass
    assert parse_publishes(bytes(received)) == [(f"t/{i}", infos[i].mid, bytes([i % 256]) * 1000)
                                                 for i in range(3000)]


def test_end_of_stream_is_a_lost_connection(wired):
    client, broker, _ = wired
    broker.close()
    assert client.loop_read() == mqtt.MQTT_ERR_CONN_LOST


def test_inbound_messages_leave_no_reference_cycles(wired):
    """paho's topic-filter matching builds a reference cycle per message; _Client skips it
    when no filter is registered, so the cyclic GC has nothing to find."""
    client, broker, got = wired
    gc.collect()
    gc.disable()
    try:
        broker.sendall(b"".join(mqtt_publish(f"t/{i}", b"x", i + 1) for i in range(50)))
        client.loop_read()
        while client.pending():
            client.loop_read()
        assert len(got) == 50
        got.clear()
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_topic_filtered_callbacks_still_get_their_messages(wired):
    client, broker, got = wired
    filtered: list[str] = []
    client.message_callback_add("f/#", lambda c, u, m: filtered.append(m.topic))
    broker.sendall(mqtt_publish("f/1", b"x", 1) + mqtt_publish("t/1", b"y", 2))
    client.loop_read()
    while client.pending():
        client.loop_read()
    assert filtered == ["f/1"] and [m.topic for m in got] == ["t/1"]


def test_survivors_of_a_full_collection_are_frozen():
    before = gc.get_freeze_count()
    try:
        S._freeze_survivors("stop", {"generation": 1, "collected": 0, "uncollectable": 0})
        assert gc.get_freeze_count() == before
        S._freeze_survivors("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()


def test_the_loop_goes_on_while_an_fsync_waits_and_stops_reading_at_the_backlog(service, monkeypatch):
    """A slow disk does not stop the loop: the next batches are decided meanwhile, then
    committed together and covered by one fsync; only MAX_BACKLOG messages wait, then
    reading stops."""
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

    acked: list[int] = []
    monkeypatch.setattr(service.store, "sync", slow)
    monkeypatch.setattr(service.store, "commit_all", commit)
    monkeypatch.setattr(service.client, "ack", lambda mid, qos: acked.append(mid))
    monkeypatch.setattr(service.client, "publish", lambda *a, **k: None)
    service._next_tick = float("inf")
    online = P.online_message(True)
    for mid in range(1, 4):  # three batches while the first fsync hangs
        service._batch.append(message(P.station_topic("t", "s1", "online"), online, mid))
        service._step(0.0)
        assert entered.wait(10)
    assert acked == [] and commits == [1]  # the other two wait for the fsync to end
    assert service._syncer.backlog + service._uncommitted.messages == 3
    monkeypatch.setattr(S, "MAX_BACKLOG", 3)
    service._batch.append(message(P.station_topic("t", "s1", "online"), online, 4))
    t0 = time.monotonic()
    service._step(0.2)  # the backlog is full: it waits for the syncer, not the batch
    assert time.monotonic() - t0 >= 0.15 and service._batch and acked == []
    gate.set()
    assert service._settle()
    assert acked == [1, 2, 3] and commits == [1, 2] and synced == [1, 2]  # the other two in one transaction


@pytest.mark.parametrize("setting", ['synchronous = "NORMAL"', 'synchronous = "FULL"'])
def test_without_a_sync_thread_a_batch_goes_out_in_the_pass_that_decided_it(tmp_path, monkeypatch, setting):
    """NORMAL, or FULL with its fsync inside the commit (the default): the pass that commits a
    batch publishes and acknowledges it (a tick's expiry must not wait for the next message
    to wake the loop); with FULL, SQLite fsyncs inside that commit."""
    dump_stations_json([StationMeta("s1", 52.52, 13.40, (SlotMeta(22.0, False),))], tmp_path / "st.json")
    (tmp_path / "gw.toml").write_text(f'region = "t"\ndatabase = "gw.db"\nstations = "st.json"\n{setting}\n')
    svc = S.GatewayService(C.load(tmp_path / "gw.toml"))
    try:
        assert not svc.store.deferred_sync
        acked: list[int] = []
        monkeypatch.setattr(svc.client, "ack", lambda mid, qos: acked.append(mid))
        monkeypatch.setattr(svc.client, "publish", lambda *a, **k: None)
        svc._batch.append(message(P.station_topic("t", "s1", "online"), P.online_message(True), 1))
        svc._step(0.0)
        assert acked == [1] and svc._syncer._thread is None
        assert svc.store.db.execute("PRAGMA synchronous").fetchone() == ((2,) if "FULL" in setting else (1,))
    finally:
        svc._syncer.stop()
        svc.store.close()
