"""systemd's own checks of the deployment units (`systemd-analyze verify`)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def verify(unit: Path) -> tuple[int, str]:
    """`systemd-analyze verify` of one unit file: its exit status and output."""
    if SYSTEMD_ANALYZE is None:
        raise FileNotFoundError("systemd-analyze not installed (Debian package 'systemd'; scripts/setup installs it)")
    done = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)
    return done.returncode, done.stdout + done.stderr


def about(unit: Path, output: str) -> list[str]:
    """Lines of systemd-analyze output about this unit (not about other units on the machine)."""
    return [line for line in output.splitlines() if unit.name in line or str(unit) in line]
