"""The virtual board's one error type."""


class BoardError(RuntimeError):
    """The board cannot run: no micropython binary, a missing file for the flash, a boot that
    does not come up, a board that keeps dying, a write to a board that is not running."""
