"""What the addons share about one flow (no policy here).

- The flow metadata keys the enforcer and request inspection leave for the addons
  registered after them (limits, credentials, DLP, response inspection).
- The answers: THE refusal response, and the 500 of a hook that failed (fail closed).
- Where body work runs: on the event loop, or in a worker thread for a large body.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mitmproxy import http
from mitmproxy.proxy import server_hooks

from sidecar import refusals
from sidecar.decision import REASONS, Decision

logger = logging.getLogger("egress_sidecar")

DECISION_KEY = "egress_decision"  # the decision the request goes on with (allow, would_block)
# An allowed request's decision, its line not yet written. The body inspectors (issue
# 13) replace it with a refusal; the response inspector (issue 14) writes it at the
# response end when LINE_AT_END (addons/enforcer.py) is set.
PENDING_DECISION_KEY = "egress_unrecorded_decision"
DOCUMENT_KEY = "egress_request_document"  # request inspection's parsed body: parsed once
API_KEY = "egress_request_api"  # request inspection's API family (`Api.value`)

OFF_LOOP_BYTES = 256 * 1024  # body work on more than this runs in a worker thread


def refusal_response(decision: Decision, *, close: bool = False) -> http.Response:
    """THE builder of every refusal the gateway receives (requests, refused tunnels,
    upstream TLS failures; reuse it for refused responses). Body, headers and status
    come from `sidecar.refusals.render` (the destination's error format, the reason
    header, `x-should-retry: false`). Inside a kept-alive connection the next request
    is decided on its own; closing would only make a flood cost us a TLS handshake per
    refusal. A refused CONNECT closes (there is no tunnel to keep)."""
    answer = refusals.render(decision, REASONS[decision.reason].http_status, close=close)
    return http.Response.make(answer.status, answer.body, answer.headers)


def internal_error() -> http.Response:
    """The 500 of an addon that failed where it had no decision to refuse with."""
    return http.Response.make(
        500,
        b'{"error":"egress_sidecar_internal_error"}\n',
        {"content-type": "application/json", "connection": "close"},
    )


def fail_closed[F: Callable[..., Awaitable[None]]](hook: F) -> F:
    """An exception in the hook refuses that flow (500) or that upstream connection;
    it never lets the flow through unchecked, nor takes the process down."""

    @functools.wraps(hook)
    async def wrapper(self: Any, target: Any) -> None:
        try:
            await hook(self, target)
        except Exception:
            logger.exception("%s hook %s failed; refusing", type(self).__name__, hook.__name__)
            if isinstance(target, http.HTTPFlow):
                target.response = internal_error()
            elif isinstance(target, server_hooks.ServerConnectionHookData):
                target.server.error = "egress-sidecar internal error"

    return wrapper  # type: ignore[return-value]


async def off_loop_if_large[T](size: int, work: Callable[[], T]) -> T:
    """`work()`, in a worker thread when it reads more than `OFF_LOOP_BYTES` (mitmproxy
    leaves the flow alone while the hook awaits), so that a large body does not stall
    every other connection; small ones are not worth the thread hop."""
    if size > OFF_LOOP_BYTES:
        return await asyncio.to_thread(work)
    return work()
