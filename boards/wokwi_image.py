"""Build the flash image Wokwi runs for a board: MicroPython plus the board's files.

    python -m boards.wokwi_image boards/car --micropython ESP32_GENERIC-20260406-v1.28.0.bin
    python -m boards.wokwi_image boards/station --micropython fw.bin --config my-config.json

Wokwi (wokwi-cli, the VS Code extension, wokwi/wokwi-ci-action) simulates a firmware image; it
has no way to put .py files on a MicroPython board's filesystem (wokwi.com's web editor copies
project files into the flash, wokwi-cli does not). So, as Wokwi's own MicroPython-on-ESP32
example does, the files go into the image itself:

    0x000000  zeros
    0x001000  the official MicroPython ESP32 firmware .bin as downloaded (bootloader,
              partition table at 0x8000, MicroPython at 0x10000), unchanged
    vfs       a LittleFS v2 filesystem (4096-byte blocks) filling the firmware's "vfs" data
              partition (0x200000, 2 MiB on ESP32_GENERIC), holding exactly what the virtual
              board's flash holds: /main.py and the board's other modules
              (firmware/<board>/), /lib/*.py (firmware/lib/) and /config.json (the board's
              default, boards/<board>/config.json, or --config)

written to boards/<board>/build/flash.bin (4 MiB), the `firmware` of the board's wokwi.toml.
MicroPython's boot mounts the vfs partition as "/" (it only formats it when it cannot mount
it) and runs /main.py. umqtt.simple is not added: the official ESP32 build has it frozen in.

The vfs partition's place is read from the partition table inside the firmware, not assumed.
Needs littlefs-python (pip package `littlefs-python`).
"""
from __future__ import annotations

import argparse
import fnmatch
import struct
import sys
from pathlib import Path

from boards.virtual.flash import IGNORE, default_flash_files

FIRMWARE_OFFSET = 0x1000  # where esptool writes the MicroPython ESP32 .bin
PARTITION_TABLE = 0x8000  # flash address of the partition table
BLOCK_SIZE = 4096  # the ESP32 flash sector: MicroPython's block device block size
PROG_SIZE = 256  # as in Wokwi's MicroPython example; MicroPython mounts it with its own sizes
LFS_DISK_VERSION = 0x00020000  # littlefs on-disk v2.0: every littlefs v2 mounts it

_ENTRY = struct.Struct("<2sBBII16sI")  # magic, type, subtype, offset, size, label, flags
_MAGIC = b"\xaa\x50"
_MD5_MAGIC = b"\xeb\xeb"


class ImageError(Exception):
    """The firmware or the files do not make a usable image."""


def partitions(firmware: bytes, base: int = FIRMWARE_OFFSET) -> list[dict]:
    """The partition table inside a firmware image written at flash address `base`:
    [{"label", "type", "subtype", "offset", "size"}, ...]."""
    start = PARTITION_TABLE - base
    out = []
    for pos in range(start, start + 0xC00, _ENTRY.size):
        raw = firmware[pos:pos + _ENTRY.size]
        if len(raw) < _ENTRY.size or raw[:2] != _MAGIC:
            if raw[:2] in (_MD5_MAGIC, b"\xff\xff") or not out:
                break
            raise ImageError(f"bad partition table entry at 0x{base + pos:x}")
        _, ptype, subtype, offset, size, label, _ = _ENTRY.unpack(raw)
        out.append({"label": label.rstrip(b"\0").decode("ascii", "replace"), "type": ptype,
                    "subtype": subtype, "offset": offset, "size": size})
    if not out:
        raise ImageError(f"no partition table at 0x{PARTITION_TABLE:x}: not a MicroPython ESP32 "
                         "firmware .bin (the one written at 0x1000)")
    return out


def vfs_partition(firmware: bytes) -> tuple[int, int]:
    """(offset, size) of the firmware's "vfs" data partition, MicroPython's filesystem."""
    for p in partitions(firmware):
        if p["label"] == "vfs" and p["type"] == 0x01:
            return p["offset"], p["size"]
    raise ImageError("the firmware's partition table has no 'vfs' data partition")


def _ignored(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pat) for pat in IGNORE)


def board_files(board_dir: str | Path, config: str | Path | None = None) -> dict[str, bytes]:
    """{path on the board: contents}: the files the virtual board's flash gets for this
    board directory (boards.virtual.flash.default_flash_files), without umqtt."""
    board_dir = Path(board_dir)
    sources = dict(default_flash_files(board_dir))
    if config is not None:
        sources["config.json"] = Path(config)
    if "config.json" not in sources and "" not in sources:
        raise ImageError(f"{board_dir}: no firmware for this board (firmware/{board_dir.resolve().name}/)")
    files: dict[str, bytes] = {}
    for dest, src in sources.items():
        dest = str(dest).strip("/")
        src = Path(src)
        if src.is_dir():
            for f in sorted(src.rglob("*")):
                rel = f.relative_to(src)
                if f.is_file() and not any(_ignored(part) for part in rel.parts):
                    files[str(Path(dest) / rel) if dest else str(rel)] = f.read_bytes()
        elif src.is_file():
            files[dest] = src.read_bytes()
        else:
            raise ImageError(f"no such file for {dest!r}: {src}")
    for need in ("main.py", "config.json"):
        if need not in files:
            raise ImageError(f"{board_dir}: the image would have no /{need}")
    return files


def littlefs_image(files: dict[str, bytes], size: int) -> bytes:
    """A LittleFS v2 filesystem of `size` bytes holding `files`."""
    try:
        from littlefs import LittleFS
    except ImportError:
        raise ImageError("littlefs-python is not installed (pip install littlefs-python)") from None
    if size % BLOCK_SIZE:
        raise ImageError(f"filesystem size 0x{size:x} is not a multiple of {BLOCK_SIZE}")
    fs = LittleFS(block_size=BLOCK_SIZE, block_count=size // BLOCK_SIZE, prog_size=PROG_SIZE,
                  disk_version=LFS_DISK_VERSION)
    for path in sorted(files):
        parts = path.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            try:
                fs.mkdir(d)
            except FileExistsError:
                pass
        with fs.open(path, "wb") as f:
            f.write(files[path])
    fs.unmount()
    data = bytes(fs.context.buffer)
    if len(data) != size:
        raise ImageError(f"littlefs made {len(data)} bytes, wanted {size}")
    return data


def build_image(firmware: bytes, files: dict[str, bytes]) -> bytes:
    """The whole flash: firmware at 0x1000, the files in its vfs partition."""
    if not firmware or firmware[0] != 0xE9:
        raise ImageError("not an ESP32 image: the MicroPython .bin starts with 0xE9")
    offset, size = vfs_partition(firmware)
    if FIRMWARE_OFFSET + len(firmware) > offset:
        raise ImageError(f"the firmware ({len(firmware)} bytes at 0x{FIRMWARE_OFFSET:x}) runs into "
                         f"the vfs partition at 0x{offset:x}")
    image = bytearray(offset + size)
    image[FIRMWARE_OFFSET:FIRMWARE_OFFSET + len(firmware)] = firmware
    image[offset:offset + size] = littlefs_image(files, size)
    return bytes(image)


def build(board_dir: str | Path, micropython: str | Path, out: str | Path | None = None,
          config: str | Path | None = None) -> Path:
    """Write the board's flash image (default boards/<board>/build/flash.bin); its path."""
    board_dir = Path(board_dir)
    files = board_files(board_dir, config)
    image = build_image(Path(micropython).read_bytes(), files)
    out = Path(out) if out else board_dir / "build" / "flash.bin"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(image)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m boards.wokwi_image",
                                 description="Build the flash image (MicroPython + the board's "
                                             "files in LittleFS) that the board's wokwi.toml names.")
    ap.add_argument("board_dir", help="the board's directory (boards/car or boards/station)")
    ap.add_argument("--micropython", required=True, metavar="BIN",
                    help="the official MicroPython ESP32_GENERIC .bin (the one flashed at 0x1000)")
    ap.add_argument("-o", "--out", help="output file (default BOARD_DIR/build/flash.bin)")
    ap.add_argument("--config", help="config.json to put on the board instead of the board's default")
    args = ap.parse_args(argv)
    try:
        files = board_files(args.board_dir, args.config)
        out = build(args.board_dir, args.micropython, args.out, args.config)
        offset, size = vfs_partition(Path(args.micropython).read_bytes())
    except (ImageError, OSError) as e:
        print(f"wokwi_image: {e}", file=sys.stderr)
        return 1
    print(f"{out}: MicroPython at 0x{FIRMWARE_OFFSET:x}, LittleFS at 0x{offset:x} "
          f"({size // 1024} KiB) with {len(files)} files:")
    for path in sorted(files):
        print(f"  /{path} ({len(files[path])} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
