"""Usage limits and key suspension (issue 15): the enforcer's `usage_gate`, and the
`response` hook that counts a response's tokens. Thin: windows, limits and the
baseline are in sidecar/metering.py, counters and suspensions in sidecar/usage_store.py.

Request (the enforcer calls `gate` after the policy, S3/S5 and the credentials passed,
so the tenant is known): suspended tenant -> key_suspended (403); over a limit ->
rate_limited (429, Retry-After); a burst beyond the anomaly rule -> the tenant is
suspended now, this request is the first refused, its decision carries the evidence
(and so the page). Backend unreachable -> each limit's `on_backend_failure`.

Response: the tokens the response readers left in `flow.metadata[USAGE_KEY]` (issue
14) are added to the tenant's and provider's token meters. This addon is registered
after those readers, so their figure is there when this `response` hook runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from mitmproxy import http
from prometheus_client import CollectorRegistry

from sidecar.decision import Decision, Reason, Verdict, iso_time
from sidecar.engine import PolicyEngine
from sidecar.metering import (
    MINUTE,
    Baseline,
    Burst,
    Counts,
    Meter,
    Metric,
    ModelTally,
    detect_burst,
    meters_for,
    retry_after_header,
    window_index,
)
from sidecar.policy.usage_limits import FailureMode, UsagePolicy
from sidecar.records import UsageMetrics
from sidecar.usage import USAGE_KEY, TokenUsage
from sidecar.usage_store import BackendUnavailable, Suspension, UsageStore

if TYPE_CHECKING:
    from sidecar.addons.enforcer import EngineHolder
    from sidecar.admin_keys import KeysApi
    from sidecar.settings import Settings

logger = logging.getLogger("egress_sidecar")

_METERS = "egress_usage_meters"  # flow metadata: the token meters of this request
_TENANT = "egress_usage_tenant"
HEALTH_INTERVAL = 0.5  # seconds between backend probes (and suspension cache refreshes)
FLUSH_INTERVAL = 0.1  # seconds: the most token counts lag behind in other processes
BACKEND_RETRY_AFTER = 2  # seconds, in a usage_backend_unavailable refusal


class UsageGate:
    def __init__(
        self,
        engine: Callable[[], PolicyEngine],
        store: UsageStore,
        registry: CollectorRegistry,
        emit: Callable[..., None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine  # () -> the engine in force (reloads swap it)
        self.store = store
        self._emit = emit
        self._clock = clock
        self._baselines: dict[str, Baseline] = {}
        self._models: dict[str, ModelTally] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.backend_up = True
        # Told when an admin resumes a tenant (with --workers: every worker forgets too).
        self.on_resume: Callable[[str], None] | None = None
        metrics = UsageMetrics(registry, store.name)  # declared in sidecar/records.py
        self._up = metrics.backend_up
        self._up.set(1)
        self._failures = metrics.backend_failures
        self._suspensions = metrics.suspensions
        self._limited = metrics.rate_limited

    # --- the enforcer's gate ------------------------------------------------------------

    async def gate(self, flow: http.HTTPFlow, decision: Decision) -> Decision:
        engine = self._engine()
        usage: UsagePolicy | None = engine.policy.usage
        tenant, provider = decision.tenant, decision.provider
        meters: list[Meter] = []
        if usage is not None:
            if tenant is not None:
                anomaly = usage.anomaly is not None
                meters += meters_for(
                    usage.tenant(tenant), scope=f"tenant:{tenant}", counted=anomaly
                )
            if provider is not None:
                meters += meters_for(usage.providers.get(provider))
        if tenant is None and not meters:
            return decision
        now = self._clock()
        try:
            admission = await self.store.admit(tenant, meters, now)
        except BackendUnavailable as exc:
            return self._unavailable(decision, tenant, meters, str(exc))
        flow.metadata[_METERS] = [m for m in meters if m.metric is Metric.TOKENS]
        flow.metadata[_TENANT] = tenant
        if admission.suspension is not None:
            return engine.overrule(decision, Reason.KEY_SUSPENDED, _suspended(admission.suspension))
        if admission.overrun is not None:
            over = admission.overrun
            self._limited.labels(over.meter.scope.split(":", 1)[0], over.meter.name).inc()
            wait = retry_after_header(over.retry_after)
            detail = (
                f"{over.meter.scope} over {over.meter.name} {over.meter.limit} "
                f"(now {over.observed:.0f}); retry after {wait}s"
            )
            refused = engine.overrule(decision, Reason.RATE_LIMITED, detail)
            return refused.with_context(retry_after=wait)
        if tenant is not None and usage is not None and usage.anomaly is not None:
            burst = self._burst(tenant, usage, meters, admission.counts, now)
            if burst is not None:
                return await self._suspend_automatically(decision, tenant, burst, engine)
        return decision

    def _burst(
        self,
        tenant: str,
        usage: UsagePolicy,
        meters: list[Meter],
        counts: tuple[Counts, ...],
        now: float,
    ) -> Burst | None:
        assert usage.anomaly is not None
        scope = f"tenant:{tenant}"
        found = {
            m.metric: c
            for m, c in zip(meters, counts, strict=True)
            if m.scope == scope and m.seconds == MINUTE
        }
        requests, tokens = found.get(Metric.REQUESTS), found.get(Metric.TOKENS)
        if requests is None or tokens is None:
            return None
        baseline = self._baselines.setdefault(tenant, Baseline())
        baseline.fold(window_index(now, MINUTE), requests, tokens, usage.anomaly.half_life_minutes)
        burst = detect_burst(usage.anomaly, baseline, now, requests, tokens)
        if burst is None:
            return None
        tally = self._models.get(tenant)
        return dataclasses.replace(burst, top_models=tally.top(now) if tally is not None else ())

    async def _suspend_automatically(
        self, decision: Decision, tenant: str, burst: Burst, engine: PolicyEngine
    ) -> Decision:
        detail = f"suspended automatically: {burst.describe()}"
        suspension = Suspension(
            tenant=tenant,
            since=self._clock(),
            by="automatic",
            detail=detail[:500],
            evidence=burst.as_record(),
        )
        try:
            new = await self.store.suspend(suspension)
        except BackendUnavailable as exc:
            new = True  # held locally, written when the backend is back (RedisStore)
            self._backend_failed(str(exc))
        if new:
            self._suspensions.labels("automatic").inc()
            self._emit("key_suspended", tenant=tenant, by="automatic", evidence=burst.as_record())
        return engine.overrule(decision, Reason.KEY_SUSPENDED, detail)

    def _unavailable(
        self, decision: Decision, tenant: str | None, meters: list[Meter], error: str
    ) -> Decision:
        """The backend did not answer: a known suspension still holds; then each
        limit's failure mode (any closed limit refuses). Logged, counted, alerted (the
        decision goes to the alert pipeline as a block or a would_block)."""
        self._backend_failed(error)
        overrule = self._engine().overrule
        cached = self.store.cached_suspension(tenant) if tenant is not None else None
        if cached is not None:
            self._failures.labels("suspension_from_cache").inc()
            return overrule(decision, Reason.KEY_SUSPENDED, _suspended(cached))
        limited = [m for m in meters if m.limit is not None]
        if not limited:
            return decision  # nothing but the suspension check, answered from the cache
        closed = [m for m in limited if m.on_backend_failure is FailureMode.CLOSED]
        if closed:
            self._failures.labels("refused").inc()
            detail = (
                f"usage backend unavailable ({error}); {closed[0].scope} "
                f"{closed[0].name} fails closed"
            )
            refused = overrule(decision, Reason.USAGE_BACKEND_UNAVAILABLE, detail)
            return refused.with_context(retry_after=BACKEND_RETRY_AFTER)
        self._failures.labels("allowed").inc()
        if decision.verdict is not Verdict.ALLOW:
            return decision  # already an audit-mode would_block: keep its reason
        return decision.with_context(
            verdict=Verdict.WOULD_BLOCK,
            reason=Reason.USAGE_BACKEND_UNAVAILABLE,
            detail=f"usage backend unavailable ({error}); limits fail open: let through",
        )

    def _backend_failed(self, error: str) -> None:
        if self.backend_up:
            self.backend_up = False
            self._up.set(0)
            self._emit("usage_backend_down", backend=self.store.name, error=error)

    # --- responses ----------------------------------------------------------------------

    async def response(self, flow: http.HTTPFlow) -> None:
        usage = flow.metadata.get(USAGE_KEY)
        if not isinstance(usage, TokenUsage):
            return
        now = self._clock()
        tenant = flow.metadata.get(_TENANT)
        if tenant is not None:
            tally = self._models.setdefault(tenant, ModelTally())
            tally.add(now, usage.model, usage.total_tokens)
        meters: list[Meter] = flow.metadata.get(_METERS) or []
        self.store.add_tokens(meters, usage.total_tokens, now)  # written by the next admit

    # --- health loop (mitmproxy lifecycle) ----------------------------------------------

    async def running(self) -> None:
        self._tasks = [
            asyncio.create_task(self._health_loop(), name="usage-backend-health"),
            asyncio.create_task(self._flush_loop(), name="usage-token-flush"),
        ]

    async def done(self) -> None:
        for task in self._tasks:
            task.cancel()
        try:
            await self.store.flush(self._clock())
        except BackendUnavailable:
            pass  # the backend is down: these token counts are lost
        await self.store.close()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                await self.store.flush(self._clock())
            except BackendUnavailable as exc:
                self._backend_failed(str(exc))  # kept, written once the backend is back
            except Exception:
                logger.exception("writing token counts failed")

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL)
            try:
                await self.store.check()
            except BackendUnavailable as exc:
                self._backend_failed(str(exc))
                continue
            except Exception:
                logger.exception("usage backend check failed")
                continue
            if not self.backend_up:
                self.backend_up = True
                self._up.set(1)
                self._emit("usage_backend_recovered", backend=self.store.name)

    # --- admin (sidecar/admin.py) -------------------------------------------------------

    async def suspend_by_admin(self, tenant: str, detail: str) -> bool:
        suspension = Suspension(tenant, self._clock(), "admin", detail[:500])
        new = await self.store.suspend(suspension)
        if new:
            self._suspensions.labels("admin").inc()
            self._emit("key_suspended", tenant=tenant, by="admin")
        return new

    async def resume(self, tenant: str) -> bool:
        resumed = await self.store.resume(tenant, self._clock())
        self.forget(tenant)
        if self.on_resume is not None:
            self.on_resume(tenant)
        if resumed:
            self._emit("key_resumed", tenant=tenant)
        return resumed

    def forget(self, tenant: str) -> None:
        """A resumed tenant's burst must not become its new normal."""
        self._baselines.pop(tenant, None)


def _suspended(suspension: Suspension) -> str:
    return (
        f"tenant {suspension.tenant!r} suspended ({suspension.by}) since "
        f"{iso_time(suspension.since)}"
    )


def build(
    settings: Settings,
    holder: EngineHolder,
    registry: CollectorRegistry,
    emit: Callable[..., None],
    *,
    admin: bool = True,
) -> tuple[UsageGate, KeysApi | None]:
    """The gate over the configured store, and the admin listener's /keys API (None
    without `admin`: a worker of `run --workers N`, whose supervisor serves /keys)."""
    from sidecar.admin_keys import KeysApi, TokenUnavailable, read_admin_token
    from sidecar.settings import SettingsError
    from sidecar.usage_settings import UsageSettingsError
    from sidecar.usage_store import LocalStore, RedisStore

    options = settings.usage
    store: UsageStore
    if options.redis_url is not None:
        try:
            password = options.redis_password()
        except UsageSettingsError as exc:
            raise SettingsError(str(exc)) from None
        store = RedisStore(options.redis_url, password=password)
    else:
        store = LocalStore(options.state_dir)
    gate = UsageGate(lambda: holder.engine, store, registry, emit)
    if not admin:
        return gate, None
    token: str | None = None
    try:
        token = read_admin_token(options.admin_token_file, create=True)
    except TokenUnavailable as exc:
        # A read-only state directory: run (limits then fail as configured), without /keys.
        emit("admin_token_unavailable", error=str(exc), effect="the keys commands answer 503")
    return gate, KeysApi(gate, token)
