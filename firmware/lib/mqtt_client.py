"""umqtt.simple's MQTTClient for a board's session (lib session.py imports this module on its
first connect): the same client on a non-blocking socket whose blocking steps keep the loop
live, and a packet id that wraps.

    c = Client(ses, client_id, host, port, user, password, keepalive)

`ses` is the session: every wait of a socket step (the TCP connect, the CONNACK, PUBACK or
SUBACK, the rest of a packet) polls the socket in slices of _SLICE_MS, calls `ses.idle()`
(if set) between them and gives up after `ses.timeout_ms` with OSError(110); every read
that gets data sets `ses.rx` to ticks_ms(). TLS when `ses.tls` is set. `host` should be an
address (a name is resolved by a blocking getaddrinfo).
"""
# TLS (`ses.tls`: an SSL context trusting the pinned CA alone, lib pinned.py, and the server
# name): MicroPython's `tls` (mbedTLS) wraps the connected socket and checks the broker's
# certificate against the CA and the name. The handshake runs on the same non-blocking socket
# during the first writes and reads, so it waits in slices too. A certificate the CA did not
# sign or one for another name raises ValueError with mbedTLS's reason, like any failed
# connect. (Docstrings are parsed when a module is compiled at boot, comments are not: long
# text goes into comments here.)
import socket
from errno import EINPROGRESS
from time import ticks_diff, ticks_ms

from micropython import const
from umqtt.simple import MQTTClient, MQTTException

_PID_WRAP = const(65000)
_SLICE_MS = const(20)


class _Sock:
    # The socket umqtt.simple talks to: non-blocking underneath, its "blocking" steps wait in
    # slices (_wait); `blk` follows umqtt.simple's setblocking() calls.
    def __init__(self, s, ses):
        s.setblocking(False)
        self._s = s
        self._ses = ses
        self._p = None
        self.blk = True

    def _wait(self, ev):
        # One blocking step: poll in slices, idle() between, the session's timeout at most.
        s = self._s
        p = self._p
        if p is None:
            import select

            p = self._p = select.poll()
            p.register(s, ev)
        else:
            p.modify(s, ev)
        ses = self._ses
        t = ticks_ms()
        while not p.poll(_SLICE_MS):
            if ticks_diff(ticks_ms(), t) >= ses.timeout_ms:
                raise OSError(110)  # ETIMEDOUT
            if ses.idle is not None:
                ses.idle()

    def connect(self, addr):
        try:
            self._s.connect(addr)
        except OSError as e:
            if e.args[0] != EINPROGRESS:
                raise
        self._wait(4)  # POLLOUT: connected (or failed: the next read or write says how)

    def setblocking(self, flag):
        self.blk = flag

    def read(self, n):
        s = self._s
        b = s.read(n)
        while self.blk and (b is None or 0 < len(b) < n):
            self._wait(1)  # POLLIN
            d = s.read(n - len(b) if b else n)
            if d == b"":
                return d  # EOF
            if d:
                b = b + d if b else d
        if b:
            self._ses.rx = ticks_ms()
        return b

    def write(self, b, n=0):
        if n:
            b = memoryview(b)[:n]
        k = 0
        while k < len(b):
            w = self._s.write(b[k:] if k else b)
            if w:
                k += w
            else:
                self._wait(4)
        return k

    def close(self):
        self._s.close()


# Where a board cannot use umqtt.simple 1.3.4 as it is: its connect() makes a blocking socket
# through its module global `socket` (a silent broker would freeze the loop), so connect()
# here makes the non-blocking _Sock itself (and wraps it in TLS itself: umqtt.simple's `ssl`
# option would handshake on its blocking socket) and sends the same CONNECT; and its packet id never
# wraps (past 65535 no PUBACK matches), so publish() here wraps it.
class Client(MQTTClient):
    def __init__(self, ses, client_id, server, port, user, password, keepalive):
        super().__init__(client_id, server, port, user, password, keepalive)
        self._ses = ses

    def connect(self, clean_session=True):
        self.pid = 0
        t = self._ses.tls
        s = self.sock = _Sock(socket.socket(), self._ses)
        s.connect(socket.getaddrinfo(self.server, self.port)[0][-1])
        if t is not None:
            s._s = t[0].wrap_socket(s._s, server_hostname=t[1], do_handshake_on_connect=False)
            s._p = None  # the poll object watched the plain socket
        premsg = bytearray(b"\x10\0\0\0\0\0")
        msg = bytearray(b"\x04MQTT\x04\x02\0\0")
        sz = 12 + len(self.client_id)
        msg[6] = clean_session << 1
        if self.user is not None:
            sz += 4 + len(self.user) + len(self.pswd)
            msg[6] |= 0xC0
        msg[7] = self.keepalive >> 8
        msg[8] = self.keepalive & 0xFF
        if self.lw_topic:
            sz += 4 + len(self.lw_topic) + len(self.lw_msg)
            msg[6] |= 4 | self.lw_qos << 3 | self.lw_retain << 5
        i = 1
        while sz > 0x7F:
            premsg[i] = (sz & 0x7F) | 0x80
            sz >>= 7
            i += 1
        premsg[i] = sz
        s.write(premsg, i + 2)  # the last byte: the protocol name length's high byte
        s.write(msg)
        self._send_str(self.client_id)
        if self.lw_topic:
            self._send_str(self.lw_topic)
            self._send_str(self.lw_msg)
        if self.user is not None:
            self._send_str(self.user)
            self._send_str(self.pswd)
        resp = s.read(4)
        if resp[0] != 0x20 or resp[1] != 0x02:  # not `assert`: the car compiles this module without asserts
            raise ValueError("no CONNACK")
        if resp[3] != 0:
            raise MQTTException(resp[3])
        return resp[2] & 1

    def publish(self, topic, msg, retain=False, qos=0):
        if self.pid >= _PID_WRAP:
            self.pid = 0
        super().publish(topic, msg, retain, qos)
