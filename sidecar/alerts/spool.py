"""Per-sink delivery queue backed by a spool directory.

Layout under the spool directory (an emptyDir in Kubernetes)::

    <spool>/<sink>/<seq>-<fingerprint>-<phase>.json   one pending notification
    <spool>/state.json                                 active alerts (for restarts)
    <spool>/quarantine/                                files that failed to parse

At most two entries per fingerprint are pending per sink: the latest ``open`` state
(trigger/update; a newer one replaces an older one and keeps ``trigger`` if the older
was a trigger) and a ``close`` (resolve). Order is by sequence number, so a resolve
is never overtaken by the trigger it closes.

Memory is the working copy, mutated only on the event loop thread; the disk follows
through a single worker thread (so writes and unlinks keep their order and an fsync
never stalls the proxy). Writes are crash-safe: temp file, fsync, rename. At start-up
the directory is read back; a file that does not parse is moved to ``quarantine/``
and counted, never fatal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

log = logging.getLogger("sidecar.alerts")

_FILE = re.compile(r"^(\d{1,20})-([0-9a-f]{16})-(open|close)\.json$")
_KINDS = ("trigger", "update", "resolve")
MAX_FILE_BYTES = 256 * 1024


@dataclasses.dataclass(slots=True)
class Entry:
    seq: int
    kind: str
    fingerprint: str
    alert: dict[str, Any]
    enqueued: float
    acked: bool = False
    filename: str | None = None

    @property
    def phase(self) -> str:
        return "close" if self.kind == "resolve" else "open"

    @property
    def key(self) -> tuple[str, str]:
        return (self.fingerprint, self.phase)

    @property
    def id(self) -> str:
        return f"{self.fingerprint}-{self.seq}"

    def record(self) -> dict[str, Any]:
        return {
            "v": 1,
            "seq": self.seq,
            "kind": self.kind,
            "fingerprint": self.fingerprint,
            "enqueued": self.enqueued,
            "alert": self.alert,
        }

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "seq": self.seq,
            "kind": self.kind,
            "fingerprint": self.fingerprint,
            "alert": self.alert,
        }


DiskOp = Callable[[], None]


class SequenceNumbers:
    """Monotonic sequence numbers that also increase across restarts (time based)."""

    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last = max(time.time_ns(), self.last + 1)
        return self.last

    def observe(self, seq: int) -> None:
        self.last = max(self.last, seq)


def atomic_write(path: str, data: bytes) -> None:
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{os.path.basename(path)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def quarantine(spool_dir: str, path: str, label: str) -> None:
    qdir = os.path.join(spool_dir, "quarantine")
    os.makedirs(qdir, mode=0o700, exist_ok=True)
    target = os.path.join(qdir, f"{int(time.time())}-{label}-{os.path.basename(path)}")
    try:
        os.replace(path, target)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)


class SinkQueue:
    def __init__(
        self,
        name: str,
        spool_dir: str | None,
        max_queue: int,
        sequence: SequenceNumbers,
        *,
        on_spool_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        self.spool_dir = spool_dir
        self.directory = os.path.join(spool_dir, name) if spool_dir else None
        self.max_queue = max_queue
        self.sequence = sequence
        self._entries: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        self._on_spool_error = on_spool_error

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------- start-up

    def load(self) -> tuple[int, int]:
        """Read pending entries back from disk (blocking; run in a thread).

        Returns (loaded, quarantined)."""
        if self.directory is None or self.spool_dir is None:
            return 0, 0
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        found: list[Entry] = []
        bad = 0
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            if name.startswith(".tmp-"):
                with contextlib.suppress(OSError):
                    os.unlink(path)  # a write that never completed
                continue
            try:
                entry = self._parse(name, path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning(
                    "alert spool: quarantining %s/%s (%s)", self.name, name, type(exc).__name__
                )
                quarantine(self.spool_dir, path, self.name)
                bad += 1
                continue
            found.append(entry)
        found.sort(key=lambda e: e.seq)
        for entry in found:
            self.sequence.observe(entry.seq)
            old = self._entries.pop(entry.key, None)
            if old is not None and old.filename:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.directory, old.filename))
            self._entries[entry.key] = entry
        return len(self._entries), bad

    def _parse(self, name: str, path: str) -> Entry:
        match = _FILE.match(name)
        if not match:
            raise ValueError("unexpected file name")
        if os.path.getsize(path) > MAX_FILE_BYTES:
            raise ValueError("too large")
        with open(path, "rb") as fh:
            record = json.loads(fh.read())
        if not isinstance(record, dict) or record.get("v") != 1:
            raise ValueError("unknown record version")
        seq, fingerprint = int(match.group(1)), match.group(2)
        kind = record["kind"]
        alert = record["alert"]
        if (
            kind not in _KINDS
            or record["seq"] != seq
            or record["fingerprint"] != fingerprint
            or not isinstance(alert, dict)
            or alert.get("fingerprint") != fingerprint
        ):
            raise ValueError("inconsistent record")
        for field in ("reason", "severity", "destination", "summary", "count", "status"):
            if field not in alert:
                raise KeyError(field)
        entry = Entry(
            seq=seq,
            kind=kind,
            fingerprint=fingerprint,
            alert=alert,
            enqueued=float(record["enqueued"]),
            filename=name,
        )
        if entry.phase != match.group(3):
            raise ValueError("phase mismatch")
        return entry

    # ------------------------------------------------------------ loop side

    def put(
        self, kind: str, fingerprint: str, alert: dict[str, Any]
    ) -> tuple[Entry | None, list[DiskOp]]:
        """Queue one notification (memory now; returns the disk work to do).

        Returns (None, []) when the queue is full and the notification is dropped."""
        phase = "close" if kind == "resolve" else "open"
        old = self._entries.get((fingerprint, phase))
        if old is None and len(self._entries) >= self.max_queue:
            return None, []
        if old is not None and old.kind == "trigger" and kind == "update":
            kind = "trigger"  # the page has not gone out yet: keep it a page
        entry = Entry(
            seq=self.sequence.next(),
            kind=kind,
            fingerprint=fingerprint,
            alert=alert,
            enqueued=old.enqueued if old else time.time(),
        )
        if old is not None:
            del self._entries[old.key]
            old.acked = True
        self._entries[entry.key] = entry
        ops: list[DiskOp] = []
        if self.directory is not None:
            entry.filename = f"{entry.seq:020d}-{fingerprint}-{phase}.json"
            ops.append(lambda: self._write(entry))
            if old is not None and old.filename:
                stale = old.filename
                ops.append(lambda: self._unlink(stale))
        return entry, ops

    def peek(self, limit: int) -> list[Entry]:
        out: list[Entry] = []
        for entry in self._entries.values():
            out.append(entry)
            if len(out) >= limit:
                break
        return out

    def ack(self, entries: list[Entry]) -> list[DiskOp]:
        """Remove delivered (or dropped) entries; returns the unlinks to do."""
        ops: list[DiskOp] = []
        for entry in entries:
            if self._entries.get(entry.key) is entry:
                del self._entries[entry.key]
            entry.acked = True
            if self.directory is not None and entry.filename:
                ops.append(functools.partial(self._unlink, entry.filename))
        return ops

    # ----------------------------------------------------------- disk thread

    def _write(self, entry: Entry) -> None:
        assert self.directory is not None and entry.filename is not None
        if entry.acked:
            return
        data = json.dumps(entry.record(), separators=(",", ":")).encode()
        try:
            atomic_write(os.path.join(self.directory, entry.filename), data)
        except OSError as exc:
            log.warning("alert spool: cannot write for sink %s: %s", self.name, exc.strerror)
            self._on_spool_error()
            return
        if entry.acked:  # delivered while we were writing
            self._unlink(entry.filename)

    def _unlink(self, filename: str) -> None:
        assert self.directory is not None
        try:
            os.unlink(os.path.join(self.directory, filename))
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("alert spool: cannot remove for sink %s: %s", self.name, exc.strerror)
            self._on_spool_error()
