"""Admin listener: /metrics (Prometheus), /healthz (alive), /readyz (policy + listeners),
/keys (suspensions, behind a token: sidecar/admin_keys.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sidecar.settings import SettingsError


class AdminServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        readiness: Callable[[], dict[str, bool]],
        keys: Any = None,
        info: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._keys = keys  # issue 15: /keys, behind a token (sidecar/admin_keys.py)
        self._registry = registry
        self._readiness = readiness
        self._info = info  # what /readyz says beside its checks (the live policy, workers)
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        if self._keys is not None:
            self._keys.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            # After a restart, the likeliest holder is whatever bound the port while the
            # sidecar was down; the init rules keep it from answering, we say it here.
            raise SettingsError(
                f"--admin {host}:{port}: cannot listen ({exc.strerror or exc}): another "
                "process holds this port; free it or choose another --admin address"
            ) from None
        bound = self._runner.addresses[0]
        self.address = (str(bound[0]), int(bound[1]))
        return self.address

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        checks = self._readiness()
        ready = all(checks.values())
        body: dict[str, Any] = {"ready": ready, "checks": checks}
        if self._info is not None:
            body.update(self._info())
        return web.Response(
            status=200 if ready else 503,
            text=json.dumps(body) + "\n",
            content_type="application/json",
        )
