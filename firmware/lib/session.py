"""The MQTT session of a board, on umqtt.simple: connect, Last Will, online, resubscribe,
keepalive, reconnect with backoff. Non-blocking except for bounded socket operations.

    s = Session(cid, host, port, user, password, keepalive, online_topic, on_message, Backoff())
    s.subscribe(cmd_topic)                  # remembered, subscribed again on every connect
    s.on_connect = republish_state          # called after every (re)connect
    while True:
        s.poll(time.ticks_ms())            # connect when due, check_msg(), ping
        ...
        s.publish(status_topic, payload, retain=True)   # False while offline

- Connect: clean session, Last Will `{"v":1,"online":false}` retained QoS 1 on
  `will_topic`, then `{"v":1,"online":true}` retained QoS 1, then every remembered
  subscription (QoS 1), then `on_connect()`.
- Every socket operation is bounded by `timeout_s` (connect, CONNACK, PUBACK, SUBACK); an
  umqtt.simple socket is wrapped so that its `setblocking(True)` means "blocking with that
  timeout" (umqtt.simple itself would otherwise wait forever).
- A PINGREQ goes out every keepalive/2; when nothing at all has arrived for `keepalive`
  seconds the connection counts as dead.
- Any error in a socket or protocol operation (OSError, a refused CONNACK, a garbled
  packet): the socket is closed, `connected` becomes False and the next attempt is
  scheduled after `backoff.delay()`; a successful connect resets the backoff.
- Incoming messages are queued in a fixed inbox (`inbox` entries) and handed to
  `on_message(topic, msg)` (both bytes) from poll(), never from inside an umqtt.simple call
  (messages also arrive while it waits for a PUBACK or SUBACK). poll() reads until the socket
  is drained or the inbox is full (the rest waits in the broker and TCP: backpressure); only
  what arrives during a PUBACK wait can overflow it, then the oldest message is dropped and
  counted in `dropped` (one warning per dispatch, not one per message).
- umqtt.simple's packet id counter is wrapped here (it never wraps by itself: after 65535
  publishes every PUBACK would be missed), and starts again on every connect.
- Nothing is queued for sending: publish() while offline returns False and the caller keeps
  its latest state to publish in `on_connect`.

Also: `connected`, `set_server(host, port)` (region hand-over), `disconnect()` (clean
goodbye, then idle until set_server), `drop(why)` (the link is gone, e.g. Wi-Fi: reconnect
later), `dropped` (messages lost to a full inbox). Plain TCP only (no TLS). umqtt.simple is
imported on the first connect, not when this module is imported.
"""
import gc
import time
from micropython import const

import log

ONLINE = b'{"v":1,"online":true}'
OFFLINE = b'{"v":1,"online":false}'

_MAX_SUBS = const(4)
_PID_WRAP = const(65000)  # umqtt.simple never wraps its packet id; past 65535 it breaks QoS 1

_CONNACK = ("", "bad protocol version", "client id rejected", "server unavailable",
            "bad user name or password", "not authorized")


class _Sock:
    """A socket whose blocking mode has a timeout; remembers when data last arrived."""

    def __init__(self, sock, timeout_s):
        self._s = sock
        self._t = timeout_s
        sock.settimeout(timeout_s)
        self.rx = time.ticks_ms()

    def connect(self, addr):
        self._s.connect(addr)

    def setblocking(self, flag):
        self._s.settimeout(self._t if flag else 0)

    def settimeout(self, t):
        self._s.settimeout(t)

    def read(self, n):
        b = self._s.read(n)
        if b:
            self.rx = time.ticks_ms()
        return b

    def write(self, buf, n=None):
        if n is None:
            return self._s.write(buf)
        return self._s.write(buf, n)

    def close(self):
        self._s.close()


def _timed(base, timeout_s):
    # A subclass whose `sock` attribute wraps whatever socket umqtt.simple's connect() makes.
    class Timed(base):
        @property
        def sock(self):
            return self._sk

        @sock.setter
        def sock(self, s):
            self._sk = s if s is None or isinstance(s, _Sock) else _Sock(s, timeout_s)

    return Timed


def _why(e):
    if type(e) is str:
        return e
    if isinstance(e, OSError):
        return "OSError %s" % (e.args[0] if e.args else "")
    name = type(e).__name__
    if name == "MQTTException" and e.args and type(e.args[0]) is int:
        code = e.args[0]
        if code == 0x80:
            return "broker refused a subscription (ACL?)"
        return "broker refused the connection (%d: %s)" % (code, _CONNACK[code] if code < len(_CONNACK) else "?")
    return "%s %s" % (name, e)


class Session:
    def __init__(self, client_id, host, port, user, password, keepalive, will_topic,
                 on_message, backoff, client_cls=None, timeout_s=5, inbox=8):
        """keepalive in seconds; will_topic is the device's .../online topic;
        on_message(topic, msg) gets bytes; client_cls defaults to umqtt.simple.MQTTClient;
        timeout_s bounds every socket operation; inbox: how many received messages may wait
        for dispatch (size it for the largest burst the device expects)."""
        self._cid = client_id
        self._host = host
        self._port = port
        self._user = user
        self._password = password
        self._ka_ms = keepalive * 1000
        self._will = will_topic
        self._on_message = on_message
        self._backoff = backoff
        self._cls = client_cls
        self._timeout = timeout_s
        self.on_connect = None  # called with no arguments after every (re)connect
        self._c = None  # the MQTTClient, made on the first connect and reused
        self._up = False
        self._stopped = False
        self._due = None  # ticks_ms of the next connect attempt; None = at the next poll
        self._ping_at = 0
        self._subs = []
        self._inbox = [None] * inbox
        self._in_head = 0
        self._in_len = 0
        self._received = 0  # messages received, ever (wraps harmlessly)
        self.dropped = 0  # messages dropped because the inbox was full
        self._unreported = 0

    # ------------------------------------------------------------ public

    @property
    def connected(self):
        return self._up

    def subscribe(self, topic):
        """Remember `topic` (QoS 1); subscribed now if connected and after every connect."""
        if topic in self._subs:
            return
        if len(self._subs) >= _MAX_SUBS:
            raise ValueError("session: too many subscriptions")
        self._subs.append(topic)
        if self._up:
            try:
                self._c.subscribe(topic, 1)
            except Exception as e:
                self._lost(e, time.ticks_ms())

    def publish(self, topic, payload, retain=False):
        """Publish at QoS 1 and wait (bounded) for the PUBACK. True when acknowledged;
        False when offline or the connection broke (then a reconnect is scheduled)."""
        if not self._up:
            return False
        c = self._c
        if c.pid >= _PID_WRAP:
            c.pid = 0
        try:
            c.publish(topic, payload, retain, 1)
            return True
        except Exception as e:
            self._lost(e, time.ticks_ms())
            return False

    def poll(self, now_ms):
        """One step: connect when due, else read pending messages, ping when due, detect a
        dead link; then hand queued messages to on_message. Returns `connected`."""
        if self._stopped:
            return False
        if not self._up:
            if self._due is None or time.ticks_diff(now_ms, self._due) >= 0:
                self._connect(now_ms)
        else:
            c = self._c
            try:
                size = len(self._inbox)
                for _ in range(size):
                    n = self._received
                    c.check_msg()
                    if self._received == n or self._in_len == size:
                        break  # drained (or a PINGRESP), or full: the rest waits in the broker
                if time.ticks_diff(now_ms, self._ping_at) >= self._ka_ms >> 1:
                    self._ping_at = now_ms
                    c.ping()
                if time.ticks_diff(now_ms, c.sock.rx) > self._ka_ms:
                    raise OSError(110)  # not even a PINGRESP for a whole keepalive period
            except Exception as e:
                self._lost(e, now_ms)
        if self._in_len:
            self._dispatch()
        return self._up

    def set_server(self, host, port):
        """Use another broker (region hand-over): leave the current one cleanly (online false,
        DISCONNECT) and connect to host:port at the next poll. Also restarts a session
        stopped by disconnect()."""
        if host == self._host and port == self._port and not self._stopped:
            return
        self.disconnect()
        self._host = host
        self._port = port
        if self._c is not None:
            self._c.server = host
            self._c.port = port
        self._stopped = False
        self._backoff.reset()
        self._due = None

    def drop(self, why="link down"):
        """Close the connection without a goodbye (e.g. Wi-Fi went away: the broker will
        publish the Last Will) and reconnect after a backoff delay at a later poll()."""
        if self._up:
            self._lost(why, time.ticks_ms())

    def disconnect(self):
        """Go offline cleanly: publish online false (retained), send DISCONNECT, close.
        The session then stays idle until set_server() is called."""
        self._stopped = True
        if not self._up:
            return
        self._up = False
        c = self._c
        try:
            c.publish(self._will, OFFLINE, True, 1)
            c.disconnect()
        except Exception:
            pass
        self._close()
        log.info("mqtt: disconnected from", self._host, self._port)

    # ------------------------------------------------------------ inside

    def _cb(self, topic, msg):
        # Called by umqtt.simple inside check_msg()/publish()/subscribe(): only queue.
        self._received += 1
        size = len(self._inbox)
        i = self._in_head + self._in_len
        if self._in_len == size:
            self.dropped += 1
            self._unreported += 1
            self._in_head = (self._in_head + 1) % size
        else:
            self._in_len += 1
        self._inbox[i % size] = (topic, msg)

    def _dispatch(self):
        if self._unreported:
            log.warn("mqtt: inbox full, dropped", self._unreported, "message(s)")
            self._unreported = 0
        size = len(self._inbox)
        while self._in_len:
            i = self._in_head
            topic, msg = self._inbox[i]
            self._inbox[i] = None
            self._in_head = (i + 1) % size
            self._in_len -= 1
            try:
                self._on_message(topic, msg)
            except Exception as e:
                log.error("mqtt: message handler failed:", type(e).__name__, e)
        gc.collect()

    def _client(self):
        if self._c is None:
            cls = self._cls
            if cls is None:
                from umqtt.simple import MQTTClient as cls
            c = _timed(cls, self._timeout)(self._cid, self._host, self._port, self._user,
                                           self._password, self._ka_ms // 1000)
            c.set_callback(self._cb)
            c.set_last_will(self._will, OFFLINE, True, 1)
            self._c = c
        return self._c

    def _connect(self, now_ms):
        gc.collect()
        c = self._client()
        c.pid = 0
        log.info("mqtt: connecting to", self._host, self._port)
        try:
            c.connect()
            c.publish(self._will, ONLINE, True, 1)
            for t in self._subs:
                c.subscribe(t, 1)
        except Exception as e:
            self._close()
            d = self._backoff.delay()
            self._due = time.ticks_add(now_ms, d)
            log.warn("mqtt: connect failed:", _why(e), "- next attempt in", d, "ms")
            return
        self._up = True
        self._ping_at = now_ms
        self._backoff.reset()
        log.info("mqtt: connected")
        if self.on_connect is not None:
            try:
                self.on_connect()
            except Exception as e:
                log.error("mqtt: on_connect failed:", type(e).__name__, e)
        gc.collect()

    def _lost(self, e, now_ms):
        self._up = False
        self._close()
        d = self._backoff.delay()
        self._due = time.ticks_add(now_ms, d)
        log.warn("mqtt: connection lost:", _why(e), "- reconnect in", d, "ms")

    def _close(self):
        c = self._c
        if c is not None and c.sock is not None:
            try:
                c.sock.close()
            except Exception:
                pass
            c.sock = None
