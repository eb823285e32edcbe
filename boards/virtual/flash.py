"""The board's flash: which host files go where on it, and the directory the board mounts as
"/" (laid out as in docs/firmware.md: main.py, config.json, the board's modules, lib/)."""
from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from .errors import BoardError

ROOT = Path(__file__).resolve().parent.parent.parent
VENDOR_UMQTT = Path(__file__).resolve().parent / "vendor" / "umqtt" / "simple.py"
UMQTT = "lib/umqtt/simple.py"  # frozen into the ESP32 firmware: a file on this board
IGNORE = ("__pycache__", "*.pyc", "tests", "*.md")  # host-side files that stay off a board


def vendored_umqtt() -> Path:
    """boards/virtual/vendor/umqtt/simple.py, fetched on first use if missing."""
    if not VENDOR_UMQTT.exists():
        sys.path.insert(0, str(ROOT / "scripts"))
        try:
            import fetch_umqtt
        finally:
            sys.path.pop(0)
        try:
            fetch_umqtt.fetch(log=lambda m: None)
        except fetch_umqtt.FetchError as e:
            raise BoardError(f"umqtt.simple is missing and could not be fetched: {e}") from e
    return VENDOR_UMQTT


def fill(flash: Path, files: Mapping[str, object]) -> None:
    """Copy `files` ({board path: host file or directory, or bytes}; "" or "/" is the root)
    into the flash directory, then umqtt.simple unless they brought their own."""
    flash.mkdir(parents=True, exist_ok=True)
    copy_into(flash, files)
    umqtt = flash / UMQTT
    if not umqtt.exists():
        umqtt.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(vendored_umqtt(), umqtt)


def copy_into(flash: Path, files: Mapping[str, object]) -> None:
    """Copy {board path: host file or directory, or bytes} into the flash directory."""
    for dest, src in files.items():
        rel = str(dest).strip("/")
        target = flash / rel if rel else flash
        if isinstance(src, (bytes, bytearray)):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(bytes(src))
            continue
        src = Path(src)
        if src.is_dir():
            shutil.copytree(src, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*IGNORE))
        elif src.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
        else:
            raise BoardError(f"no such file for {dest!r}: {src}")


def list_files(flash: Path) -> list[str]:
    """Paths of the files in the flash, relative, sorted ("lib/umqtt/simple.py", ...)."""
    return sorted(str(p.relative_to(flash)) for p in flash.rglob("*") if p.is_file())


def default_flash_files(board_dir: str | Path) -> dict[str, Path]:
    """The firmware for a board directory by the repository's layout: boards/<name>/ gets
    firmware/lib as /lib, firmware/<name>/ at the root, and boards/<name>/config.json if there
    is one (else whatever config.json firmware/<name>/ has)."""
    board_dir = Path(board_dir)
    files: dict[str, Path] = {}
    lib = ROOT / "firmware" / "lib"
    app = ROOT / "firmware" / board_dir.resolve().name
    if lib.is_dir():
        files["lib"] = lib
    if app.is_dir():
        files[""] = app
    if (board_dir / "config.json").is_file():
        files["config.json"] = board_dir / "config.json"
    return files


def cli_flash_files(board_dir: str | Path, flash: str | None, specs: list[str]) -> dict[str, Path]:
    """The files a command line asks for: the board's defaults (none with --flash) plus
    every --file DEST=SRC; ValueError for a spec without '='."""
    files: dict[str, Path] = {} if flash else dict(default_flash_files(board_dir))
    for spec in specs:
        dest, sep, src = spec.partition("=")
        if not sep:
            raise ValueError(f"--file wants DEST=SRC, got {spec!r}")
        files[dest] = Path(src)
    return files
