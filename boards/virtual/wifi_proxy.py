"""The board's Wi-Fi as its TCP connections see it: cuttable proxies on the host.

At every boot config.json's "broker" and "regions[*]" host/port are pointed at TCP proxies on
127.0.0.1 that forward to the real addresses (the flash copy only). TLS passes through as
bytes; with a pinned CA (broker.ca) an entry without a "server_name" gets its real host as
one, so the board still checks the broker's certificate for the name it would use. Switching the access point
off cuts what goes through them (reset towards the board, closed towards the broker, which then
publishes the Last Will) and refuses new connections until it is on again.
"""
from __future__ import annotations

import json
import socket
import struct
import threading
import weakref
from pathlib import Path

Address = tuple[str, int]


class Proxy:
    """A TCP forwarder 127.0.0.1:port -> upstream that can be cut and paused (Wi-Fi down)."""

    def __init__(self, upstream: Address):
        self.upstream = upstream
        # config.json names this port for the board's whole life, also while Wi-Fi is off and
        # nothing listens. A bound, never-listening socket keeps it ours: Linux then gives it
        # to no bind(0) and no outgoing connect, while a listener with SO_REUSEADDR can still
        # bind beside it. (Probing a port and closing it raced: EADDRINUSE at listen().)
        self._hold = socket.socket()
        self._hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._hold.bind(("127.0.0.1", 0))
        self.port: int = self._hold.getsockname()[1]
        self._lsock: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._cut: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._lock = threading.Lock()
        self.connections = 0

    def listen(self) -> None:
        with self._lock:
            if self._lsock is not None:
                return
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", self.port))
            s.listen(8)
            self._lsock = s
        threading.Thread(target=self._accept, args=(s,), daemon=True,
                         name=f"vboard-proxy-{self.port}").start()

    def pause(self) -> None:
        """Refuse new connections and cut the open ones: reset towards the board (it sees
        ECONNRESET), closed towards the upstream (a broker sees the client vanish)."""
        with self._lock:
            s, self._lsock = self._lsock, None
            pairs, self._pairs = self._pairs, []
            self._cut.update(c for c, _ in pairs)
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        for client, up in pairs:
            reset_close(client)
            try:
                up.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            up.close()

    def close(self) -> None:
        self.pause()
        self._hold.close()

    def _accept(self, lsock: socket.socket) -> None:
        while True:
            try:
                client, _ = lsock.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.upstream, timeout=5)
                up.settimeout(None)
            except OSError:
                reset_close(client)
                continue
            with self._lock:
                if self._lsock is not lsock:
                    reset_close(client)
                    up.close()
                    return
                self._pairs.append((client, up))
                self.connections += 1
            for a, b in ((client, up), (up, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        with self._lock:
            cut = a in self._cut or b in self._cut
            self._pairs = [p for p in self._pairs if a not in p]
        if not cut:  # one side ended: end the other one the same way
            for x in (a, b):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def reset_close(s: socket.socket) -> None:
    """Close with a TCP reset. shutdown(SHUT_RD) first wakes a thread blocked in recv() on
    it, so that the close really happens now (linger 0: RST, no FIN)."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    s.close()


class WifiProxies:
    """One Proxy per upstream address the board's config.json names, kept for the board's
    life so that every boot finds the same ports."""

    def __init__(self) -> None:
        self._proxies: dict[Address, Proxy] = {}

    def route_config(self, path: Path, listening: bool) -> None:
        """Point config.json's broker and regions host/port at proxies (new ones listen if
        `listening`, i.e. the access point is up); addresses already ours stay."""
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(cfg, dict):
            return
        ours = {("127.0.0.1", p.port) for p in self._proxies.values()}
        changed = False
        entries = [cfg.get("broker")] + list(cfg.get("regions") or [])
        tls = isinstance(cfg.get("broker"), dict) and "ca" in cfg["broker"]
        for e in entries:
            if not isinstance(e, dict) or not isinstance(e.get("host"), str):
                continue
            port = e.get("port", 1883)
            if not isinstance(port, int) or (e["host"], port) in ours:
                continue
            up = (e["host"], port)
            if tls:
                e.setdefault("server_name", e["host"])
            if up not in self._proxies:
                self._proxies[up] = Proxy(up)
                if listening:
                    self._proxies[up].listen()
            e["host"], e["port"] = "127.0.0.1", self._proxies[up].port
            changed = True
        if changed:
            path.write_text(json.dumps(cfg, indent=1) + "\n")

    @property
    def upstreams(self) -> dict[Address, Address]:
        """{real address: the proxy address config.json names instead}."""
        return {up: ("127.0.0.1", p.port) for up, p in self._proxies.items()}

    def listen(self) -> None:
        """Access point on: accept connections again."""
        for p in list(self._proxies.values()):  # a boot may add one meanwhile
            p.listen()

    def cut(self) -> None:
        """Access point off: cut the open connections, refuse new ones."""
        for p in list(self._proxies.values()):
            p.pause()

    def close(self) -> None:
        for p in list(self._proxies.values()):
            p.close()
