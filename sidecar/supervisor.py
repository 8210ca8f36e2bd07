"""`run --workers N` (N > 1): N proxy processes that look like one sidecar from outside.

The supervisor binds the proxy listeners once (sidecar/listeners.py) and starts N
workers (sidecar/worker.py) that accept on them. It owns what the pod has once
(sidecar.runner.PodServices): the admin endpoint, whose /metrics sums every process's
prometheus-client multiprocess files; the alert pipeline, fed the workers' refusals;
the DNS listener; the policy watcher, which validates a changed file once and hands
the same policy object to every worker (a bad file is refused once, for all). It relays
the workers' decision lines to its stdout a whole line at a time.

A worker that dies is restarted with backoff (its live gauges are dropped with
mark_process_dead; its counters stay in the sums). A slot that keeps dying (or a
worker that cannot start at all) stops the pod with a non-zero exit: a sidecar that
silently runs at a fraction of its capacity is worse than one that restarts.
SIGTERM/SIGINT reach every worker; the supervisor exits once they have.

Usage limits and suspensions (issue 15) are shared through their store: every worker
opens the same SQLite file in --state-dir (or the same Redis), so a limit is not
multiplied by N. The supervisor serves the admin listener's /keys over that store and
tells the workers when a tenant is resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

from sidecar.decision import Decision
from sidecar.runner import (
    PodServices,
    PolicySwitch,
    addresses_text,
    credential_layer,
    emit,
    ensure_interception_ca,
    mode_specs,
    own_addresses,
)
from sidecar.settings import Settings, SettingsError
from sidecar.shared_connections import SharedConnectionTable

if TYPE_CHECKING:
    from sidecar.addons.usage import UsageGate
    from sidecar.policy.model import Policy
    from sidecar.records import DecisionLog

START_TIMEOUT = 120.0  # a worker imports mitmproxy and loads the CA: slow on a busy node
STOP_TIMEOUT = 20.0  # SIGTERM -> SIGKILL
MAX_RESTARTS = 5  # consecutive deaths of one slot before the pod gives up
STABLE_AFTER = 30.0  # a worker that ran this long before dying starts a fresh count
BACKOFF_CAP = 10.0


def backoff(failures: int) -> float:
    return float(min(BACKOFF_CAP, 0.25 * 2 ** max(failures - 1, 0)))


@dataclasses.dataclass
class Slot:
    index: int
    proc: asyncio.subprocess.Process | None = None
    channel: asyncio.Transport | None = None
    ready: bool = False
    digest: str | None = None
    failures: int = 0
    started_at: float = 0.0


class PodState:
    """The pod's private directory of prometheus-client multiprocess metrics files."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="egress-sidecar-pod-")
        self.metrics_dir = os.path.join(self.root, "metrics")
        os.mkdir(self.metrics_dir, 0o700)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def use_multiprocess_metrics(directory: str) -> None:
    """Every metric created from here on, here and in the workers (which inherit the
    variable), lives in a file under `directory` that the admin endpoint sums."""
    from prometheus_client import values

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def listen_address(spec: str) -> tuple[str, int]:
    """HOST and PORT of a mode spec made by sidecar.runner.mode_specs (`...@HOST:PORT`)."""
    host, port = spec.rsplit("@", 1)[1].rsplit(":", 1)
    return host, int(port)


def worker_environment() -> dict[str, str]:
    """Ours, plus the directory this `sidecar` package was imported from, so a worker
    runs the same code as its supervisor (a source tree, not an installed copy)."""
    import sidecar

    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(sidecar.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


class WorkerChannel(asyncio.Protocol):
    """The supervisor's end of a worker's control socket: decision lines out to stdout
    (whole, one write per chunk received), messages to the supervisor, in order."""

    def __init__(self, supervisor: Supervisor, slot: Slot, closed: asyncio.Future[None]) -> None:
        from sidecar.worker import Frames

        self._supervisor = supervisor
        self._slot = slot
        self._closed = closed
        self._frames = Frames()

    def data_received(self, data: bytes) -> None:
        from sidecar.worker import LINE, unpickle

        lines: list[bytes] = []
        for kind, body in self._frames.feed(data):
            if kind == LINE:
                lines.append(body)
                continue
            if lines:  # what came before this message is out before it is handled
                self._supervisor.decision_log.write_lines(b"".join(lines))
                lines = []
            try:
                self._supervisor.handle(self._slot, unpickle(body))
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the relay
                emit("error", error=f"worker {self._slot.index} message: {type(exc).__name__}")
        if lines:
            self._supervisor.decision_log.write_lines(b"".join(lines))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)


async def supervise(settings: Settings, policy: Policy) -> int:
    state = PodState()
    try:
        use_multiprocess_metrics(state.metrics_dir)
        supervisor = Supervisor(settings, policy, state)
        try:
            return await supervisor.run()
        except BaseException:
            # e.g. a rejected alerts config (SettingsError, exit 64 in runner.main),
            # found after the workers started: they stop with us.
            await supervisor.stop_workers()
            raise
    finally:
        state.remove()


class Supervisor:
    def __init__(self, settings: Settings, policy: Policy, state: PodState) -> None:
        self.settings = settings
        self.policy = policy
        self.state = state
        self.slots = [Slot(i) for i in range(settings.workers.n)]
        # Open connections counted for the pod, not per worker (sidecar/shared_connections.py)
        self.connection_table = SharedConnectionTable.create(settings.workers.n)
        self.sockets: dict[str, list[socket.socket]] = {}
        self.stopping = False
        self.started = False  # every worker was ready once: from then on, restart them
        self.exit_code = 0
        self.stop_event = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.pod: PodServices | None = None
        self.usage_gate: UsageGate | None = None
        self.decision_log: DecisionLog  # set in run(), before any worker starts
        self._early_violations: list[Decision] = []  # refusals before the pipeline exists

    # ------------------------------------------------------------------ the pod

    async def run(self) -> int:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        from sidecar import listeners
        from sidecar.addons import usage
        from sidecar.engine import PolicyEngine
        from sidecar.ocsf import to_ocsf
        from sidecar.records import DecisionLog, Metrics, Recorder, WorkerMetrics
        from sidecar.resolver import Resolver

        settings = self.settings
        loop = asyncio.get_running_loop()
        registry = CollectorRegistry()
        metrics = Metrics(registry)
        self.metrics = metrics
        # One writer of the pod's stdout for the workers' lines and our own (DNS):
        # whole lines, and a stalled reader blocks nobody (sidecar/line_writer.py).
        render = to_ocsf if settings.decision_format == "ocsf" else Decision.as_log_record
        self.decision_log = DecisionLog(render=render, on_lost=metrics.decision_lines_lost.inc)
        self.worker_metrics = WorkerMetrics(registry)
        specs, labels = mode_specs(settings, self.policy)
        for spec in specs:
            host, port = listen_address(spec)
            try:
                self.sockets[spec] = listeners.bind(host, port)
            except OSError as exc:
                why = (exc.strerror or str(exc)).lower()  # as mitmproxy's own message says it
                emit(
                    "error",
                    error=f"{labels[spec]} listener failed to listen on {host}:{port}: {why}",
                )
                return 1
        try:
            ensure_interception_ca(settings.ca_dir)  # one CA, before any worker starts
        except SettingsError:
            pass  # each worker meets the same problem as it starts, and says so
        # The workers start now, while this process builds its own part of the pod.
        for slot in self.slots:
            self._tasks.append(asyncio.create_task(self._keep(slot), name=f"worker-{slot.index}"))

        from sidecar.addons.enforcer import EngineHolder

        own = own_addresses(settings)
        holder = EngineHolder(PolicyEngine(self.policy, own))

        def hand_over(new_policy: Policy) -> None:  # from the watcher's thread
            loop.call_soon_threadsafe(self._broadcast, ("policy", new_policy))

        switch = PolicySwitch(settings, specs, own, holder, metrics, then=hand_over)
        switch.applied(self.policy)
        credentials, credential_tasks = credential_layer(settings, registry, holder)
        recorder = Recorder(
            [self.decision_log.record, metrics.record],
            on_error=lambda m: emit("error", error=m),
            scrub=credentials.scrub,
        )
        resolver = Resolver(
            settings.resolver, on_error=lambda kind: metrics.dns_errors.labels(kind).inc()
        )
        # /keys over the workers' store; a resumed tenant is forgotten by every worker.
        usage_gate, keys_api = usage.build(settings, holder, registry, emit)
        usage_gate.on_resume = lambda tenant: self._broadcast(("usage_resumed", tenant))
        self.usage_gate = usage_gate
        pod = PodServices(settings, registry, holder, recorder, resolver, switch)
        self.pod = pod
        for decision in self._early_violations:
            pod.alerts.submit(decision)
        self._early_violations.clear()
        try:
            await pod.start_dns()
        except OSError as exc:
            emit("error", error=f"--dns listener could not be bound: {exc}")
            self.exit_code = 1
            await self._shutdown()
            return 1
        exposed = CollectorRegistry()
        MultiProcessCollector(exposed, path=self.state.metrics_dir)  # type: ignore[no-untyped-call]
        await pod.start_admin(
            lambda: {
                "policy_loaded": holder.engine is not None,
                "listeners_bound": self._all_ready() and pod.dns_running(),
                "reverse_listener_keys": not credentials.store.missing(pod.reverse_secrets()),
                "workers_on_policy": all(s.digest == self.policy.digest for s in self.slots),
            },
            exposed,
            keys_api,
            lambda: {
                "policy": self.policy.digest[:12],
                "workers": {"configured": len(self.slots), "ready": self._ready_count()},
            },
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        started = await self._wait_started()
        if started:
            self.started = True
            listening = {
                labels[spec]: addresses_text(s.getsockname() for s in socks)
                for spec, socks in self.sockets.items()
            }
            metrics.ready.set(1)
            await pod.running(listening, credential_tasks)
            await self.stop_event.wait()
        await self._shutdown()
        return self.exit_code

    def _all_ready(self) -> bool:
        return self._ready_count() == len(self.slots)

    def _ready_count(self) -> int:
        return sum(1 for s in self.slots if s.ready)

    async def _wait_started(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while not self._all_ready():
            if self.stop_event.is_set():
                return False
            if time.monotonic() > deadline:
                emit("error", error=f"workers not ready within {START_TIMEOUT:g} s")
                self.exit_code = 1
                return False
            await asyncio.sleep(0.05)
        return True

    def _on_signal(self, sig: signal.Signals) -> None:
        emit("signal", signal=sig.name)
        self.stop_event.set()

    def _fail(self, code: int) -> None:
        # A worker's own exit status (64: bad settings), or 1 (killed by a signal: < 0)
        self.exit_code = code if code > 0 else 1
        self.stop_event.set()

    async def _shutdown(self) -> None:
        self.metrics.ready.set(0)
        await self.stop_workers()
        for task in self._tasks:
            task.cancel()
        if self.pod is not None:
            await self.pod.stop()
        if self.usage_gate is not None:
            await self.usage_gate.store.close()
        for socks in self.sockets.values():
            for sock in socks:
                sock.close()
        emit("stopped")

    async def stop_workers(self) -> None:
        """SIGTERM to every worker; SIGKILL to those still there after STOP_TIMEOUT."""
        self.stopping = True
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for slot in self.slots:
            if slot.proc is None:
                continue
            try:
                await asyncio.wait_for(slot.proc.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.kill()
                await slot.proc.wait()

    # --------------------------------------------------------------- the workers

    async def _keep(self, slot: Slot) -> None:
        """Run the slot's worker, and its successors when it dies."""
        from prometheus_client import multiprocess

        while not self.stopping:
            code = await self._run_worker(slot)
            pid = slot.proc.pid if slot.proc is not None else None
            slot.ready = False
            slot.digest = None
            slot.channel = None
            self.worker_metrics.running.set(self._ready_count())
            if pid is not None:
                multiprocess.mark_process_dead(pid, self.state.metrics_dir)  # type: ignore[no-untyped-call]
            self.connection_table.clear(slot.index)  # its connections died with it
            if self.stopping:
                return
            emit("worker_exited", worker=slot.index, pid=pid, code=code)
            if not self.started:
                emit("error", error=f"worker {slot.index} exited {code} while starting")
                self._fail(code)
                return
            if time.monotonic() - slot.started_at > STABLE_AFTER:
                slot.failures = 0
            slot.failures += 1
            if slot.failures > MAX_RESTARTS:
                emit(
                    "error",
                    error=f"worker {slot.index} died {slot.failures} times in a row; stopping",
                )
                self._fail(1)
                return
            await asyncio.sleep(backoff(slot.failures))
            self.worker_metrics.restarts.inc()

    async def _run_worker(self, slot: Slot) -> int:
        from sidecar.worker import frame

        ours, theirs = socket.socketpair()
        fds = {spec: [s.fileno() for s in socks] for spec, socks in self.sockets.items()}
        table = self.connection_table.fd
        passed = [theirs.fileno(), table, *(fd for group in fds.values() for fd in group)]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sidecar.worker",
            str(theirs.fileno()),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=sys.stderr.fileno(),  # the pod's stdout carries decision lines only
            pass_fds=passed,
            env=worker_environment(),
        )
        theirs.close()
        slot.proc = proc
        if self.stopping:  # stop_workers() ran while this one was being started
            proc.terminate()
        slot.started_at = time.monotonic()
        closed = asyncio.get_running_loop().create_future()
        transport, _ = await asyncio.get_running_loop().create_connection(
            lambda: WorkerChannel(self, slot, closed), sock=ours
        )
        # The policy in force at this moment, and every later one in order (_broadcast
        # runs on this loop too, and sees slot.channel from here on).
        slot.channel = transport
        init = ("init", self.settings, self.policy, slot.index, fds, table)
        transport.write(frame(init))
        code = await proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(closed), 5)  # its last lines, relayed
        transport.close()
        return code

    def handle(self, slot: Slot, message: tuple[Any, ...]) -> None:
        """A message from a worker (sidecar/worker.py says which)."""
        kind = message[0]
        if kind == "violation":
            if self.pod is None:
                self._early_violations.append(message[1])
            else:
                self.pod.alerts.submit(message[1])
        elif kind == "ready":
            slot.ready = True
            slot.digest = message[1]
            self.worker_metrics.running.set(self._ready_count())
        elif kind == "policy_applied":
            slot.digest = message[1]
        elif kind == "policy_failed":
            # Validated here, refused there: restart it onto the policy in force.
            emit("error", error=f"worker {slot.index} could not apply the policy: {message[2]}")
            if slot.proc is not None and slot.proc.returncode is None:
                slot.proc.terminate()

    def _broadcast(self, message: tuple[Any, ...]) -> None:
        """To every running worker, in order with everything sent before: a new policy
        (the supervisor validated it once), or a tenant an admin resumed."""
        from sidecar.worker import frame

        if message[0] == "policy":
            self.policy = message[1]
        data = frame(message)
        for slot in self.slots:
            if slot.channel is not None and not slot.channel.is_closing():
                slot.channel.write(data)
