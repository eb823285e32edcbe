"""Run a virtual board by hand: `python -m boards.virtual <board dir> [--pty]`.

Starts the board (diagram.json from the directory, firmware by the repository's layout or
--file/--flash), prints its serial output, and with --pty the path for mpremote:

    python -m boards.virtual boards/station --pty
    mpremote connect /tmp/vboard-station-.../tty resume fs ls

Ctrl-C stops it (the board's process is stopped by pid).
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from .board import VirtualBoard
from .diagram import DiagramError
from .errors import BoardError
from .flash import cli_flash_files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m boards.virtual", description=__doc__.split("\n\n")[0])
    ap.add_argument("board_dir", help="directory with diagram.json (e.g. boards/car)")
    ap.add_argument("--pty", action="store_true", help="offer the serial port as a pty for mpremote")
    ap.add_argument("--file", action="append", default=[], metavar="DEST=SRC",
                    help="put host file/dir SRC at DEST in the flash (after the defaults)")
    ap.add_argument("--flash", help="use (and keep) this directory as the flash")
    ap.add_argument("--heapsize", default="96k")
    ap.add_argument("--no-proxy", action="store_true", help="leave config.json's addresses alone")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the board on kill too
    board_dir = Path(args.board_dir)
    try:
        files = cli_flash_files(board_dir, args.flash, args.file)
    except ValueError as e:
        ap.error(str(e))
    try:
        board = VirtualBoard(board_dir, files, flash_dir=args.flash, heapsize=args.heapsize,
                             serial="pty" if args.pty else None, proxy=not args.no_proxy,
                             name=board_dir.resolve().name)
        board.start()
    except (BoardError, DiagramError, OSError) as e:
        print(f"virtual board: {e}", file=sys.stderr)
        return 2
    try:
        print(f"virtual board {board.name}: pid {board.pid}, flash {board.flash}", file=sys.stderr)
        if board.pty_path:
            print(f"serial pty: {board.pty_path}  (mpremote connect {board.pty_path} resume ...)",
                  file=sys.stderr)
        shown = 0
        while True:
            text = board.serial_text()
            if len(text) > shown:
                sys.stdout.write(text[shown:])
                sys.stdout.flush()
                shown = len(text)
            time.sleep(0.1)
    except KeyboardInterrupt:
        return 0
    finally:
        board.stop()


if __name__ == "__main__":
    sys.exit(main())
