"""The station's slot state machine (hardware-free).

Per slot three flags:
- occupied: from the debounced occupancy input (set_occupied),
- reserved: from the gateway's `reserve` / `release` commands,
- out of service: from an operator's `out_of_service` / `in_service` commands, kept in a
  small file (one character per slot, "1" = out of service) so it survives a reboot.

Every status carries its numbering: `boot` counts the board's boots (count_boot() adds one
at start-up, kept in a file of its own), `seq` the changes of the reported states since
that boot. Both wrap to 0 after _SEQ_WRAP. The gateway tells by them a stale copy of the
status (one the broker kept, restored after a broker crash) from the latest, and believes a
rebooted station although its seq starts again (docs/protocol.md, "Stations").

The state shown and reported (docs/protocol.md, "Stations"):
out_of_service if out of service, else occupied if occupied, else reserved if reserved,
else free. A reservation that arrives while the slot is occupied is kept and shows once
the slot is freed.

    s = Slots(2, "oos.txt", "boot.txt"); s.load(); s.count_boot()
    s.set_occupied(0, True)          # True: slot 1's state changed
    s.command(b'{"v":1,"cmd":"reserve","slot":2}')   # ValueError("bad cmd: ...") if bad
    s.status_payload()    # memoryview of b'{"v":1,"slots":["occupied","reserved"],"boot":7,"seq":2}'
"""
import json
import os
from micropython import const

import log

FREE = const(0)
RESERVED = const(1)
OCCUPIED = const(2)
OUT_OF_SERVICE = const(3)
NAMES = ("free", "reserved", "occupied", "out_of_service")
CMDS = ("reserve", "release", "out_of_service", "in_service")

MAX_SLOTS = const(16)
_MAX_CMD = const(512)  # bytes; a longer command is refused before parsing
_SEQ_WRAP = const(0x3FFFFFFF)

_HEAD = b'{"v":1,"slots":['
_BOOT = b'],"boot":'
_SEQ = b',"seq":'
_QUOTED = (b'"free"', b'"reserved"', b'"occupied"', b'"out_of_service"')
# head + slots (longest state + comma each) + boot key + 10 digits + seq key + 10 digits + "}"
_BUF = const(16 + MAX_SLOTS * 17 + 9 + 10 + 7 + 10 + 1)


class Slots:
    def __init__(self, n, store="oos.txt", boot_store="boot.txt"):
        if not 1 <= n <= MAX_SLOTS:
            raise ValueError("slots: 1 to %d slots" % MAX_SLOTS)
        self.n = n
        self.boot = 0  # this boot's number (count_boot)
        self.seq = 0  # counts changes of the reported states since boot
        self._store = store  # None: do not persist
        self._boot_store = boot_store  # None: do not count boots (boot stays 0)
        self._occupied = bytearray(n)
        self._reserved = bytearray(n)
        self._oos = bytearray(n)
        self._buf = bytearray(_BUF)
        self._mv = memoryview(self._buf)

    # ------------------------------------------------------------ state

    def state(self, i):
        """State of slot i (0-based): FREE, RESERVED, OCCUPIED or OUT_OF_SERVICE."""
        if self._oos[i]:
            return OUT_OF_SERVICE
        if self._occupied[i]:
            return OCCUPIED
        if self._reserved[i]:
            return RESERVED
        return FREE

    def occupied(self, i):
        return bool(self._occupied[i])

    def reserved(self, i):
        return bool(self._reserved[i])

    def out_of_service(self, i):
        return bool(self._oos[i])

    def _set(self, flags, i, value):
        # Set one flag; True when slot i's state changed (and seq counted it).
        before = self.state(i)
        flags[i] = 1 if value else 0
        if self.state(i) != before:
            self.seq = (self.seq + 1) & _SEQ_WRAP
            return True
        return False

    def set_occupied(self, i, occupied):
        """The debounced occupancy of slot i (0-based); True when its state changed."""
        return self._set(self._occupied, i, occupied)

    # ------------------------------------------------------------ commands

    def command(self, payload):
        """Apply a station command (docs/protocol.md, station/<sid>/cmd), e.g.
        {"v":1,"cmd":"reserve","slot":2,...}. Returns the 0-based slot index it touched.
        ValueError("bad cmd: ...") for anything malformed; nothing is changed then.
        Fields other than v, cmd and slot (reservation, until) are advisory and ignored."""
        if len(payload) > _MAX_CMD:
            raise ValueError("bad cmd: larger than %d bytes" % _MAX_CMD)
        try:
            msg = json.loads(payload)
        except ValueError:
            raise ValueError("bad cmd: not JSON")
        if type(msg) is not dict:
            raise ValueError("bad cmd: not a JSON object")
        v = msg.get("v")
        if type(v) is not int or v != 1:
            raise ValueError("bad cmd: v must be 1")
        cmd = msg.get("cmd")
        if cmd not in CMDS:
            raise ValueError("bad cmd: unknown cmd %r" % (cmd,))
        slot = msg.get("slot")
        if type(slot) is not int:
            raise ValueError("bad cmd: slot must be an integer")
        if not 1 <= slot <= self.n:
            raise ValueError("bad cmd: unknown slot %d (this station has %d)" % (slot, self.n))
        i = slot - 1
        if cmd == "reserve":
            self._set(self._reserved, i, True)
        elif cmd == "release":
            self._set(self._reserved, i, False)
        else:
            oos = cmd == "out_of_service"
            if bool(self._oos[i]) != oos:
                self._set(self._oos, i, oos)
                self.save()
        return i

    # ------------------------------------------------------------ persistence

    def load(self):
        """Read the out-of-service flags from the store file (missing file: none)."""
        if self._store is None:
            return
        try:
            with open(self._store) as f:
                data = f.read(MAX_SLOTS)
        except OSError:
            return
        for i in range(min(len(data), self.n)):
            self._oos[i] = 1 if data[i] == "1" else 0

    def count_boot(self):
        """Once at start-up: this boot's number is the last one's (from the boot file; 0 if
        there is none) plus one, written back at once (a small file, one write per boot).
        A write that fails is logged; the number holds for this boot all the same."""
        path = self._boot_store
        if path is None:
            return self.boot
        last = 0
        try:
            with open(path) as f:
                text = f.read(12)
            if text.isdigit():
                last = int(text)
        except (OSError, ValueError):
            pass
        self.boot = (last + 1) & _SEQ_WRAP
        tmp = path + ".tmp"
        try:
            with open(tmp, "w") as f:
                f.write(str(self.boot))
            os.rename(tmp, path)
        except OSError as e:
            log.error("slots: cannot save boot number", path, e)
        return self.boot

    def save(self):
        """Write the out-of-service flags (to a temporary file, then renamed over the store)."""
        if self._store is None:
            return
        tmp = self._store + ".tmp"
        try:
            with open(tmp, "w") as f:
                for i in range(self.n):
                    f.write("1" if self._oos[i] else "0")
            os.rename(tmp, self._store)
        except OSError as e:
            log.error("slots: cannot save", self._store, e)

    # ------------------------------------------------------------ status

    def status_payload(self):
        """{"v":1,"slots":[...],"boot":b,"seq":n} built in a preallocated buffer; returns a
        memoryview of it, valid until the next call."""
        b = self._mv
        p = len(_HEAD)
        b[0:p] = _HEAD
        for i in range(self.n):
            if i:
                b[p] = 44  # ,
                p += 1
            q = _QUOTED[self.state(i)]
            b[p:p + len(q)] = q
            p += len(q)
        b[p:p + len(_BOOT)] = _BOOT
        p = _digits(b, p + len(_BOOT), self.boot)
        b[p:p + len(_SEQ)] = _SEQ
        p = _digits(b, p + len(_SEQ), self.seq)
        b[p] = 125  # }
        return b[:p + 1]


def _digits(b, p, value):
    # value (>= 0) in decimal into b from p on, without making a string; returns the end
    digits = 1
    d = value
    while d >= 10:
        d //= 10
        digits += 1
    for k in range(p + digits - 1, p - 1, -1):
        b[k] = 48 + value % 10
        value //= 10
    return p + digits
