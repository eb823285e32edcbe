"""paho-mqtt's client with shortcuts on the gateway's hot path (MQTT 3.1.1, external loop).

The gateway reads a request, and acknowledgements of what it published, thousands of times a
second from one thread; paho's general code paths cost more there than the gateway's own
work. The shortcuts rely on paho's internals as of 2.2 (tested there); with any other paho,
with MQTT 5, or with message_callback_add filters, paho's own paths run unchanged.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import paho.mqtt
import paho.mqtt.client as mqtt

PAHO_2_2 = paho.mqtt.__version__.split(".")[:2] == ["2", "2"]
_RECV_SIZE = 65536
_PUBLISH, _PUBACK = 0x30, 0x40
_OK = mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
_AGAIN = mqtt.MQTTErrorCode.MQTT_ERR_AGAIN
_WRITE_RUN = 1024  # packets joined into one send()


@dataclass(slots=True)
class InboundMessage:
    """What the gateway reads of a PUBLISH: paho's MQTTMessage also builds a
    MQTTMessageInfo with a threading.Condition for each, which only outbound messages use."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    retain: bool = False
    dup: bool = False
    timestamp: float = 0.0


class GatewayClient(mqtt.Client):
    """paho's client with these shortcuts:

    - reads: paho asks the socket for every packet 3 times (its type, its length, the
      rest) and then for each byte of the length; here one recv() fills a buffer, and a
      PUBLISH (QoS 0 or 1) or PUBACK that lies whole in it is taken from it in one step.
      Anything else, or a packet still arriving, goes through paho's own reader, which
      the buffer serves too. pending() says what is left in it (paho's own loop asks an
      SSL socket the same), which no selector can see.
    - PUBACKs: paho 2.2 builds a reason code and an MQTT 5 property set for each, which
      MQTT 3.1.1 does not have and which only an on_publish callback would look at (we set
      none): the acknowledged message is released directly, as paho does after that.
    - writes: the queued packets go out in one send() instead of one each.
    - inbound messages: paho matches each against the filters of message_callback_add
      through a recursive closure, a reference cycle per message left to the cyclic GC
      (whose collections then stall the loop); with no filter added, on_message is called
      directly, with an InboundMessage from the fast reader.
    """

    _rbuf = b""
    _rpos = 0
    drained = False  # the last recv() found the socket empty: nothing to read until it polls readable
    _filtered = False  # message_callback_add was used: paho's own dispatch

    def message_callback_add(self, sub: str, callback: Callable[..., None]) -> None:
        self._filtered = True
        super().message_callback_add(sub, callback)

    def pending(self) -> int:
        return len(self._rbuf) - self._rpos

    def reconnect(self) -> mqtt.MQTTErrorCode:
        self._rbuf, self._rpos = b"", 0  # nothing of the last connection is read on the next
        return super().reconnect()

    # ------------------------------------------------------------ reading

    def _fast(self) -> bool:
        return (PAHO_2_2 and not self._filtered and self._protocol != mqtt.MQTTv5
                and self.on_publish is None)

    def _packet_read(self) -> mqtt.MQTTErrorCode:
        if self._in_packet["command"] or not self._fast():
            return super()._packet_read()  # a packet half read, or paho's own paths
        if self._rpos >= len(self._rbuf):
            try:
                data = self._recv(_RECV_SIZE)
            except BlockingIOError:
                return _AGAIN
            except OSError:
                return super()._packet_read()  # paho reports the broken connection
            if not data:
                return super()._packet_read()  # end of stream: paho's lost connection
            self._rbuf, self._rpos = data, 0
        buf, start = self._rbuf, self._rpos
        end = len(buf)
        # fixed header: type byte, remaining length in 1..4 bytes of 7 bits
        i, length, shift = start + 1, 0, 0
        while True:
            if i >= end or shift > 21:
                return super()._packet_read()  # not all here yet (or malformed: paho says so)
            b = buf[i]
            i += 1
            length |= (b & 127) << shift
            if b < 128:
                break
            shift += 7
        stop = i + length
        if stop > end:
            return super()._packet_read()
        command = buf[start]
        kind = command & 0xF0
        if kind == _PUBACK and length == 2:
            self._rpos = stop
            self._received()
            return self._release((buf[i] << 8) | buf[i + 1])
        if kind != _PUBLISH or (command & 0x06) > 2 or length < 2:
            return super()._packet_read()  # QoS 2 and control packets: paho's
        qos = (command >> 1) & 3
        tlen = (buf[i] << 8) | buf[i + 1]
        body = i + 2 + tlen + (2 if qos else 0)
        if body > stop:
            return super()._packet_read()  # malformed: paho reports it
        try:
            topic = buf[i + 2:i + 2 + tlen].decode("utf-8")
        except UnicodeDecodeError:
            return super()._packet_read()  # paho's message for an invalid topic
        mid = (buf[body - 2] << 8) | buf[body - 1] if qos else 0
        self._rpos = stop
        now = self._received()
        self._deliver(InboundMessage(topic, buf[body:stop], qos, mid, bool(command & 1), bool(command & 8), now))
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return _OK

    def _received(self) -> float:
        now = time.monotonic()  # paho's time_func: keepalive bookkeeping
        with self._msgtime_mutex:
            self._last_bytes_received = now
        return now

    def _release(self, mid: int) -> mqtt.MQTTErrorCode:
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, None, None)  # type: ignore[arg-type]
        return _OK

    def _handle_pubackcomp(self, cmd: str) -> mqtt.MQTTErrorCode:
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or len(packet) != 2 or not self._fast():
            return super()._handle_pubackcomp(cmd)  # type: ignore[arg-type]
        return self._release((packet[0] << 8) | packet[1])

    def _handle_on_message(self, message: Any) -> None:
        if not PAHO_2_2 or self._filtered:
            return super()._handle_on_message(message)
        self._deliver(message)

    def _deliver(self, message: Any) -> None:
        """on_message, as paho calls it when no filter matches."""
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                try:
                    on_message(self, self._userdata, message)
                except Exception as err:
                    self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                    if not self.suppress_exceptions:
                        raise

    def _sock_recv(self, bufsize: int) -> bytes:
        if not PAHO_2_2:
            return self._recv(bufsize)
        if self._rpos >= len(self._rbuf):
            data = self._recv(_RECV_SIZE)
            if len(data) <= bufsize:
                return data
            self._rbuf, self._rpos = data, 0
        start = self._rpos
        self._rpos = end = min(start + bufsize, len(self._rbuf))
        return self._rbuf[start:end]

    # ------------------------------------------------------------ writing

    def _packet_write(self) -> mqtt.MQTTErrorCode:
        """What paho does packet by packet, for a run of packets that need nothing after
        their write (not a QoS 0 PUBLISH, whose info is marked, nor a DISCONNECT)."""
        out = self._out_packet
        if not PAHO_2_2:
            return super()._packet_write()
        while out:
            run = []
            for p in out:
                kind = p["command"] & 0xF0
                if kind == mqtt.DISCONNECT or (kind == _PUBLISH and p["qos"] == 0):
                    return super()._packet_write()  # rare: paho writes them all
                run.append(p)
                if len(run) == _WRITE_RUN:
                    break
            data = b"".join(p["packet"][p["pos"]:] for p in run)
            try:
                sent = self._sock_send(data)
            except (AttributeError, ValueError):
                return _OK
            except BlockingIOError:
                return _AGAIN
            except OSError as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "failed to send on socket: %s", err)
                return mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST
            left = sent
            for p in run:
                n = p["to_process"] if p["to_process"] <= left else left
                p["pos"] += n
                p["to_process"] -= n
                left -= n
                if p["to_process"]:
                    break
                out.popleft()
            with self._msgtime_mutex:
                self._last_msg_out = time.monotonic()
            if sent < len(data):
                return _AGAIN  # the socket's buffer is full: on when writable
        return _OK

    def _recv(self, size: int) -> bytes:
        """One recv(): empty at EOF, BlockingIOError when drained (then `drained`)."""
        try:
            data = super()._sock_recv(size)
        except BlockingIOError:
            self.drained = True
            raise
        self.drained = False
        return data
