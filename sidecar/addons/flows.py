"""What the request and response addons share about one flow (no policy here).

- The flow metadata keys the enforcer and request inspection leave for the addons
  registered after them (limits, credentials, DLP, response inspection).
- The answer when an addon fails with no decision to refuse with (fail closed).
- Where body work runs: on the event loop, or in a worker thread for a large body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mitmproxy import http

DECISION_KEY = "egress_decision"  # the decision the request goes on with (allow, would_block)
DOCUMENT_KEY = "egress_request_document"  # request inspection's parsed body: parsed once
API_KEY = "egress_request_api"  # request inspection's API family (`Api.value`)

OFF_LOOP_BYTES = 256 * 1024  # body work on more than this runs in a worker thread


def internal_error() -> http.Response:
    """The 500 of an addon that failed where it had no decision to refuse with."""
    return http.Response.make(
        500,
        b'{"error":"egress_sidecar_internal_error"}\n',
        {"content-type": "application/json", "connection": "close"},
    )


async def off_loop_if_large[T](size: int, work: Callable[[], T]) -> T:
    """`work()`, in a worker thread when it reads more than `OFF_LOOP_BYTES` (mitmproxy
    leaves the flow alone while the hook awaits), so that a large body does not stall
    every other connection; small ones are not worth the thread hop."""
    if size > OFF_LOOP_BYTES:
        return await asyncio.to_thread(work)
    return work()
