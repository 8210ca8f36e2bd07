"""Stopping a process a test started."""

from __future__ import annotations

import subprocess
from typing import Any


def terminate(proc: subprocess.Popen[Any], grace: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL if it is still running after `grace` seconds; its exit
    status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            # SIGKILL cannot be ignored; the bound is only for a loaded machine's reaping.
            proc.wait(60)
    return proc.returncode
