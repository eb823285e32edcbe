"""The gateway's imperative shell: paho-mqtt in, engine, SQLite, paho-mqtt out.

One lock serialises the engine between paho's network thread (messages) and the main
thread (ticks). Per inbound QoS 1 message: engine -> store commit -> publish -> ack, so an
acknowledged request is always on disk and a redelivered one is answered from the store.
"""
from __future__ import annotations

import logging
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
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.connected = threading.Event()
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
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(100)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
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
        # renewed on every connect: a broker that lost its session state still delivers
        client.subscribe([(t, P.QOS) for t in P.gateway_subscriptions(self.region)])
        client.publish(P.gateway_online_topic(self.region), P.online_message(True), qos=P.QOS, retain=True)
        self.connected.set()
        log.info("connected to %s:%d", self.cfg.broker.host, self.cfg.broker.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if not self.stopping.is_set():
            log.warning("disconnected from broker (%s); paho reconnects with backoff", reason_code)

    def _on_message(self, client: mqtt.Client, userdata, msg: mqtt.MQTTMessage) -> None:
        ref = P.parse_topic(self.region, msg.topic)
        handler = self._handlers.get((ref.kind, ref.leaf)) if ref else None
        try:
            if handler is None:
                log.warning("message on unexpected topic %s ignored", msg.topic)
            else:
                with self.lock:
                    self._apply(handler(ref.id, msg.payload, self.clock()))
        except sqlite3.Error:
            # not on disk, so not acknowledged: the broker redelivers it after a reconnect
            log.exception("database write failed for %s; message left unacknowledged", msg.topic)
            return
        except Exception:
            # a bug must not take the region down; the message is logged and dropped
            log.exception("failed to handle message on %s", msg.topic)
        if msg.qos > 0:
            client.ack(msg.mid, msg.qos)

    def _apply(self, result: Result) -> None:
        self.store.commit(result.changed, result.request, result.station)
        for m in result.messages:
            self.client.publish(m.topic, P.encode(m.payload), qos=P.QOS, retain=m.retain)

    # ------------------------------------------------------------ lifecycle

    def tick(self) -> None:
        with self.lock:
            now = self.clock()
            self._apply(self.engine.tick(now))
            if now - self._pruned > 3600:
                self._pruned = now
                self.store.prune_requests(now - self.cfg.engine.request_memory_s)

    def run(self, ready: Callable[[], None] | None = None) -> None:
        """Connect and serve until stop() (or SIGTERM via the CLI)."""
        b = self.cfg.broker
        self.client.connect_async(b.host, b.port, keepalive=b.keepalive)
        self.client.loop_start()
        if ready is not None:
            ready()
        try:
            while not self.stopping.wait(self.cfg.tick_s):
                try:
                    self.tick()
                except Exception:
                    log.exception("tick failed")
        finally:
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
