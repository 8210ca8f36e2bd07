"""What every addon answers with: the one refusal response, the fail-closed wrapper of a
hook, and the flow key of an allowed request's decision whose line is not written yet.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mitmproxy import http
from mitmproxy.proxy import server_hooks

from sidecar import refusals
from sidecar.decision import REASONS, Decision

logger = logging.getLogger("egress_sidecar")

# Flow metadata: an allowed request's decision, its line not yet written. The body
# inspectors (issue 13) replace it with a refusal; the response inspector (issue 14)
# writes it at the response end when LINE_AT_END (addons/enforcer.py) is set.
PENDING_DECISION_KEY = "egress_unrecorded_decision"


def refusal_response(decision: Decision, *, close: bool = False) -> http.Response:
    """THE builder of every refusal the gateway receives (requests, refused tunnels,
    upstream TLS failures; reuse it for refused responses). Body, headers and status
    come from `sidecar.refusals.render` (the destination's error format, the reason
    header, `x-should-retry: false`). Inside a kept-alive connection the next request
    is decided on its own; closing would only make a flood cost us a TLS handshake per
    refusal. A refused CONNECT closes (there is no tunnel to keep)."""
    answer = refusals.render(decision, REASONS[decision.reason].http_status, close=close)
    return http.Response.make(answer.status, answer.body, answer.headers)


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
                target.response = http.Response.make(
                    500,
                    b'{"error":"egress_sidecar_internal_error"}\n',
                    {"content-type": "application/json", "connection": "close"},
                )
            elif isinstance(target, server_hooks.ServerConnectionHookData):
                target.server.error = "egress-sidecar internal error"

    return wrapper  # type: ignore[return-value]
