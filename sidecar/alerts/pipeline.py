"""`AlertPipeline`: the one object the proxy holds.

    pipeline = AlertPipeline.from_config(path_or_None, spool_dir=..., registry=...)
    pipeline.submit(decision)      # request path: sync, O(1), never raises
    await pipeline.start()         # inside the running loop (mitmproxy `running`)
    await pipeline.stop()          # on shutdown (mitmproxy `done`)

Request path -> `Grouper.submit` (memory only). A flusher task (every ``tick``) asks the
grouper what is due and queues it per sink (memory + spool directory, written by one
worker thread). One delivery task per sink sends, retries with backoff and jitter,
honours Retry-After, and drops only what a sink rejects (non-retryable 4xx), what is
older than ``delivery.max_age``, or what does not fit ``delivery.max_queue``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from sidecar.alerts.config import AlertsConfig, load_config
from sidecar.alerts.grouping import TRIGGER, UPDATE, Grouper, Notification
from sidecar.alerts.model import pod_identity
from sidecar.alerts.sinks import Sink, build_sink
from sidecar.alerts.spool import DiskOp, SequenceNumbers, SinkQueue, atomic_write, quarantine
from sidecar.decision import Decision, Severity
from sidecar.records import AlertMetrics

log = logging.getLogger("sidecar.alerts")

STATE_FILE = "state.json"


def backoff_delay(attempt: int, initial: float, cap: float) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random."""
    delay = min(cap, initial * float(2 ** min(max(attempt - 1, 0), 30)))
    return delay / 2 + random.uniform(0, delay / 2)


class AlertPipeline:
    def __init__(
        self,
        config: AlertsConfig,
        *,
        spool_dir: str | None,
        registry: CollectorRegistry,
        pod: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.spool_dir = spool_dir
        self.pod = pod_identity(pod)
        self.registry = registry
        self.metrics = AlertMetrics(registry, [s.name for s in config.sinks])
        self._refusal_counters = {s: self.metrics.refusals.labels(s.value) for s in Severity}
        self._suppressed_counters = {
            c: self.metrics.suppressed.labels(c) for c in ("rate_cap", "table_full")
        }
        self.grouper = Grouper(config.grouping, pod=self.pod, on_suppressed=self._suppressed)
        firing_ttl = 3 * config.grouping.resend_interval
        self.sinks: list[Sink] = [
            build_sink(s, config.delivery, firing_ttl=firing_ttl) for s in config.sinks
        ]
        self._sequence = SequenceNumbers()
        self.queues: dict[str, SinkQueue] = {
            s.name: SinkQueue(
                s.name,
                spool_dir,
                config.delivery.max_queue,
                self._sequence,
                on_spool_error=self.metrics.spool_errors.labels(s.name).inc,
            )
            for s in self.sinks
        }
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._delivery_tasks: list[asyncio.Task[None]] = []
        self._executor: ThreadPoolExecutor | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stop_event: asyncio.Event | None = None
        self._started = False
        self._last_state = 0.0
        self._state_dirty = False
        self.attempts: dict[str, int] = {s.name: 0 for s in self.sinks}

    @classmethod
    def from_config(
        cls,
        config_path: str | None,
        *,
        spool_dir: str | None,
        registry: CollectorRegistry,
        pod: dict[str, str] | None = None,
    ) -> AlertPipeline:
        """Build from the YAML config (None: log and count only, no sinks).

        Raises `sidecar.alerts.config.ConfigError` (file:line: key: message)."""
        config = load_config(config_path) if config_path else AlertsConfig()
        pipeline = cls(config, spool_dir=spool_dir, registry=registry, pod=pod)
        for sink in pipeline.sinks:
            log.info("alerts: sink %s", sink.config.display())
        return pipeline

    # --------------------------------------------------------------- request path

    def submit(self, decision: Decision) -> None:
        """Hand one decision to alerting. Sync, O(1), never raises, never blocks."""
        try:
            if decision.allowed:
                return
            severity = self.grouper.submit(decision)
            if severity is not None:
                self._refusal_counters[severity].inc()
        except Exception:  # noqa: BLE001 - the request path must never see our errors
            with contextlib.suppress(Exception):
                self.metrics.internal_errors.labels("submit").inc()

    def _suppressed(self, cause: str) -> None:
        self._suppressed_counters[cause].inc()

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alert-spool")
        if self.spool_dir is not None:
            await loop.run_in_executor(self._executor, self._load_spool)
        if self.sinks:
            self._session = aiohttp.ClientSession()
        for sink in self.sinks:
            self._wake[sink.name] = asyncio.Event()
            self._wake[sink.name].set()
            self._delivery_tasks.append(
                asyncio.create_task(self._deliver_loop(sink), name=f"alerts-{sink.name}")
            )
        self._tasks.append(asyncio.create_task(self._flush_loop(), name="alerts-flush"))

    def _load_spool(self) -> None:
        assert self.spool_dir is not None
        os.makedirs(self.spool_dir, mode=0o700, exist_ok=True)
        for name, queue in self.queues.items():
            loaded, bad = queue.load()
            if bad:
                self.metrics.quarantined.inc(bad)
            if loaded:
                log.info(
                    "alerts: %d pending notifications for sink %s from the spool", loaded, name
                )
            self.metrics.queue_depth.labels(name).set(len(queue))
        path = os.path.join(self.spool_dir, STATE_FILE)
        if not os.path.exists(path):
            return
        try:
            with open(path, "rb") as fh:
                state = json.loads(fh.read())
            if not isinstance(state, dict) or state.get("v") != 1:
                raise ValueError("unknown state version")
            restored = self.grouper.import_state(list(state["alerts"]))
            log.info("alerts: %d active alerts restored", restored)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("alerts: quarantining unreadable state file (%s)", type(exc).__name__)
            quarantine(self.spool_dir, path, "state")
            self.metrics.quarantined.inc()

    async def stop(self) -> None:
        """Flush what can be flushed within delivery.drain_timeout, persist the rest."""
        if not self._started:
            return
        self._started = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await self._flush_once()
            await self._save_state(force=True)
        deadline = time.monotonic() + self.config.delivery.drain_timeout
        while time.monotonic() < deadline and any(len(q) for q in self.queues.values()):
            await asyncio.sleep(0.02)
        assert self._stop_event is not None
        self._stop_event.set()
        for task in self._delivery_tasks:
            task.cancel()
        await asyncio.gather(*self._delivery_tasks, return_exceptions=True)
        self._delivery_tasks.clear()
        if self._executor is not None:
            executor = self._executor
            self._executor = None
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------- flusher

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick)
            try:
                await self._flush_once()
                await self._save_state()
            except Exception:
                self.metrics.internal_errors.labels("flush").inc()
                log.exception("alerts: flush failed")

    async def _flush_once(self) -> None:
        notes = self.grouper.due()
        if not notes:
            return
        self._state_dirty = True
        ops: list[DiskOp] = []
        for note in notes:
            self.metrics.notifications.labels(note.kind).inc()
            self._log(note)
            for sink in self.sinks:
                if not self._accepts(sink, note):
                    continue
                queue = self.queues[sink.name]
                entry, disk = queue.put(note.kind, note.fingerprint, note.alert)
                if entry is None:
                    self.metrics.dropped.labels(sink.name, "queue_full").inc()
                    continue
                ops.extend(disk)
                self._wake[sink.name].set()
        for sink in self.sinks:
            self.metrics.queue_depth.labels(sink.name).set(len(self.queues[sink.name]))
        for severity, count in self.grouper.active_count().items():
            self.metrics.active.labels(severity.value).set(count)
        if ops:
            await self._disk(ops)

    @staticmethod
    def _accepts(sink: Sink, note: Notification) -> bool:
        if not sink.accepts(note.kind, note.severity, note.audit):
            return False
        # Unchanged updates are keep-alives: only Alertmanager needs them.
        return note.kind != UPDATE or note.changed or sink.config.type == "alertmanager"

    def _log(self, note: Notification) -> None:
        a = note.alert
        level = (
            logging.DEBUG
            if note.kind == UPDATE
            else (logging.WARNING if note.kind == TRIGGER else logging.INFO)
        )
        log.log(
            level,
            "alert %s %s severity=%s reason=%s destination=%s tenant=%s count=%d suppressed=%d",
            note.kind,
            note.fingerprint,
            a["severity"],
            a["reason"],
            a["destination"],
            a["tenant"] or "-",
            a["count"],
            a["suppressed"],
        )

    async def _disk(self, ops: list[DiskOp]) -> None:
        if self._executor is None:
            return

        def run() -> None:
            for op in ops:
                try:
                    op()
                except Exception:  # noqa: BLE001 - a disk error must not stop the rest
                    self.metrics.internal_errors.labels("state").inc()

        await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def _save_state(self, *, force: bool = False) -> None:
        if self.spool_dir is None or self._executor is None:
            return
        now = time.monotonic()
        if not force and (
            not self._state_dirty or now - self._last_state < self.config.state_interval
        ):
            return
        self._last_state = now
        self._state_dirty = False
        data = json.dumps(
            {"v": 1, "saved": time.time(), "alerts": self.grouper.export_state()}
        ).encode()
        path = os.path.join(self.spool_dir, STATE_FILE)

        def write() -> None:
            try:
                os.makedirs(self.spool_dir or ".", mode=0o700, exist_ok=True)
                atomic_write(path, data)
            except OSError as exc:
                log.warning("alerts: cannot save state: %s", exc.strerror)
                self.metrics.internal_errors.labels("state").inc()

        await asyncio.get_running_loop().run_in_executor(self._executor, write)

    # ------------------------------------------------------------------ delivery

    async def _deliver_loop(self, sink: Sink) -> None:
        queue = self.queues[sink.name]
        wake = self._wake[sink.name]
        settings = self.config.delivery
        attempt = 0
        while True:
            try:
                batch = queue.peek(sink.max_batch)
                if not batch:
                    wake.clear()
                    await wake.wait()
                    continue
                cutoff = time.time() - settings.max_age
                expired = [e for e in batch if e.enqueued < cutoff]
                if expired:
                    self.metrics.dropped.labels(sink.name, "expired").inc(len(expired))
                    await self._disk(queue.ack(expired))
                    continue
                assert self._session is not None
                self.attempts[sink.name] += 1
                outcome = await sink.send(self._session, [e.wire() for e in batch])
                if outcome.ok:
                    attempt = 0
                    self.metrics.sent.labels(sink.name).inc(len(batch))
                    self.metrics.last_success.labels(sink.name).set(time.time())
                    ops = queue.ack(batch)
                elif outcome.retry:
                    attempt += 1
                    self.metrics.retried.labels(sink.name).inc(len(batch))
                    if outcome.retry_after is not None:
                        delay = min(outcome.retry_after, settings.max_retry_after)
                        delay += random.uniform(0, min(1.0, delay * 0.1))
                    else:
                        delay = backoff_delay(
                            attempt, settings.backoff_initial, settings.backoff_max
                        )
                    log.warning(
                        "alerts: sink %s failed (%s), retry %d in %.1fs",
                        sink.config.display(),
                        outcome.error,
                        attempt,
                        delay,
                    )
                    await self._sleep(delay)
                    continue
                else:
                    attempt = 0
                    self.metrics.dropped.labels(sink.name, "rejected").inc(len(batch))
                    log.error(
                        "alerts: sink %s rejected %d notification(s) (%s); not retried",
                        sink.config.display(),
                        len(batch),
                        outcome.error,
                    )
                    ops = queue.ack(batch)
                self.metrics.queue_depth.labels(sink.name).set(len(queue))
                await self._disk(ops)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.metrics.internal_errors.labels("deliver").inc()
                log.exception("alerts: delivery to sink %s failed", sink.name)
                await self._sleep(1.0)

    async def _sleep(self, delay: float) -> None:
        assert self._stop_event is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), timeout=delay)

    # ----------------------------------------------------------------- helpers

    def queue_depth(self) -> dict[str, int]:
        return {name: len(q) for name, q in self.queues.items()}

    def active(self) -> dict[Severity, int]:
        return self.grouper.active_count()

    def status(self) -> dict[str, Any]:
        """Small summary for an admin endpoint (no secrets, no URLs)."""
        return {
            "sinks": [s.config.display() for s in self.sinks],
            "queue_depth": self.queue_depth(),
            "active": {k.value: v for k, v in self.active().items()},
        }
