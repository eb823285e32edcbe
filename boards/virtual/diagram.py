"""Wokwi diagram.json: which part is wired to which ESP32 GPIO, and a small circuit model.

`Diagram` parses the file: parts (`id`, `type`, `attrs`) and connections
(`["led1:A", "r1:1", "green", [...]]`). `gpio_of("led1", "A")` follows the net from a part's
pin through wires, resistors and a pushbutton's always-joined pins to the board's GPIO.

`Circuit` holds the state of the parts the tests control (pushbuttons, slide switches,
potentiometers) and of the board's pins (mode, pull, output level, as the emulated firmware
reports them), and solves the DC voltages: wires and closed contacts join nodes; resistors
(and the ESP32's ~45 kΩ internal pulls) are conductances; GND, 3V3, 5V, output pins and a
potentiometer's wiper fix voltages. Like Wokwi, a potentiometer's SIG is position × 3.3 V
whatever its VCC/GND wiring, and LEDs draw no current (an LED lights when its anode is over
1 V above its cathode). A node with no path to a fixed voltage floats (None).
"""
from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

V33 = 3.3
PULL_OHMS = 45_000.0
LED_ON_VOLTS = 1.0
DIGITAL_THRESHOLD = V33 / 2

BUTTON_TYPES = ("wokwi-pushbutton", "wokwi-pushbutton-6mm")
SWITCH_TYPES = ("wokwi-slide-switch",)
POT_TYPES = ("wokwi-potentiometer", "wokwi-slide-potentiometer")
LED_TYPES = ("wokwi-led",)
RGB_TYPES = ("wokwi-rgb-led",)
RESISTOR_TYPES = ("wokwi-resistor",)

# The ESP32's GPIOs that exist on a DevKit and that MicroPython's ESP32 port accepts.
ESP32_GPIOS = frozenset([*range(6), *range(12, 20), 21, 22, 23, 25, 26, 27, *range(32, 40)])


class DiagramError(ValueError):
    pass


@dataclass(frozen=True)
class Part:
    id: str
    type: str
    attrs: dict = field(default_factory=dict, compare=False, hash=False)


def board_pin(name: str):
    """What an ESP32 board pin is: ("gpio", n), ("gnd",), ("supply", volts) or None."""
    n = name.strip().upper()
    base = re.sub(r"\.\d+$", "", n)
    if base == "GND":
        return ("gnd",)
    if base in ("3V3", "3.3V", "VCC"):
        return ("supply", V33)
    if base in ("5V", "VIN", "VBUS"):
        return ("supply", 5.0)
    m = re.fullmatch(r"(?:D|IO|GPIO)?(\d+)", base)
    if m:
        return ("gpio", int(m.group(1)))
    aliases = {"VP": 36, "VN": 39, "TX": 1, "TX0": 1, "TXD0": 1, "RX": 3, "RX0": 3, "RXD0": 3}
    if base in aliases:
        return ("gpio", aliases[base])
    return None


def parse_ohms(value) -> float:
    """A resistor's "value" attr in ohms: "220", "10k", "4.7k", "1M" (Wokwi's default 1 kΩ)."""
    s = str(value if value not in (None, "") else "1000").strip()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([kKmMrR]?)\s*(?:ohms?|Ω)?", s)
    if not m:
        raise ValueError(f"bad resistance {value!r}")
    return float(m.group(1)) * {"": 1.0, "r": 1.0, "k": 1e3, "m": 1e6}[m.group(2).lower()]


class Diagram:
    """A parsed diagram.json with one ESP32 board (the first part whose type names esp32)."""

    def __init__(self, data: dict, *, board_id: str | None = None, source: str = "diagram"):
        self.source = source
        parts = data.get("parts")
        if not isinstance(parts, list):
            raise DiagramError(f"{source}: no \"parts\" list")
        self.parts: dict[str, Part] = {}
        for p in parts:
            if not isinstance(p, dict) or "id" not in p or "type" not in p:
                raise DiagramError(f"{source}: a part without id or type: {p!r}")
            self.parts[p["id"]] = Part(p["id"], p["type"], dict(p.get("attrs") or {}))
        if board_id is None:
            boards = [p.id for p in self.parts.values() if "esp32" in p.type.lower()]
            if not boards:
                raise DiagramError(f"{source}: no ESP32 board among the parts")
            board_id = boards[0]
        if board_id not in self.parts:
            raise DiagramError(f"{source}: no part {board_id!r}")
        self.board_id = board_id
        self.wires: list[tuple[tuple[str, str], tuple[str, str]]] = []
        for c in data.get("connections") or []:
            if not isinstance(c, list) or len(c) < 2:
                raise DiagramError(f"{source}: bad connection {c!r}")
            a, b = self._endpoint(c[0]), self._endpoint(c[1])
            if a is not None and b is not None:
                self.wires.append((a, b))

    @classmethod
    def load(cls, path: str | Path, **kw) -> Diagram:
        path = Path(path)
        if path.is_dir():
            path = path / "diagram.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DiagramError(f"{path}: {e}") from e
        return cls(data, source=str(path), **kw)

    def _endpoint(self, text: str):
        if not isinstance(text, str) or ":" not in text:
            raise DiagramError(f"{self.source}: bad connection end {text!r}")
        part, pin = text.split(":", 1)
        if part.startswith("$"):  # $serialMonitor and friends
            return None
        if part not in self.parts:
            raise DiagramError(f"{self.source}: connection to unknown part {part!r}")
        return self.key(part, pin)

    def key(self, part: str, pin: str) -> tuple[str, str]:
        """The node key of a part's pin; a board's GND.1/GND.2 are one node, "D2" is "2"."""
        if part == self.board_id:
            bp = board_pin(pin)
            if bp is not None:
                return (part, "GND" if bp[0] == "gnd" else
                        ("5V" if bp[1] == 5.0 else "3V3") if bp[0] == "supply" else str(bp[1]))
        if self.parts.get(part) and self.parts[part].type in LED_TYPES and pin == "K":
            pin = "C"
        return (part, pin)

    def kind(self, part_id: str) -> str | None:
        t = self.part(part_id).type
        for kind, types in (("pushbutton", BUTTON_TYPES), ("slide-switch", SWITCH_TYPES),
                            ("potentiometer", POT_TYPES), ("led", LED_TYPES),
                            ("rgb-led", RGB_TYPES), ("resistor", RESISTOR_TYPES)):
            if t in types:
                return kind
        return "board" if part_id == self.board_id else None

    def part(self, part_id: str) -> Part:
        try:
            return self.parts[part_id]
        except KeyError:
            raise DiagramError(f"{self.source}: no part {part_id!r} "
                               f"(parts: {', '.join(sorted(self.parts))})") from None

    def gpio_key(self, key: tuple[str, str]) -> int | None:
        if key[0] == self.board_id and key[1].isdigit():
            return int(key[1])
        return None

    # -- structure -----------------------------------------------------------------------

    def internal_links(self, part: Part, state: dict | None = None, *, wiring: bool = False):
        """Pin pairs of a part that are joined: a pushbutton's 1.l/1.r always, 1/2 while
        pressed; a slide switch's common pin 2 to 1 or 3. With wiring=True only what is
        always joined, plus a resistor's ends (what gpio_of follows)."""
        state = state or {}
        if part.type in BUTTON_TYPES:
            yield "1.l", "1.r"
            yield "2.l", "2.r"
            if state.get(part.id) and not wiring:
                yield "1.l", "2.l"
        elif part.type in SWITCH_TYPES and not wiring:
            yield "2", ("3" if state.get(part.id) else "1")
        elif wiring and part.type in RESISTOR_TYPES:
            yield "1", "2"

    def gpio_of(self, part_id: str, pin: str) -> int | None:
        """The GPIO a part's pin reaches through wires, resistors and always-joined button
        pins (not through switch contacts nor across GND or a supply); None if it reaches
        none. With several, the nearest."""
        self.part(part_id)
        start = self.key(part_id, pin)
        adj: dict[tuple[str, str], list[tuple[str, str]]] = {}

        def link(a, b):
            adj.setdefault(a, []).append(b)
            adj.setdefault(b, []).append(a)

        for a, b in self.wires:
            link(a, b)
        for p in self.parts.values():
            for x, y in self.internal_links(p, wiring=True):
                link(self.key(p.id, x), self.key(p.id, y))
        seen, todo = {start}, deque([start])
        while todo:
            k = todo.popleft()
            g = self.gpio_key(k)
            if g is not None:
                return g
            if k[0] == self.board_id:  # GND, 3V3, 5V: a rail joins everything, follow no further
                continue
            for n in adj.get(k, ()):
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return None

    def pins_of(self, part_id: str) -> dict[str, int]:
        """{pin: GPIO} for every pin of a part that is wired to a GPIO."""
        pins = {pin for (a, b) in self.wires for (p, pin) in (a, b) if p == part_id}
        part = self.part(part_id)
        for x, y in self.internal_links(part, wiring=True):
            pins.update((x, y))
        out = {}
        for pin in sorted(pins):
            g = self.gpio_of(part_id, pin)
            if g is not None:
                out[pin] = g
        return out


class Circuit:
    """The parts' and the board pins' state, and the voltages that follow from them."""

    def __init__(self, diagram: Diagram):
        self.d = diagram
        self.pressed: dict[str, bool] = {}
        self.switch: dict[str, int] = {}
        self.pot: dict[str, float] = {}
        for p in diagram.parts.values():
            if p.type in BUTTON_TYPES:
                self.pressed[p.id] = False
            elif p.type in SWITCH_TYPES:
                self.switch[p.id] = 1 if str(p.attrs.get("value", "")) == "1" else 0
            elif p.type in POT_TYPES:
                try:
                    self.pot[p.id] = min(1.0, max(0.0, float(p.attrs.get("value", 0)) / 1023))
                except ValueError:
                    self.pot[p.id] = 0.0
        self.reset_pins()
        self.warnings: list[str] = []

    def reset_pins(self):
        """Every GPIO back to its reset state: input, no pull (a fresh boot)."""
        self.mode: dict[int, int] = {}   # 1 in, 3 out, 7 open drain (MicroPython ESP32 values)
        self.pull: dict[int, int] = {}   # 1 down, 2 up
        self.out: dict[int, int] = {}

    def set_pin(self, gpio: int, mode: int, pull: int, out: int):
        self.mode[gpio], self.pull[gpio], self.out[gpio] = mode, pull, out

    # -- solving -------------------------------------------------------------------------

    def _nodes(self):
        parent: dict = {}

        def find(x):
            parent.setdefault(x, x)
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        def union(a, b):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[ra] = rb

        d = self.d
        for a, b in d.wires:
            union(a, b)
        state = {**self.pressed, **self.switch}
        for p in d.parts.values():
            for x, y in d.internal_links(p, state):
                union(d.key(p.id, x), d.key(p.id, y))
        return find

    def solve(self, *, pulls: bool = True) -> tuple:
        """(find, {node: volts or None}). pulls=False leaves out the board's internal pulls
        (what the outside world drives onto the pins)."""
        d = self.d
        find = self._nodes()
        b = d.board_id
        fixed: dict = {}
        rank: dict = {}

        def fix(key, volts, r, what):
            n = find(key)
            if n in fixed and abs(fixed[n] - volts) > 1e-9:
                msg = f"short circuit: {what} drives {volts:.2f} V against {fixed[n]:.2f} V"
                if msg not in self.warnings:
                    self.warnings.append(msg)
                if rank[n] >= r:  # supplies beat pins, pins beat a potentiometer
                    return
            fixed[n], rank[n] = volts, r

        fix((b, "GND"), 0.0, 3, "GND")
        fix((b, "3V3"), V33, 3, "3V3")
        fix((b, "5V"), 5.0, 3, "5V")
        for g, m in self.mode.items():
            if m == 3 or (m == 7 and not self.out.get(g)):
                fix((b, str(g)), V33 * self.out.get(g, 0), 2, f"GPIO {g}")
        for pid, pos in self.pot.items():
            fix((pid, "SIG"), V33 * pos, 1, pid)
        # conductances between nodes; pulls go to pseudo-nodes with a fixed voltage
        edges: list[tuple[object, object, float]] = []
        for p in d.parts.values():
            if p.type in RESISTOR_TYPES:
                try:
                    g = 1.0 / max(parse_ohms(p.attrs.get("value")), 1e-3)
                except ValueError:
                    g = 1e-3
                edges.append((find(d.key(p.id, "1")), find(d.key(p.id, "2")), g))
        if pulls:
            for g, pl in self.pull.items():
                m = self.mode.get(g, 0)
                driven = m == 3 or (m == 7 and not self.out.get(g))
                if pl in (1, 2) and not driven:
                    rail = ("pull", "up" if pl == 2 else "down")
                    fixed[rail] = V33 if pl == 2 else 0.0
                    edges.append((find((b, str(g))), rail, 1.0 / PULL_OHMS))
        adj: dict = {}
        for x, y, g in edges:
            if x != y:
                adj.setdefault(x, []).append((y, g))
                adj.setdefault(y, []).append((x, g))
        volts: dict = dict(fixed)
        seen: set = set()
        for start in list(adj):
            if start in fixed or start in seen:
                continue
            comp, todo, touches = [], [start], False
            seen.add(start)
            while todo:
                n = todo.pop()
                comp.append(n)
                for m, _ in adj.get(n, ()):
                    if m in fixed:
                        touches = True
                    elif m not in seen:
                        seen.add(m)
                        todo.append(m)
            if not touches:
                continue
            idx = {n: i for i, n in enumerate(comp)}
            size = len(comp)
            a = [[0.0] * (size + 1) for _ in range(size)]
            for n in comp:
                i = idx[n]
                for m, g in adj[n]:
                    a[i][i] += g
                    if m in fixed:
                        a[i][size] += g * fixed[m]
                    else:
                        a[i][idx[m]] -= g
            for n, v in zip(comp, _gauss(a)):
                volts[n] = v
        return find, volts

    # -- reading -------------------------------------------------------------------------

    def voltage(self, part: str, pin: str, solved=None) -> float | None:
        find, volts = solved or self.solve()
        return volts.get(find(self.d.key(part, pin)))

    def level(self, part: str, pin: str, solved=None) -> int:
        v = self.voltage(part, pin, solved)
        return 1 if v is not None and v > DIGITAL_THRESHOLD else 0

    def led(self, part: str, solved=None) -> bool:
        solved = solved or self.solve()
        a, c = self.voltage(part, "A", solved), self.voltage(part, "C", solved)
        return a is not None and c is not None and a - c > LED_ON_VOLTS

    def rgb(self, part: str, solved=None) -> tuple[int, int, int]:
        solved = solved or self.solve()
        anode = str(self.d.part(part).attrs.get("common", "anode")).lower() != "cathode"
        com = self.voltage(part, "COM", solved)
        out = []
        for ch in ("R", "G", "B"):
            v = self.voltage(part, ch, solved)
            on = v is not None and com is not None and ((com - v) if anode else (v - com)) > LED_ON_VOLTS
            out.append(1 if on else 0)
        return tuple(out)

    def external_microvolts(self, gpios) -> dict[int, int]:
        """What the outside world puts on each GPIO (without the board's own pulls), in µV;
        -1 where nothing drives it."""
        find, volts = self.solve(pulls=False)
        out = {}
        for g in gpios:
            v = volts.get(find(self.d.key(self.d.board_id, str(g))))
            out[g] = -1 if v is None else max(0, round(v * 1e6))
        return out


def _gauss(a: list[list[float]]) -> list[float]:
    n = len(a)
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(a[r][col]))
        if abs(a[piv][col]) < 1e-15:
            continue
        a[col], a[piv] = a[piv], a[col]
        for r in range(n):
            if r != col and a[r][col]:
                f = a[r][col] / a[col][col]
                for c in range(col, n + 1):
                    a[r][c] -= f * a[col][c]
    return [a[i][n] / a[i][i] if a[i][i] else 0.0 for i in range(n)]
