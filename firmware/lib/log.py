"""Serial console logging for both boards: one line per call, e.g. ``[I] mqtt: connected``.

    import log
    log.level("warn")          # debug | info | warn | error (default info)
    log.info("mqtt:", "connected to", host, port)

``debug/info/warn/error(*args)`` print their arguments separated by spaces after a tag
(``[D] [I] [W] [E]``) to stdout, which is the serial console on a board and the virtual
board's serial. A call below the current level costs one comparison and allocates nothing.
"""

from micropython import const

_DEBUG = const(0)
_INFO = const(1)
_WARN = const(2)

LEVELS = ("debug", "info", "warn", "error")

_level = _INFO


def level(name):
    """Set the level by name (one of LEVELS); ValueError for an unknown name."""
    global _level
    _level = LEVELS.index(name)


def debug(*args):
    if _level <= _DEBUG:
        print("[D]", *args)


def info(*args):
    if _level <= _INFO:
        print("[I]", *args)


def warn(*args):
    if _level <= _WARN:
        print("[W]", *args)


def error(*args):
    print("[E]", *args)
