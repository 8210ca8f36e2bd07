"""Our answers in place of the error pages mitmproxy writes itself.

mitmproxy answers some failures without any addon hook able to change the answer: a
request it cannot parse (400), an upstream connection or TLS handshake that failed
(502), a body over the size limit. It writes an HTML page naming itself and its
version (`Server: mitmproxy 12.2.3`). The `error` hook runs before that page is
written but cannot replace it, so `install()` swaps the two module-level functions
mitmproxy builds it with, and the version string its HTTP/2 error headers carry
(docs/refusals.md, "Answers mitmproxy writes itself"):

- HTTP/1 `make_error_response(status, message)`: our refusal when the enforcer has
  announced one for that error (`expect`), else a generic JSON error that never echoes
  the message (it can quote a raw request line, query string and all);
- HTTP/2 `format_error(status, message)`: the same JSON body (mitmproxy keeps its
  own status and `content-type: text/html` there, and adds no reason header);
- `version.MITMPROXY`: our name, without a version.

tests/integration/test_refusals.py pins the functions' existence and our answers, so a
mitmproxy upgrade that moves them fails a test instead of bringing the HTML back.
"""

from __future__ import annotations

import collections
import time

from mitmproxy import http, version
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers.http import _http1, _http2

from sidecar import refusals

# error text -> answers the enforcer built for flows that failed with it, oldest first.
# Bounded: an entry is used by the very next page for that error; stale ones expire.
_MAX_PENDING = 256
_TTL = 30.0
_expected: collections.OrderedDict[str, collections.deque[tuple[float, http.Response]]] = (
    collections.OrderedDict()
)


def expect(message: str, response: http.Response) -> None:
    """The next error page mitmproxy writes for `message` is `response`."""
    queue = _expected.setdefault(message, collections.deque(maxlen=64))
    queue.append((time.monotonic(), response))
    _expected.move_to_end(message)
    while len(_expected) > _MAX_PENDING:
        _expected.popitem(last=False)


def _take(message: str) -> http.Response | None:
    queue = _expected.get(message)
    now = time.monotonic()
    while queue:
        at, response = queue.popleft()
        if now - at <= _TTL:
            if not queue:
                _expected.pop(message, None)
            return response
    _expected.pop(message, None)
    return None


def make_error_response(status_code: int, message: str = "") -> bytes:
    announced = _take(message)
    if announced is not None:
        return bytes(http1.assemble_response(announced))
    answer = refusals.proxy_error(status_code)
    return bytes(
        http1.assemble_response(http.Response.make(answer.status, answer.body, answer.headers))
    )


def format_error(status_code: int, message: str) -> bytes:
    announced = _take(message)
    if announced is not None and announced.content is not None:
        return announced.content
    return refusals.proxy_error(status_code).body


def install() -> None:
    _http1.make_error_response = make_error_response
    _http2.format_error = format_error  # type: ignore[attr-defined]
    version.MITMPROXY = refusals.NAME
