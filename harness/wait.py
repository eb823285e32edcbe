"""The harness's one bounded wait: until a condition holds, or fail naming what was awaited."""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(pred: Callable[[], T], timeout: float = 15.0, what: str | Callable[[], str] = "the condition",
               alive: Callable[[], object] | None = None, *, every: float = 0.05,
               cond: threading.Condition | None = None) -> T:
    """pred()'s first truthy value; TimeoutError naming `what` after `timeout` s.

    pred() runs every `every` s, or, given `cond` (the condition its data changes under), each
    time cond is notified and at least every `every` s, holding cond's lock. `what` may be a
    function, called at the timeout, so the message can show how things stand then. alive()
    runs after each false pred() and raises when waiting longer is pointless (the process that
    would make pred() true has ended).
    """
    deadline = time.monotonic() + timeout
    with cond if cond is not None else contextlib.nullcontext():
        while True:
            got = pred()
            if got:
                return got
            if alive is not None:
                alive()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{what() if callable(what) else what}: not within {timeout:g} s")
            if cond is not None:
                cond.wait(min(left, every))
            else:
                time.sleep(min(left, every))
