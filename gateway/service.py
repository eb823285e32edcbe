"""The gateway's imperative shell: paho-mqtt in, engine, SQLite, paho-mqtt out.

paho's network thread only queues inbound messages. One worker thread owns the engine and
the store: it takes every message waiting (up to `MAX_BATCH`), runs each through the
engine, commits all their results in one SQLite transaction (group commit: one fsync for
the batch), then publishes the replies and station commands and only then acknowledges the
inbound messages. So an acknowledged request is always on disk, and one that was not
acknowledged is redelivered by the broker and recognised by its request id.
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

from . import protocol as P
from .config import GatewayConfig
from .engine import Engine, Result
from .stations import load_stations
from .store import Store

log = logging.getLogger("recarga.gateway")

MAX_BATCH = 256  # inbound messages per transaction
INBOX_SIZE = 4096  # paho's thread blocks when this is full: backpressure, not memory growth
EXIT_DB_FAILURE = 70  # EX_SOFTWARE: systemd restarts us; unacknowledged work is redelivered


class GatewayService:
    def __init__(self, cfg: GatewayConfig, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.clock = clock
        self.region = cfg.engine.region
        stations = load_stations(cfg.stations)
        self.store = Store(cfg.database, cfg.synchronous)
        self.engine = Engine(cfg.engine, stations)
        now = clock()
        self.engine.restore(self.store.active(), self.store.requests(now - cfg.engine.request_memory_s),
                            self.store.stations_live())
        self.inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue(INBOX_SIZE)
        self.stopping = threading.Event()
        self.connected = threading.Event()
        self._next_tick = 0.0
        self._pruned = 0.0
        log.info("region %s: %d stations, %d active reservations restored", self.region,
                 len(stations), len(self.engine.reservations))
        b = cfg.broker
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=b.client_id or f"recarga-gateway-{self.region}",
            protocol=mqtt.MQTTv311,
            clean_session=False,  # the broker keeps our QoS 1 backlog while we are away
            manual_ack=True,
        )
        self.client.username_pw_set(b.username, b.password)
        self.client.will_set(P.gateway_online_topic(self.region), P.online_message(False), qos=P.QOS, retain=True)
        self.client.reconnect_delay_set(b.reconnect_min_s, b.reconnect_max_s)
        self.client.max_inflight_messages_set(200)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda client, userdata, msg: self.inbox.put(msg)
        self._handlers = {
            ("car", "request"): self.engine.car_message,
            ("station", "status"): self.engine.station_status,
            ("station", "online"): self.engine.station_online,
            ("station", "meta"): self.engine.station_meta,
        }

    # ------------------------------------------------------------ paho callbacks

    def _on_connect(self, client: mqtt.Client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused connection: %s", reason_code)
            return
        sock = client.socket()
        if sock is not None:  # small replies: no Nagle delay
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # renewed on every connect: a broker that lost its session state still delivers
        client.subscribe([(t, P.QOS) for t in P.gateway_subscriptions(self.region)])
        client.publish(P.gateway_online_topic(self.region), P.online_message(True), qos=P.QOS, retain=True)
        self.connected.set()
        log.info("connected to %s:%d", self.cfg.broker.host, self.cfg.broker.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if not self.stopping.is_set():
            log.warning("disconnected from broker (%s); paho reconnects with backoff", reason_code)

    # ------------------------------------------------------------ the engine thread

    def _handle(self, msg: mqtt.MQTTMessage, now: float) -> Result | None:
        ref = P.parse_topic(self.region, msg.topic)
        handler = self._handlers.get((ref.kind, ref.leaf)) if ref else None
        if handler is None:
            log.warning("message on unexpected topic %s ignored", msg.topic)
            return None
        try:
            return handler(ref.id, msg.payload, now)
        except Exception:
            # a bug must not take the region down: this message is logged and dropped
            log.exception("failed to handle message on %s", msg.topic)
            return None

    def _process(self, batch: list[mqtt.MQTTMessage]) -> None:
        now = self.clock()
        results = [r for r in (self._handle(m, now) for m in batch) if r is not None]
        if now >= self._next_tick:
            self._next_tick = now + self.cfg.tick_s
            results.append(self.engine.tick(now))
            if now - self._pruned > 3600:
                self._pruned = now
                self.store.prune_requests(now - self.cfg.engine.request_memory_s)
        try:
            self.store.commit_all(results)
        except sqlite3.Error:
            # the engine already changed its memory: only a restart from the database is
            # consistent again. Nothing of this batch was acknowledged, so nothing is lost.
            log.critical("database write failed; exiting for a clean restart", exc_info=True)
            logging.shutdown()
            os._exit(EXIT_DB_FAILURE)
        for result in results:
            for m in result.messages:
                self.client.publish(m.topic, P.encode(m.payload), qos=P.QOS, retain=m.retain)
        for msg in batch:
            if msg.qos > 0:
                self.client.ack(msg.mid, msg.qos)

    def _work(self) -> None:
        while not self.stopping.is_set():
            try:
                batch = [self.inbox.get(timeout=self.cfg.tick_s)]
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
        worker = threading.Thread(target=self._work, name="engine", daemon=True)
        worker.start()
        self.client.connect_async(b.host, b.port, keepalive=b.keepalive)
        self.client.loop_start()
        if ready is not None:
            ready()
        try:
            while not self.stopping.wait(1.0) and worker.is_alive():
                pass
        finally:
            self.stopping.set()
            worker.join(5)
            if self.connected.is_set():
                info = self.client.publish(P.gateway_online_topic(self.region), P.online_message(False),
                                           qos=P.QOS, retain=True)
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
