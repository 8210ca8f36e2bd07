"""One proxy process of `run --workers N` (N > 1): `python -m sidecar.worker CONTROL_FD`.

Started by the supervisor (sidecar/supervisor.py), never by hand. It gets everything
over its control socket (a socketpair end): the resolved settings, the policy in force,
its number and the listening sockets it inherited; it runs the same proxy as
`--workers 1` (sidecar.runner._serve) minus what the pod has once. What it tells the
supervisor:

- decision lines, each in a frame of its own, which the supervisor writes whole to
  the pod's one stdout: lines of different workers never interleave or tear, whatever
  their length (O_APPEND/PIPE_BUF atomicity would need lines under 4 KiB);
- refusals: each violation, for the supervisor's one alert pipeline (one page per
  group for the pod, not one per worker), sent before its decision line on the same
  ordered stream, so a refusal's line is never seen before it was counted for alerting;
- `ready`, and which policy it switched to (the supervisor hands every worker the
  same validated policy object: one reload, one digest).

Metrics go to prometheus-client's multiprocess files (PROMETHEUS_MULTIPROC_DIR, set by
the supervisor), which the supervisor's admin endpoint sums.

Frames both ways: a kind byte, a 4-byte big-endian length, the body (a decision line as
it is, or a pickle). Pickle is safe here: both ends are this program, over a socketpair
no other process holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import socket
import struct
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sidecar.decision import Decision
from sidecar.shared_connections import SharedConnectionTable

if TYPE_CHECKING:
    from sidecar.addons.usage import UsageGate
    from sidecar.policy.model import Policy
    from sidecar.settings import Settings

_HEAD = struct.Struct(">cI")  # kind, length
LINE = b"L"  # a decision line, relayed as it is
MESSAGE = b"M"  # a pickled tuple


def frame(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEAD.pack(MESSAGE, len(body)) + body


def line_frame(line: bytes) -> bytes:
    return _HEAD.pack(LINE, len(line)) + line


class Frames:
    """Incremental parser: feed bytes, get (kind, body) for every complete frame."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self._buffer += data
        found = []
        offset = 0
        while len(self._buffer) - offset >= _HEAD.size:
            kind, size = _HEAD.unpack_from(self._buffer, offset)
            end = offset + _HEAD.size + size
            if end > len(self._buffer):
                break
            found.append((kind, bytes(self._buffer[offset + _HEAD.size : end])))
            offset = end
        del self._buffer[:offset]
        return found


def unpickle(body: bytes) -> tuple[Any, ...]:
    message: tuple[Any, ...] = pickle.loads(body)  # noqa: S301 - our own process, see above
    return message


async def read_frame(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message, or None at end of stream."""
    try:
        _, size = _HEAD.unpack(await reader.readexactly(_HEAD.size))
        body = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return unpickle(body)


def read_frame_blocking(sock: socket.socket) -> tuple[Any, ...]:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError("supervisor closed the control socket")
            data += chunk
        return data

    _, size = _HEAD.unpack(exactly(_HEAD.size))
    return unpickle(exactly(size))


class DecisionStream:
    """The worker's decision log stream: each line, whole, to the supervisor, in order
    with the refusals sent for alerting (sidecar.records.DecisionLog writes here)."""

    def __init__(self, link: WorkerLink) -> None:
        self._link = link

    def write(self, text: str) -> int:
        self._link.send_raw(line_frame(text.encode()))
        return len(text)

    def flush(self) -> None:
        pass


class WorkerLink:
    """The worker's side of its supervisor: listeners, refusals out, policies in."""

    def __init__(
        self,
        index: int,
        control: socket.socket,
        listener_fds: dict[str, list[int]],
        digest: str,
        connection_table: SharedConnectionTable,
    ) -> None:
        self.index = index
        self.connection_table = connection_table  # open connections, counted for the pod
        self.digest = digest  # of the policy in force here
        # Usage limits and suspensions (issue 15) are shared through their store (one
        # SQLite file in --state-dir, or Redis); what the gate keeps in memory (a
        # tenant's baseline) is told here when an admin resumes the tenant.
        self.usage_gate: UsageGate | None = None
        self._control = control
        self._listener_fds = listener_fds
        self._writer: asyncio.StreamWriter | None = None
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._task: asyncio.Task[None] | None = None

    async def attach(self) -> None:
        """Accept on the inherited sockets; open the control stream."""
        from sidecar import listeners

        listeners.use_inherited(
            {
                spec: [socket.socket(fileno=fd) for fd in fds]
                for spec, fds in self._listener_fds.items()
            }
        )
        self._reader, self._writer = await asyncio.open_connection(sock=self._control)
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._flush()  # what was recorded before attach()

    def send(self, *message: Any) -> None:
        self.send_raw(frame(message))

    def send_raw(self, data: bytes) -> None:
        """Queued, and sent once per event loop iteration: under load, one write for
        many lines instead of a system call per request (order is kept)."""
        self._pending.append(data)
        if self._loop is None or self._flush_scheduled:
            return
        self._flush_scheduled = True
        if threading.get_ident() == self._loop_thread:
            self._loop.call_soon(self._flush)
        else:  # a decision recorded off the loop (a worker thread)
            self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        if self._writer is not None and not self._writer.is_closing() and pending:
            self._writer.write(b"".join(pending))

    @property
    def decision_stream(self) -> DecisionStream:
        return DecisionStream(self)

    def forward_violation(self, decision: Decision) -> None:
        """Recorder sink: refusals (and audit would_blocks) to the pod's alerting."""
        if not decision.allowed:
            self.send("violation", decision)

    async def running(
        self,
        applied: Callable[[Policy], None],
        shutdown: Callable[[], None],
        listeners_bound: Callable[[], bool],
    ) -> None:
        self.send("ready", self.digest, listeners_bound())
        self._task = asyncio.create_task(self._control_loop(applied, shutdown))

    async def _control_loop(
        self, applied: Callable[[Policy], None], shutdown: Callable[[], None]
    ) -> None:
        while True:
            message = await read_frame(self._reader)
            if message is None:  # the supervisor is gone: so are we
                shutdown()
                return
            if message[0] == "policy":
                policy = message[1]
                try:
                    applied(policy)
                except Exception as exc:  # noqa: BLE001 - reported; the supervisor restarts us
                    self.send("policy_failed", policy.digest, f"{type(exc).__name__}: {exc}")
                else:
                    self.digest = policy.digest
                    self.send("policy_applied", policy.digest)
            elif message[0] == "usage_resumed" and self.usage_gate is not None:
                self.usage_gate.forget(message[1])

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._flush()  # the last lines
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()


def share_of(settings: Settings) -> Settings:
    """This worker's share of the pod-wide bounds: HTTP/2 streams over all connections
    and the refusal rate are split evenly over the workers, so the pod holds no more of
    them, and answers no more refusals at once, than configured. Open connections (in
    total and per source) are not split: the workers count them in one shared table
    (sidecar/shared_connections.py), as one uneven split of a source's connections
    made a worker refuse while another had room. Byte budgets (buffered request
    bodies, decoded responses) stay per process: one request or response must still fit
    whole in the worker that serves it, so a pod's memory ceiling grows with N
    (docs/performance.md#sizing)."""
    import dataclasses
    import math

    n = settings.workers.n
    limits = dataclasses.replace(
        settings.limits,
        max_h2_streams_total=math.ceil(settings.limits.max_h2_streams_total / n),
    )
    return dataclasses.replace(settings, limits=limits, refusal_rate=settings.refusal_rate / n)


def main(argv: list[str]) -> int:
    import logging

    from sidecar import runner
    from sidecar.memory import pin_mmap_threshold
    from sidecar.settings import SettingsError

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    logging.getLogger("mitmproxy").setLevel(logging.ERROR)
    control = socket.socket(fileno=int(argv[0]))
    kind, settings, policy, index, listener_fds, table_fd = read_frame_blocking(control)
    assert kind == "init"
    settings = share_of(settings)  # workers unchanged: the table has a row for each
    runner.EVENT_FIELDS["worker"] = index
    table = SharedConnectionTable(table_fd, settings.workers.n)
    link = WorkerLink(index, control, listener_fds, policy.digest, table)
    pin_mmap_threshold()  # as runner.main: freed body buffers leave the RSS
    try:
        return runner.run_loop(runner.serve(settings, policy, link))
    except SettingsError as exc:
        runner.emit("config_error", error=str(exc))
        return runner.EXIT_BAD_SETTINGS


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
