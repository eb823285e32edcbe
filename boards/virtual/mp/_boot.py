# Boot sequence of the virtual board, run as `micropython -i _boot.py` (the -i gives the REPL
# once main.py ends or is interrupted, as on a board). Like the ESP32's frozen _boot.py it
# prepares the filesystem, then runs boot.py and main.py from the flash directory ($VB_FLASH),
# which becomes "/" (a VfsPosix mount), with sys.path = ["", ".frozen", "/lib"] as on a board.
import gc
import os
import sys

import machine  # the emulation: connects to the harness before any firmware runs
import network
import vfs

_f = os.getenv("VB_FLASH")
if _f:
    vfs.umount("/")
    vfs.mount(vfs.VfsPosix(_f), "/")
    os.chdir("/")
sys.path[:] = ["", ".frozen", "/lib"]
gc.collect()
machine._tx("M%d\n" % gc.mem_alloc())
del _f, vfs, network


def _run(_n):
    try:
        os.stat(_n)
    except OSError:
        return
    with open(_n) as f:
        src = f.read()
    _c = compile(src, _n, "exec")
    del src
    gc.collect()
    exec(_c, globals())


_run("boot.py")
if not os.getenv("VB_NOMAIN"):  # a soft reset in the raw REPL does not run main.py
    _run("main.py")
