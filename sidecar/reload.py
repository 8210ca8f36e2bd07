"""Watch policy files and apply valid changes; keep the last good policy otherwise (S8).

Polling, not inotify: a Kubernetes ConfigMap update is an atomic swap of the `..data`
symlink, which stat()-ing the resolved targets sees and inotify on the file does not.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from sidecar.policy.model import Policy

logger = logging.getLogger("egress_sidecar")

Fingerprint = tuple[tuple[str, int, int, int], ...]


def fingerprint(paths: Sequence[str]) -> Fingerprint:
    """(resolved path, inode, size, mtime) of every file under the given paths."""
    entries: list[tuple[str, int, int, int]] = []
    for raw in paths:
        path = Path(raw)
        candidates = sorted(path.iterdir()) if path.is_dir() else [path]
        for candidate in candidates:
            try:
                real = candidate.resolve()
                st = os.stat(real)
            except OSError:
                entries.append((str(candidate), -1, -1, -1))
                continue
            if real.is_file():
                entries.append((str(real), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(entries)


class PolicyWatcher:
    def __init__(
        self,
        paths: Sequence[str],
        load: Callable[[Sequence[str]], Policy],
        apply: Callable[[Policy], None],
        reject: Callable[[Exception], None],
        interval: float,
    ) -> None:
        self._paths = list(paths)
        self._load = load
        self._apply = apply
        self._reject = reject
        self._interval = interval
        self._seen: Fingerprint | None = None

    def prime(self) -> None:
        """Remember the files as they were when the starting policy was loaded."""
        self._seen = fingerprint(self._paths)

    def check_once(self) -> bool:
        """Load and apply if the files changed. Returns True if a new policy was applied."""
        try:
            current = fingerprint(self._paths)
        except OSError as exc:
            current = (("<unreadable>", 0, 0, hash(str(exc))),)
        if current == self._seen:
            return False
        self._seen = current
        # Any failure, loading or applying, is a rejected reload: the last good policy
        # stays (apply validates everything before it swaps anything) and the watcher
        # lives on to apply a later good file.
        try:
            policy = self._load(self._paths)
            self._apply(policy)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the last good policy
            self._reject(exc)
            return False
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            # Parsing is small and synchronous; run it off the loop anyway so a huge
            # policy file cannot stall connections.
            try:
                await asyncio.to_thread(self.check_once)
            except Exception as exc:  # noqa: BLE001 - a failing reject must not end the watch
                logger.error("policy watcher: %s", type(exc).__name__)
