"""Test helpers: fake HTTP receivers, decisions, configs. No pytest-asyncio: tests call
`run(coro)` which bounds every test with a timeout."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry

from sidecar.alerts.pipeline import AlertPipeline
from sidecar.decision import Decision, Reason, Verdict
from tests.support.ports import free_port  # noqa: F401 - re-exported for the alert tests

T = TypeVar("T")

PLANTED_KEY = "sk-proj-" + "AbC123xYz" * 6  # looks like an OpenAI project key


def run[T](coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def refusal(
    reason: Reason = Reason.HOST_NOT_ALLOWED,
    host: str = "models.litellm.cloud",
    *,
    verdict: Verdict = Verdict.BLOCK,
    port: int = 443,
    rule: str = "default_deny",
    **kw: Any,
) -> Decision:
    return Decision(verdict=verdict, reason=reason, rule=rule, host=host, port=port, **kw)


@dataclasses.dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


class FakeReceiver:
    """An HTTP receiver on loopback. `responses` are (status, headers) pairs used in
    order, then `default`. Every request is recorded with the status it got."""

    def __init__(
        self,
        responses: list[tuple[int, dict[str, str]]] | None = None,
        default: int = 202,
        handler: Callable[[web.Request, bytes], Awaitable[web.Response | None]] | None = None,
    ) -> None:
        self.responses = list(responses or [])
        self.default = default
        self.requests: list[Recorded] = []
        self.handler = handler
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.handler is not None:
            custom = await self.handler(request, body)
            if custom is not None:
                self.requests.append(
                    Recorded(
                        request.path, dict(request.headers), body, time.monotonic(), custom.status
                    )
                )
                return custom
        status, headers = self.responses.pop(0) if self.responses else (self.default, {})
        self.requests.append(
            Recorded(request.path, dict(request.headers), body, time.monotonic(), status)
        )
        return web.json_response(
            {"status": "ok" if status < 300 else "error"}, status=status, headers=headers
        )

    async def start(self, port: int = 0) -> FakeReceiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"expected {count} requests, got {len(self.requests)} in {timeout}s"
                )
            await asyncio.sleep(0.01)


async def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


FAST = """
version: 1
tick: 20ms
grouping:
  resend_interval: {resend}
  resolve_after: {resolve}
delivery:
  backoff_initial: 20ms
  backoff_max: 100ms
  max_retry_after: 5s
  timeout: 2s
  drain_timeout: {drain}
"""


def write_config(
    tmp: Path,
    sinks: str,
    *,
    resend: str = "60s",
    resolve: str = "300s",
    drain: str = "1s",
    secrets: dict[str, str] | None = None,
) -> str:
    for name, value in (secrets or {}).items():
        (tmp / name).write_text(value + "\n")
    path = tmp / "alerts.yaml"
    path.write_text(FAST.format(resend=resend, resolve=resolve, drain=drain) + sinks)
    return str(path)


def pipeline(config: str | None, spool: str | os.PathLike[str] | None) -> AlertPipeline:
    return AlertPipeline.from_config(
        config,
        spool_dir=str(spool) if spool is not None else None,
        registry=CollectorRegistry(),
        pod={"name": "gw-7d9f", "namespace": "llm", "node": "node-1"},
    )


def metric(p: AlertPipeline, name: str, **labels: str) -> float:
    value = p.registry.get_sample_value(name, labels)
    return float(value or 0.0)
