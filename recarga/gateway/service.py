"""The gateway's imperative shell: paho-mqtt in, engine, SQLite, paho-mqtt out, in one thread.

One thread drives paho's external-loop API (loop_read / loop_write / loop_misc) through a
selector on the client's socket (gateway/mqtt_client.py configures the client). The
messages read in one pass over the socket (at most `MAX_BATCH`) are one batch: each runs
through the engine, and the batch's results are committed in one SQLite transaction. Only
once that is on disk are their replies and station commands published and their inbound
messages acknowledged (paho's manual_ack). So an acknowledged request is always on disk,
and one that was not acknowledged is redelivered by the broker and recognised by its request
id. Messages that arrive during a commit wait in the socket and make the next batch: the
batches grow with the load, and so one fsync covers more (group commit). paho, the engine,
the SQL and the loop share one thread: no inbox queue and no GIL hand-over per message or
row.

By default the commit fsyncs (SQLite's synchronous FULL), on the loop's thread. With
`sync_thread` a commit does not wait for the disk: the syncer thread (gateway/syncer.py)
fsyncs the WAL once for all batches committed meanwhile and hands them back for release,
and the loop goes on reading and deciding while an fsync runs, up to MAX_BACKLOG messages not
yet durable; beyond that it stops reading and the broker's in-flight window and TCP hold the
rest back (backpressure). That overlaps deciding with a slow disk's fsync; on a disk whose
fsync takes well under a millisecond the hand-over between the threads costs more latency
than it saves (docs/architecture.md has the figures).
"""
from __future__ import annotations

import gc
import logging
import os
import select
import selectors
import socket
import sqlite3
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.core.service_manager import ServiceManager
from recarga.core.stations import load_stations
from recarga.gateway import admin
from recarga.gateway.config import GatewayConfig
from recarga.gateway.engine import Engine, Result
from recarga.gateway.logbatch import LogBatch
from recarga.gateway.mqtt_client import ClientFactory, gateway_client
from recarga.gateway.overflow_link import OverflowLink
from recarga.gateway.store import Store, encode_json, is_permanent
from recarga.gateway.syncer import Job, Syncer

log = logging.getLogger("recarga.gateway")

MAX_BATCH = 256  # inbound messages per engine pass: bounds the wait of a batch's first message
MAX_BACKLOG = 1024  # messages committed but not yet durable before the loop stops reading
EXIT_DB_FAILURE = 70  # EX_SOFTWARE: systemd restarts us; unacknowledged work is redelivered
EXIT_DB_UNUSABLE = 78  # EX_CONFIG: a restart would not mend it; the unit does not restart on it
MISC_S = 1.0  # how often paho's keepalive bookkeeping (loop_misc) runs
CATCH_UP_MAX_S = 30.0  # expiry waits at most this long after a connect for the catch-up marker
SWITCH_INTERVAL_S = 0.0005  # see run()
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_TOPIC_CACHE_MAX = 100_000  # parsed topics remembered (a region's cars and stations)

Handler = Callable[[str, bytes, float], Result | None]


def freeze_survivors(phase: str, info: dict[str, int]) -> None:
    """A gc callback: after a full collection, what it kept is alive, so freeze it (gc.freeze()
    moves it to the permanent generation, which collections skip). The next full collection
    then scans only what came since, not again every request record of the last day, which
    stopped the loop for tens of ms. Frozen objects are still freed by reference counting.
    The only reference cycles the loop makes are short-lived ones in paho (its topic matcher
    builds one per inbound message), which the young collections take; one alive at the
    moment of a freeze stays, a few hundred bytes once per full collection at most."""
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()


def _tls_pending(sock: Any) -> bool:
    """Whether a TLS socket holds decrypted bytes not yet read (a plain socket never does)."""
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


@dataclass(slots=True)
class _Uncommitted:
    """Batches decided and not yet committed (while an fsync runs), in order."""

    results: list[Result] = field(default_factory=list)
    texts: dict[int, str] = field(default_factory=dict)  # JSON of reply dicts by id(): stored as published
    out: list[tuple[str, bytes, bool]] = field(default_factory=list)  # to publish once durable
    acks: list[int] = field(default_factory=list)
    messages: int = 0
    prune: float | None = None  # forget request ids answered before this (epoch s)

    @property
    def empty(self) -> bool:
        return not (self.results or self.acks or self.out)


class GatewayService:
    """One region's gateway: run() connects and serves until stop().

    The loop's parts are public for a maintainer's replay and for tests, which drive a service
    whose loop is not running: process() decides a batch, commit() stores it, release()
    publishes and acknowledges what is durable; handle() is the three for one batch, step()
    one pass of the loop. `client_factory` makes the paho client (the service sets its
    callbacks); `exit_process` ends the process after a database failure; `service_manager`
    hears when it is ready and gets the loop's watchdog pets (systemd; silent by default).
    """

    def __init__(self, cfg: GatewayConfig, clock: Callable[[], float] = time.time,
                 client_factory: ClientFactory = gateway_client,
                 exit_process: Callable[[int], Any] = os._exit,
                 service_manager: ServiceManager | None = None):
        self.cfg = cfg
        self.service_manager = service_manager or ServiceManager()
        self.clock = clock
        self.region = cfg.engine.region
        self._exit_process = exit_process
        stations = load_stations(cfg.stations, cfg.site_distance_m)
        self.store = Store(cfg.database, cfg.synchronous, deferred_sync=cfg.sync_thread)
        self.engine = Engine(cfg.engine, stations)
        now = clock()
        self.engine.restore(self.store.active(), self.store.requests(now - cfg.engine.request_memory_s),
                            self.store.stations_live(), self.store.slots_out_of_service())
        self.stopping = threading.Event()
        self._connected = False
        self._next_tick = 0.0
        self._pruned = 0.0
        self._command_seen = 0  # the last operator command handed to the engine (gateway/admin.py)
        self._batch: list[mqtt.MQTTMessage] = []
        self._topics: dict[str, tuple[Handler, str] | None] = {}
        self._logs = LogBatch()
        # the selector: the broker socket while there is one, and a wake-up pair for stop()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, READ)
        self._wake_sel = selectors.DefaultSelector()  # the wake-up pair alone, while the backlog is full
        self._wake_sel.register(self._wake_r, READ)
        self._peek = select.poll()  # the broker socket alone: is there more to read, without waiting
        self._syncer = Syncer(self.store, self._wake, self._db_failed)
        self._uncommitted = _Uncommitted()
        self._sock: Any = None
        self._writing = False  # the selector watches the socket for writability
        self._delay: float | None = None  # reconnect backoff; None after a successful connect
        self._reconnect_at = 0.0  # time.monotonic() of the next connection attempt
        # Catching up (docs/architecture.md): after each connect the gateway publishes a marker
        # to itself and expires nothing until it is back, or CATCH_UP_MAX_S passed
        self._sync_topic = D.gateway_sync_topic(self.region)
        self._sync_token: str | None = None  # the marker of this connection, until it is back
        self._connected_at = 0.0  # clock s of the last connect: expiry starts CATCH_UP_MAX_S later at most
        self._caught_up = False
        self._subscribed = False  # the broker granted every subscription of this connection
        log.info("region %s: %d stations, %d active reservations restored", self.region,
                 len(stations), len(self.engine.reservations))
        log.info("database %s: synchronous %s%s", cfg.database, cfg.synchronous,
                 ", fsync on the sync thread" if self.store.deferred_sync else "")
        self.client = client_factory(cfg.broker, self.region)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda client, userdata, msg: self._batch.append(msg)
        self.client.on_socket_open = self._on_socket_open
        self.client.on_socket_close = self._on_socket_close
        # with these set paho queues what it sends instead of writing it at once; _flush()
        # writes everything a batch produced together
        self.client.on_socket_register_write = lambda client, userdata, sock: None
        self.client.on_socket_unregister_write = lambda client, userdata, sock: None
        # overflow to other regions (gateway/overflow_link.py): a few hooks below, None when off
        self.overflow = OverflowLink(self.engine, cfg.overflow) if cfg.overflow.enabled else None
        self._handlers: dict[tuple[str, str], Handler] = {
            ("car", "request"): self.overflow.car_message if self.overflow else self.engine.car_message,
            ("station", "status"): self._station_status,
            ("station", "online"): self.engine.station_online,
            ("station", "meta"): self.engine.station_meta,
        }

    @property
    def backlog(self) -> int:
        """Inbound messages decided and not yet durable (uncommitted, or waiting for an fsync)."""
        return self._syncer.backlog + self._uncommitted.messages

    @property
    def next_tick(self) -> float:
        """When (clock s) the loop next runs the engine without a message: its tick, or sooner
        an overflow request's deadline."""
        return self._next_tick

    # ------------------------------------------------------------ paho callbacks

    def _on_socket_open(self, client: mqtt.Client, userdata, sock) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small replies: no Nagle delay
        self._sock, self._writing = sock, False
        self._sel.register(sock, READ)
        self._peek.register(sock, select.POLLIN)

    def _on_socket_close(self, client: mqtt.Client, userdata, sock) -> None:
        if self._sock is sock:
            self._sel.unregister(sock)
            self._peek.unregister(sock)
            self._sock, self._writing = None, False
            self._caught_up, self._sync_token = False, None  # until the next connect's marker is back
            self._schedule_reconnect()

    def _on_connect(self, client: mqtt.Client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused connection: %s", reason_code)
            return
        self._delay = None
        # renewed on every connect: a broker that lost its session state still delivers
        topics = D.gateway_subscriptions(self.region) + (self.overflow.subscriptions() if self.overflow else [])
        client.subscribe([(t, W.QOS) for t in topics])
        # The broker queues the retained messages for these subscriptions, after the session's
        # queued ones, before anything published after the SUBSCRIBE: once this marker comes
        # back, the gateway has read everything the broker held for it.
        self._caught_up, self._sync_token, self._subscribed = False, os.urandom(8).hex(), False
        self._connected_at = self.clock()
        self.engine.stale_statuses = 0
        client.publish(self._sync_topic, W.encode(D.sync_message(self._sync_token)), qos=W.QOS)
        client.publish(D.gateway_online_topic(self.region), W.online_message(True), qos=W.QOS, retain=True)
        self._connected = True
        log.info("connected to %s:%d", self.cfg.broker.host, self.cfg.broker.port)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [rc for rc in reason_codes if rc.is_failure]
        if refused:
            log.error("broker refused %d of our subscriptions: %s", len(refused), refused)
        self._subscribed = not refused

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected = False
        if not self.stopping.is_set():
            log.warning("disconnected from broker (%s); reconnecting with backoff", reason_code)
            self.service_manager.status(f"disconnected from the broker ({reason_code}); reconnecting")

    def _schedule_reconnect(self) -> None:
        """Next attempt after reconnect_min_s, doubling up to reconnect_max_s until one succeeds."""
        b = self.cfg.broker
        self._delay = float(b.reconnect_min_s) if self._delay is None else min(2 * self._delay, b.reconnect_max_s)
        self._reconnect_at = time.monotonic() + self._delay

    # ------------------------------------------------------------ one batch

    def _station_status(self, sid: str, payload: bytes, now: float) -> Result:
        # before the marker is back, a status may be a stale copy the broker kept
        return self.engine.station_status(sid, payload, now, replayed=not self._caught_up)

    def _synced(self, ident: str, payload: bytes, now: float) -> None:
        """The catch-up marker came back: expiry may run (at once: _next_tick)."""
        token = D.parse_sync(payload)
        if token is None or token != self._sync_token:
            log.debug("catch-up marker of an earlier connection ignored")
            return None
        self._sync_token = None
        self._catch_up(now, f"caught up with the broker in {now - self._connected_at:.1f} s")
        return None

    def _catch_up(self, now: float, why: str, level: int = logging.INFO) -> None:
        self._caught_up = True
        self._next_tick = now
        stale = self.engine.stale_statuses
        log.log(level, "%s; expiry runs%s", why, f" ({stale} stale station statuses ignored)" if stale else "")
        if self._subscribed:  # serving: subscribed and up to date with what the broker held
            b = self.cfg.broker
            self.service_manager.ready(f"serving region {self.region} on {b.host}:{b.port}")

    def _route(self, topic: str) -> tuple[Handler, str] | None:
        route = self._topics.get(topic, False)
        if route is False and topic == self._sync_topic:
            route = self._topics[topic] = (self._synced, "")
        if route is False:
            ref = D.parse_topic(self.region, topic)
            handler = self._handlers.get((ref.kind, ref.leaf)) if ref else None
            route = None if handler is None else (handler, ref.id)
            if route is None and self.overflow is not None:
                route = self.overflow.route(topic)
            if len(self._topics) >= _TOPIC_CACHE_MAX:
                self._topics.clear()
            self._topics[topic] = route
        return route

    def _decide(self, msg: mqtt.MQTTMessage, now: float) -> Result | None:
        try:
            topic = msg.topic  # paho decodes it here
        except UnicodeDecodeError:
            log.warning("message on a topic that is not UTF-8 ignored")
            return None
        route = self._route(topic)
        if route is None:
            log.warning("message on unexpected topic %s ignored", topic)
            return None
        handler, ident = route
        if msg.retain and handler is self._handlers[("car", "request")]:
            # the broker replays a retained request on every subscribe: it would act again
            log.warning("retained request on %s ignored: a request acts only when it is sent", topic)
            return None
        try:
            return handler(ident, msg.payload, now)
        except Exception:
            # a bug must not take the region down: this message is logged and dropped
            log.exception("failed to handle message on %s", topic)
            return None

    def process(self, batch: list[mqtt.MQTTMessage]) -> None:
        """Run a batch through the engine (with the tick when it is due); commit() writes
        what it decided, and release() publishes and acknowledges it once durable."""
        now = self.clock()
        results = [r for r in (self._decide(m, now) for m in batch) if r is not None]
        prune = None
        if self._sync_token is not None and now - self._connected_at >= CATCH_UP_MAX_S:
            self._sync_token = None
            self._catch_up(now, f"catch-up marker not back within {CATCH_UP_MAX_S:.0f} s of connecting "
                                f"(may the gateway's user read and write {self._sync_topic}?)", logging.WARNING)
        if now >= self._next_tick:
            self._next_tick = now + self.cfg.tick_s
            results.append(self.engine.tick(now, expire=self._caught_up))
            results += self._operator_commands(now)
            if now - self._pruned > 3600:
                self._pruned = now
                prune = now - self.cfg.engine.request_memory_s
        if self.overflow is not None:
            results += self.overflow.step(now, results)  # committed with the batch
            self._next_tick = min(self._next_tick, self.overflow.next_due())
        # every payload is encoded once: the stored reply is the published text
        u = self._uncommitted
        texts, out = u.texts, u.out
        for result in results:
            for m in result.messages:
                text = texts[id(m.payload)] = encode_json(m.payload)
                out.append((m.topic, text.encode(), m.retain))
        if self.overflow is not None:
            out += [(p.topic, p.payload, p.retain) for p in self.overflow.outbound(results)]
        u.results += results
        u.acks += [m.mid for m in batch if m.qos > 0]
        u.messages += len(batch)
        u.prune = prune if prune is not None else u.prune

    def _operator_commands(self, now: float) -> list[Result]:
        """Apply the operator commands queued in the database since the last tick, in order
        (gateway/admin.py); each is marked done in the commit that stores what it changed."""
        results = []
        for command, op, args in self.store.pending_commands(self._command_seen):
            self._command_seen = command
            res = admin.apply(self.engine, command, op, args, now, self.store.reservation)
            done = res.command
            log.log(logging.INFO if done.ok else logging.WARNING, "operator command %d (%s): %s%s",
                    command, op, "" if done.ok else "refused: ", done.message)
            results.append(res)
        return results

    def commit(self) -> None:
        """Commit what was decided and hand it to the syncer (which gives it straight back
        unless sync_thread is on), unless the syncer's fsync is running: what is decided
        meanwhile would wait for the next one anyway, so it waits here and goes into one
        transaction with more (fewer pages written than a commit a batch)."""
        u = self._uncommitted
        if u.empty or not self._syncer.idle():
            return
        self._uncommitted = _Uncommitted()
        try:
            self.store.commit_all(u.results, u.texts)
            if u.prune is not None:
                self.store.prune_requests(u.prune)
        except sqlite3.Error as e:
            if is_permanent(e):
                log.critical("database write failed for good (%s: %s); exiting, a restart would not mend it",
                             getattr(e, "sqlite_errorname", "error"), e)
                self._db_failed(EXIT_DB_UNUSABLE)
            else:
                log.critical("database write failed; exiting for a clean restart", exc_info=True)
                self._db_failed()
            return
        self._syncer.submit(Job((u.out, u.acks), u.messages))

    def release(self) -> None:
        """Publish and acknowledge the batches the syncer has made durable, in order."""
        publish, ack = self.client.publish, self.client.ack
        for job in self._syncer.done():
            out, acks = job.release
            for topic, payload, retain in out:
                publish(topic, payload, qos=W.QOS, retain=retain)
            for mid in acks:
                ack(mid, W.QOS)

    def settle(self, timeout: float = 10.0) -> bool:
        """Commit what was decided, wait until it is durable, and release it; False if that
        took longer than `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            self.commit()
            self.release()
            if self._syncer.idle() and self._uncommitted.empty:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)

    def handle(self, batch: list[mqtt.MQTTMessage], timeout: float = 10.0) -> bool:
        """One batch all the way: decided, committed, and once durable published and
        acknowledged; False if it was not durable within `timeout` s."""
        self.process(batch)
        return self.settle(timeout)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # already woken (its buffer is full), or closed after the loop ended

    def _db_failed(self, status: int = EXIT_DB_FAILURE) -> None:
        # the engine already changed its memory: only a restart from the database is
        # consistent again. Nothing of the failed batch (or, for a failed fsync, of the
        # batches it was to cover) was acknowledged: nothing is lost.
        self._logs.uninstall()
        logging.shutdown()
        self._exit_process(status)

    # ------------------------------------------------------------ the loop

    def _read(self) -> None:
        """Read what the socket holds up to MAX_BATCH inbound messages, and no further than
        MAX_BACKLOG messages not yet durable. paho's loop_read reads as many packets as it
        has messages in flight (at least 1) and returns early when the socket is empty;
        after a call that brought no message, a poll without waiting says whether more is
        there. paho reads exactly the bytes of each packet, so what it has not read is still
        in the socket, where the selector sees it."""
        client, batch = self.client, self._batch
        room = min(MAX_BATCH, MAX_BACKLOG - self.backlog)
        while self._sock is not None and len(batch) < room:
            before = len(batch)
            if client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                return
            if len(batch) == before and self._sock is not None and not self._peek.poll(0) \
                    and not _tls_pending(self._sock):
                return

    def _flush(self) -> None:
        """Write everything paho queued; watch for writability only while some is left."""
        client, sock = self.client, self._sock
        if sock is None or not client.want_write():
            return
        client.loop_write()
        if self._sock is not sock:
            return  # the connection broke while writing
        want = client.want_write()
        if want != self._writing:
            self._sel.modify(sock, READ | WRITE if want else READ)
            self._writing = want

    def step(self, timeout: float, decide: bool = True) -> None:
        """One pass of the loop: wait up to `timeout` s for the socket or the syncer, then
        release what is durable, read, process one batch, commit, write. Without `decide`
        what was read is dropped unacknowledged (the broker redelivers it). With MAX_BACKLOG
        messages not yet durable it waits for the syncer alone, and reads nothing."""
        full = decide and self.backlog >= MAX_BACKLOG
        # TLS: bytes already decrypted wait in the SSL object, where the selector cannot see them
        readable = not full and self._sock is not None and _tls_pending(self._sock)
        for key, mask in (self._wake_sel if full else self._sel).select(0.0 if readable else timeout):
            if key.fileobj is self._wake_r:
                try:
                    self._wake_r.recv(4096)
                except BlockingIOError:
                    pass
                continue
            if mask & WRITE:
                self._flush()
            readable = readable or bool(mask & READ)
        self.release()
        if readable and self._sock is not None:
            self._read()
        if not decide:
            self._batch.clear()
        elif not full and (self._batch or self.clock() >= self._next_tick):
            batch, self._batch = self._batch, []
            self.process(batch)
        self.commit()
        self.release()  # without a sync thread the commit made it durable: out in this pass
        self._flush()
        self._logs.drain()

    def _serve(self) -> None:
        client = self.client
        misc_at = 0.0
        while not self.stopping.is_set():
            self.service_manager.pet()  # from this loop alone: a hung loop stops the pets
            mono = time.monotonic()
            if self._sock is None and mono >= self._reconnect_at:
                try:
                    client.reconnect()  # a new socket (_on_socket_open) with CONNECT queued
                except OSError as e:
                    self._schedule_reconnect()
                    log.warning("cannot connect to broker %s:%d (%s); next attempt in %.0f s",
                                self.cfg.broker.host, self.cfg.broker.port, e, self._delay)
            if self._sock is not None and mono >= misc_at:
                client.loop_misc()  # keepalive: PINGREQ, or a dead connection closed
                misc_at = mono + MISC_S
            wait = self._next_tick - self.clock()
            wait = min(wait, MISC_S) if self._sock is not None else min(wait, self._reconnect_at - mono)
            self.step(max(0.0, min(wait, self.service_manager.until_pet())))

    # ------------------------------------------------------------ lifecycle

    def run(self, ready: Callable[[], None] | None = None) -> None:
        """Connect and serve until stop() (or SIGTERM via the CLI)."""
        b = self.cfg.broker
        self.client.connect_async(b.host, b.port, keepalive=b.keepalive)
        if ready is not None:
            ready()
        self._logs.install()
        self.store.checkpoint_in_background()
        if self.store.deferred_sync:
            # A thread back from an fsync waits for the GIL until the loop thread gives it
            # up, at the latest after the switch interval (5 ms by default): that delay is on
            # every reply's path, so the syncer gets its turn sooner.
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._syncer.start()
        gc.callbacks.append(freeze_survivors)
        gc.collect()
        gc.freeze()  # what start-up built (modules, stations, restored state) stays
        try:
            self._serve()
        finally:
            gc.callbacks.remove(freeze_survivors)
            self.service_manager.stopping()
            try:
                self._shutdown()
            finally:
                self._logs.uninstall()

    def _shutdown(self) -> None:
        try:
            if self._connected and self._sock is not None:
                # what was decided is written, published and acknowledged before we go
                deadline = time.monotonic() + 5.0
                while not self.settle(0) and self._sock is not None and time.monotonic() < deadline:
                    self.step(0.05, decide=False)
                info = self.client.publish(D.gateway_online_topic(self.region), W.online_message(False),
                                           qos=W.QOS, retain=True)
                deadline = time.monotonic() + 2.0
                while not info.is_published() and self._sock is not None and time.monotonic() < deadline:
                    self.step(0.05, decide=False)  # if this fails, the Last Will says it
            self.stopping.set()
            self.client.disconnect()
            self._flush()  # sends DISCONNECT; paho then closes the socket
        finally:
            self.close()
            log.info("stopped")

    def close(self) -> None:
        """Stop the syncer (it syncs what is left; unacknowledged, the broker redelivers it)
        and close the selectors, the wake-up pair and the database. run() ends with it; a
        service whose loop never ran is closed with it alone."""
        self._syncer.stop()
        self._sel.close()
        self._wake_sel.close()
        self._wake_r.close()
        self._wake_w.close()
        self.store.close()

    def stop(self) -> None:
        """From a signal handler or another thread: the loop ends after the current batch."""
        self.stopping.set()
        self._wake()
