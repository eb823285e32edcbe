"""The MQTT session of a board, on umqtt.simple: connect, Last Will, online, resubscribe,
keepalive, reconnect with backoff. Never blocks the loop for long: every wait is bounded
and keeps calling `idle()`.

    s = Session(cid, host, port, user, password, keepalive, online_topic, on_message, Backoff())
    s.subscribe(cmd_topic)                  # before the first poll; subscribed on every connect
    s.on_connect = republish_state          # called after every (re)connect
    s.idle = keep_leds_live                 # called every 20 ms while a socket waits
    s.clean = False                         # persistent session (the car); default True
    s.tls = (pinned.context(ca), "broker.example")  # TLS: CA pinned, name verified; None: plain TCP
    while True:
        s.poll(time.ticks_ms())            # connect when due, check_msg(), ping
        ...
        s.publish(status_topic, payload, retain=True)   # False while offline

- Connect: clean session unless `clean` is False (then the broker keeps the subscriptions
  and queues QoS 1 messages for this client id while it is away), Last Will
  `{"v":1,"online":false}` retained QoS 1 on `will_topic`, then `{"v":1,"online":true}`
  retained QoS 1, then every remembered subscription (QoS 1), then `on_connect()`.
- The socket under umqtt.simple is non-blocking (lib mqtt_client.py: umqtt.simple's client
  on that socket). What umqtt.simple does as a blocking step (the TCP connect, waiting for
  CONNACK, PUBACK, SUBACK, the rest of a packet) polls the socket in slices of 20 ms and
  calls `idle()` (if set) between them, for at most `timeout_s` per step; then OSError(110).
  So LEDs and inputs stay live while a silent broker is waited for. `idle()` must not use
  the session.
- A PINGREQ goes out every keepalive/2; when nothing at all has arrived for `keepalive`
  seconds the connection counts as dead.
- TLS when `tls` is (SSL context, server name), the context from lib pinned.py: the broker
  must present a certificate signed by the pinned CA for that name (lib mqtt_client.py);
  None (the default) is plain TCP, for loopback development only.
- Any error in a socket or protocol operation (OSError, a refused CONNACK, a garbled
  packet, a TLS handshake or certificate that fails): the socket is closed, `connected` becomes False and the next attempt is
  scheduled after `backoff.delay()`; a successful connect resets the backoff.
- Incoming messages are queued in a fixed inbox (`inbox` entries) and handed to
  `on_message(topic, msg)` (both bytes) from poll(), never from inside an umqtt.simple call
  (messages also arrive while it waits for a PUBACK or SUBACK). poll() reads until the socket
  is drained or the inbox is full (the rest waits in the broker and TCP: backpressure); only
  what arrives during a PUBACK wait can overflow it, then the oldest message is dropped and
  counted in `dropped` (one warning per dispatch, not one per message).
- The packet id wraps (mqtt_client.py: umqtt.simple's never does) and starts again on
  every connect.
- Nothing is queued for sending: publish() while offline returns False and the caller keeps
  its latest state to publish in `on_connect`.

Also: `connected`, `disconnect()` (clean goodbye, then the session stays offline: a region
hand-over opens a new Session), `drop(why)` (the link is gone, e.g. Wi-Fi: reconnect later),
`dropped` (messages lost to a full inbox), `args` (client_id, host, port, user, password,
keepalive as given), `client` (the MQTT client: None before the first connect, then
reused). The host should be an address (a name would be resolved by a blocking
getaddrinfo). umqtt.simple (with mqtt_client.py) is imported on the first
connect, not when this module is imported.
"""
import gc
from time import ticks_add, ticks_diff, ticks_ms

from micropython import const

import log

ONLINE = b'{"v":1,"online":true}'
OFFLINE = b'{"v":1,"online":false}'

_MAX_SUBS = const(4)


def _why(e):
    if type(e) is str:
        return e
    a = e.args[0] if e.args else ""
    if type(e).__name__ == "MQTTException":  # CONNACK 4, 5: user or password; 128: SUBACK (ACL)
        return "broker refused, code %s" % a
    if type(a) is int and len(e.args) > 1:  # mbedTLS: (code, its reason)
        a = "%s %s" % (a, e.args[1])
    elif type(a) is str:  # a certificate refused: mbedTLS's reasons, one per line
        a = a.strip().replace("\n", "; ")
    return "%s %s" % (type(e).__name__, a)


class Session:
    def __init__(self, client_id, host, port, user, password, keepalive, will_topic,
                 on_message, backoff, client_cls=None, timeout_s=5, inbox=8):
        """keepalive in seconds; will_topic is the device's .../online topic;
        on_message(topic, msg) gets bytes; client_cls(session, client_id, host, port, user,
        password, keepalive) makes the MQTT client, by default mqtt_client.Client;
        timeout_s bounds every wait of a socket step; inbox: how many received messages may
        wait for dispatch (size it for the largest burst the device expects)."""
        self.args = (client_id, host, port, user, password, keepalive)  # as given
        self._will = will_topic
        self._on_message = on_message
        self._backoff = backoff
        self._cls = client_cls
        self.timeout_ms = timeout_s * 1000
        self.on_connect = None  # called with no arguments after every (re)connect
        self.idle = None  # called while a socket step waits (must not use the session)
        self.clean = True  # False: a persistent session (QoS 1 messages kept while away)
        self.tls = None  # (SSL context, server name): TLS with the pinned CA; None: plain TCP
        self.connected = False
        self.rx = 0  # ticks_ms when data last arrived
        self.client = None  # the MQTT client, made on the first connect and reused
        self._stopped = False
        self._due = None  # ticks_ms of the next connect attempt; None = at the next poll
        self._ping_at = 0
        self._subs = []
        self._inbox = [None] * inbox
        self._head = 0
        self._len = 0
        self._received = 0  # messages received, ever (wraps harmlessly)
        self.dropped = 0  # messages dropped because the inbox was full
        self._unreported = 0

    def subscribe(self, topic):
        """Remember `topic` (QoS 1), subscribed on every connect. Call before the first poll()."""
        if len(self._subs) >= _MAX_SUBS:
            raise ValueError("session: too many subscriptions")
        self._subs.append(topic)

    def publish(self, topic, payload, retain=False):
        """Publish at QoS 1 and wait (bounded) for the PUBACK. True when acknowledged;
        False when offline or the connection broke (then a reconnect is scheduled)."""
        if not self.connected:
            return False
        try:
            self.client.publish(topic, payload, retain, 1)
            return True
        except Exception as e:
            self.drop(e)
            return False

    def poll(self, now_ms):
        """One step: connect when due, else read pending messages, ping when due, detect a
        dead link; then hand queued messages to on_message. Returns `connected`."""
        if self._stopped:
            return False
        if not self.connected:
            if self._due is None or ticks_diff(now_ms, self._due) >= 0:
                self._connect(now_ms)
        else:
            c = self.client
            ka = self.args[5] * 1000
            size = len(self._inbox)
            try:
                for _ in range(size):
                    n = self._received
                    c.check_msg()
                    if self._received == n or self._len == size:
                        break  # drained (or a PINGRESP), or full: the rest waits in the broker
                if ticks_diff(now_ms, self._ping_at) >= ka >> 1:
                    self._ping_at = now_ms
                    c.ping()
                if ticks_diff(now_ms, self.rx) > ka:
                    raise OSError(110)  # not even a PINGRESP for a whole keepalive period
            except Exception as e:
                self.drop(e)
        if self._len:  # hand the queued messages over, outside any umqtt.simple call
            if self._unreported:
                log.warn("mqtt: inbox full, dropped", self._unreported, "message(s)")
                self._unreported = 0
            size = len(self._inbox)
            while self._len:
                i = self._head
                topic, msg = self._inbox[i]
                self._inbox[i] = None
                self._head = (i + 1) % size
                self._len -= 1
                try:
                    self._on_message(topic, msg)
                except Exception as e:
                    log.error("mqtt: message handler failed:", type(e).__name__, e)
            gc.collect()
        return self.connected

    def drop(self, why="link down"):
        """Close the connection without a goodbye (e.g. Wi-Fi went away: the broker will
        publish the Last Will) and reconnect after a backoff delay at a later poll()."""
        if self.connected:
            self._down(why, "connection lost:")

    def disconnect(self):
        """Go offline cleanly: publish online false (retained), send DISCONNECT, close.
        The session then stays offline."""
        self._stopped = True
        if not self.connected:
            return
        self.connected = False
        c = self.client
        try:
            c.publish(self._will, OFFLINE, True, 1)
            c.disconnect()
        except Exception:
            pass
        self._close()
        log.info("mqtt: disconnected from", self.args[1], self.args[2])

    # ------------------------------------------------------------ inside

    def _cb(self, topic, msg):
        # Called by umqtt.simple inside check_msg()/publish()/subscribe(): only queue.
        self._received += 1
        size = len(self._inbox)
        i = self._head + self._len
        if self._len == size:
            self.dropped += 1
            self._unreported += 1
            self._head = (self._head + 1) % size
        else:
            self._len += 1
        self._inbox[i % size] = (topic, msg)

    def _connect(self, now_ms):
        gc.collect()
        a = self.args
        c = self.client
        if c is None:
            cls = self._cls
            if cls is None:
                from mqtt_client import Client as cls
            c = self.client = cls(self, a[0], a[1], a[2], a[3], a[4], a[5])
            c.set_callback(self._cb)
            c.set_last_will(self._will, OFFLINE, True, 1)
        if self.tls is None:
            log.info("mqtt: connecting to", a[1], a[2])
        else:
            log.info("mqtt: connecting to", a[1], a[2], "over TLS, server name", self.tls[1])
        try:
            c.connect(self.clean)
            c.publish(self._will, ONLINE, True, 1)
            for t in self._subs:
                c.subscribe(t, 1)
        except Exception as e:
            self._down(e, "connect failed:")
            return
        self.connected = True
        self._ping_at = self.rx = now_ms
        self._backoff.reset()
        log.info("mqtt: connected")
        if self.on_connect is not None:
            try:
                self.on_connect()
            except Exception as e:
                log.error("mqtt: on_connect failed:", type(e).__name__, e)
        gc.collect()

    def _down(self, e, what):
        self.connected = False
        self._close()
        d = self._backoff.delay()
        self._due = ticks_add(ticks_ms(), d)
        log.warn("mqtt:", what, _why(e), "- next attempt in", d, "ms")

    def _close(self):
        c = self.client
        if c is not None and c.sock is not None:
            try:
                c.sock.close()
            except Exception:
                pass
            c.sock = None
