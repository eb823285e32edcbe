"""Central's imperative shell: paho-mqtt in, overflow rules, SQLite, paho-mqtt out.

paho's network thread only queues inbound messages. One worker thread takes every message
waiting (up to MAX_BATCH), and in one `BEGIN IMMEDIATE` transaction reads the rows each one
concerns, runs the rules (central/engine.py) and writes the outcome; after COMMIT it
publishes and only then acknowledges the batch (manual_ack). A crash before the ack means
the broker delivers the messages again and the stored rows give the same answers.

Several instances share the work through shared subscriptions ($share/central/...) and
may share the database file; summaries go to every instance (not shared).
"""
from __future__ import annotations

import logging
import os
import queue
import socket
import sqlite3
import threading
import time
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from recarga.central.config import CentralConfig
from recarga.central.engine import Decision, Overflow
from recarga.central.store import Store
from recarga.central.view import NetworkView
from recarga.core.mqtt_tls import client_context
from recarga.core.protocol import central as PC
from recarga.core.protocol import wire as W
from recarga.core.service_manager import ServiceManager

log = logging.getLogger("recarga.central")

MAX_BATCH = 128
INBOX_SIZE = 4096  # paho's thread waits when full: backpressure
EXIT_DB_FAILURE = 70  # EX_SOFTWARE: systemd restarts us; unacknowledged work is redelivered
PRUNE_AFTER_S = 7 * 86400  # finished requests and holds are kept this long for `holds`


class CentralService:
    """One central instance: run() connects and serves until stop(). `service_manager` hears
    when it is ready and gets the worker loop's watchdog pets (systemd; silent by default)."""

    def __init__(self, cfg: CentralConfig, clock: Callable[[], float] = time.time,
                 service_manager: ServiceManager | None = None):
        self.cfg = cfg
        self.service_manager = service_manager or ServiceManager()
        self.clock = clock
        self.store = Store(cfg.database, cfg.synchronous)
        o = cfg.overflow
        self.view = NetworkView(o.selection, o.policy, o.summary_max_age_s, o.max_wait_s)
        for s in self.store.summaries():  # usable before the retained ones arrive again
            self.view.apply(s.region, s.shard, s)
        self.rules = Overflow(o, cfg.regions, self.view)
        self.inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue(INBOX_SIZE)
        self.stopping = threading.Event()
        self.connected = threading.Event()
        self._next_tick = 0.0
        self._pruned = 0.0
        self.online_topic = PC.central_online_topic(cfg.instance)
        b = cfg.broker
        # the broker uses the user name as client id (its MQTT 5 session is keyed by it)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=b.username,
                                  protocol=mqtt.MQTTv5, manual_ack=True)
        self.client.username_pw_set(b.username, b.password)
        if b.tls_ca is not None:
            self.client.tls_set_context(client_context(b.tls_ca))
        self.client.will_set(self.online_topic, W.online_message(False), qos=W.QOS, retain=True)
        self.client.reconnect_delay_set(b.reconnect_min_s, b.reconnect_max_s)
        self.client.max_inflight_messages_set(200)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda client, userdata, msg: self.inbox.put(msg)
        log.info("central instance %s: %d regions configured, %d with a stored summary", cfg.instance,
                 len(cfg.regions), len(self.view.fresh_regions(clock())))

    # ------------------------------------------------------------ paho callbacks

    def _on_connect(self, client: mqtt.Client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused connection: %s", reason_code)
            return
        sock = client.socket()
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe([(t, W.QOS) for t in PC.central_subscriptions()])
        client.publish(self.online_topic, W.online_message(True), qos=W.QOS, retain=True)
        self.connected.set()
        log.info("connected to %s:%d", self.cfg.broker.host, self.cfg.broker.port)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [rc for rc in reason_codes if rc.is_failure]
        if refused:
            log.error("broker refused %d of our subscriptions: %s", len(refused), refused)
        else:
            log.info("subscribed: serving overflow")
            b = self.cfg.broker
            self.service_manager.ready(f"instance {self.cfg.instance} serving overflow on {b.host}:{b.port}")

    def _on_connect_fail(self, client: mqtt.Client, userdata) -> None:
        # paho keeps the cause (refused, unreachable, TLS verification) to itself
        b = self.cfg.broker
        log.warning("cannot connect to broker %s:%d%s; paho retries with backoff", b.host, b.port,
                    f" (TLS, CA {b.tls_ca})" if b.tls_ca is not None else "")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if not self.stopping.is_set():
            log.warning("disconnected from broker (%s); paho reconnects with backoff", reason_code)
            self.service_manager.status(f"disconnected from the broker ({reason_code}); reconnecting")

    # ------------------------------------------------------------ the worker thread

    def _handle(self, msg: mqtt.MQTTMessage, now: float) -> Decision | None:
        """Read the rows the message concerns, decide, write the outcome (inside the batch)."""
        ref = PC.parse_central_topic(msg.topic)
        if ref is None:
            log.warning("message on unexpected topic %s ignored", msg.topic)
            return None
        try:
            if ref.leaf == "summary":
                self._summary(ref, msg.payload)
                return None
            parse, handler = {
                "overflow/request": (PC.parse_overflow_request, self._request),
                "hold/answer": (PC.parse_hold_answer, self._hold_answer),
                "hold/event": (PC.parse_hold_event, self._hold_event),
            }.get(ref.leaf, (None, None))
            if parse is None:
                log.warning("message on %s is not for central, ignored", msg.topic)
                return None
            parsed = parse(ref.region, msg.payload)
        except W.ProtocolError as e:
            # no reply path for a malformed cross-region message: log it, drop it
            log.warning("bad message on %s (%s): %s", msg.topic, e.code, e)
            return None
        decision = handler(parsed, now)
        for row in decision.requests:
            self.store.put_request(row)
        for hold in decision.holds:
            self.store.put_hold(hold)
        return decision

    def _request(self, m: PC.OverflowRequest | PC.OverflowAbandon, now: float) -> Decision:
        return self.rules.on_request(m, self.store.request(m.xid), self.store.hold(m.xid), now)

    def _hold_answer(self, m: PC.HoldAnswer, now: float) -> Decision:
        return self.rules.on_hold_answer(m, self.store.request(m.xid), self.store.hold(m.xid), now)

    def _hold_event(self, m: PC.HoldEvent, now: float) -> Decision:
        return self.rules.on_hold_event(m, self.store.hold(m.xid), now)

    def _summary(self, ref: PC.CentralRef, payload: bytes) -> None:
        summary = PC.parse_summary(ref.region, ref.shard, payload) if payload else None
        was_fresh = ref.region in self.view.fresh_regions(self.clock())
        self.view.apply(ref.region, ref.shard, summary)
        if not was_fresh and ref.region in self.view.fresh_regions(self.clock()):
            log.info("region %s reports its capacity (%d stations)", ref.region, len(self.view.stations(ref.region)))
        self.store.put_summary(ref.region, ref.shard, summary.at if summary else 0.0, payload)

    def _process(self, batch: list[mqtt.MQTTMessage]) -> None:
        now = self.clock()
        decisions: list[Decision] = []
        try:
            with self.store.batch():
                for m in batch:
                    try:
                        d = self._handle(m, now)
                    except sqlite3.Error:
                        raise
                    except Exception:
                        # a bug must not wedge central: this message is logged and dropped
                        log.exception("failed to handle message on %s", m.topic)
                        continue
                    if d is not None:
                        decisions.append(d)
                if now >= self._next_tick:
                    self._next_tick = now + self.cfg.tick_s
                    d = self.rules.tick(self.store.holding_past(now), self.store.held_past(now), now)
                    for row in d.requests:
                        self.store.put_request(row)
                    for hold in d.holds:
                        self.store.put_hold(hold)
            if now - self._pruned > 3600:
                self._pruned = now
                self.store.prune(now - PRUNE_AFTER_S)
        except sqlite3.Error:
            # nothing of this batch is acknowledged, so nothing is lost: restart from the database
            log.critical("database write failed; exiting for a clean restart", exc_info=True)
            logging.shutdown()
            os._exit(EXIT_DB_FAILURE)
        for d in decisions:
            for out in d.publish:
                self.client.publish(out.topic, W.encode(out.payload), qos=W.QOS)
        for m in batch:
            if m.qos > 0:
                self.client.ack(m.mid, m.qos)

    def _work(self) -> None:
        manager = self.service_manager
        while not self.stopping.is_set():
            manager.pet()  # from the loop that does the work: a hung worker stops the pets
            try:
                batch = [self.inbox.get(timeout=min(self.cfg.tick_s, manager.until_pet()))]
            except queue.Empty:
                batch = []
            while batch and len(batch) < MAX_BATCH:
                try:
                    batch.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            self._process(batch)

    # ------------------------------------------------------------ lifecycle

    def run(self, ready: Callable[[], None] | None = None) -> None:
        """Connect and serve until stop() (or SIGTERM via the CLI)."""
        b = self.cfg.broker
        worker = threading.Thread(target=self._work, name="central", daemon=True)
        worker.start()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = b.session_expiry_s
        self.client.connect_async(b.host, b.port, keepalive=b.keepalive, clean_start=False, properties=props)
        self.client.loop_start()
        if ready is not None:
            ready()
        try:
            while not self.stopping.wait(1.0) and worker.is_alive():
                pass
        finally:
            self.stopping.set()
            self.service_manager.stopping()
            worker.join(5)
            if self.connected.is_set():
                info = self.client.publish(self.online_topic, W.online_message(False), qos=W.QOS, retain=True)
                try:
                    info.wait_for_publish(2)
                except (RuntimeError, ValueError):
                    pass  # going away anyway; the Last Will covers it
            self.client.disconnect()
            self.client.loop_stop()
            self.store.close()
            log.info("stopped")

    def stop(self) -> None:
        self.stopping.set()
