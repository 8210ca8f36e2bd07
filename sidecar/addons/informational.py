"""Drop informational (1xx, except 101) responses from HTTP/1 upstreams.

mitmproxy's HTTP/1 client layer takes the first response head it reads as the final
response (mitmproxy issue #2229): a `103 Early Hints` becomes the flow's response, is
sent to the gateway as if it were the answer, and the real `200` that follows is
"unexpected data from server" and closes the connection. The gateway is left waiting
for a final response that never comes. Its HTTP/2 client layer already drops 1xx
responses (logged, "not mission-critical"); this does the same for HTTP/1, which RFC
8297 allows an intermediary to do. Dropping (rather than forwarding) also means no
1xx header block reaches the gateway unscanned.

No addon hook runs at this point (hooks see the 103 as the whole response), so the
HTTP layer's client class is replaced by a subclass at start-up; `install` checks the
one assumption it rests on and refuses to start if mitmproxy changed. Why, and the
test that pins it: docs/mitmproxy-traps.md.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.proxy.layers.http._events import ErrorCode, ResponseProtocolError

# An informational status line at the start of the buffer (101 is a real upgrade), and
# the blank line ending a head, as h11's ReceiveBuffer.maybe_extract_lines finds it.
_INFORMATIONAL = re.compile(rb"HTTP/1\.[01] (1(?!01)\d\d)[ \r\n]")
_BLANK_LINE = re.compile(rb"\n\r?\n")
MAX_INFORMATIONAL = 16  # per response; more end the response with an error (502)
MAX_PEEK = 64 * 1024  # a head still incomplete at this size is no informational response


class InformationalDroppingHttp1Client(_http1.Http1Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._dropped = 0

    def read_headers(self, event: events.ConnectionEvent) -> layer.CommandGenerator[None]:
        if isinstance(event, events.DataReceived) and self.request is not None:
            while len(self.buf) <= MAX_PEEK:
                data = bytes(self.buf)
                status = _INFORMATIONAL.match(data)
                if status is None or _BLANK_LINE.search(data) is None:
                    break  # not informational, or its head is not complete yet
                if self._dropped >= MAX_INFORMATIONAL:
                    # An endless run of 1xx: end it as mitmproxy ends an unparseable
                    # response (the gateway gets a 502), rather than pass a 1xx on.
                    assert self.stream_id is not None
                    yield commands.CloseConnection(self.conn)
                    yield ReceiveHttp(
                        ResponseProtocolError(
                            self.stream_id,
                            "too many informational responses",
                            ErrorCode.GENERIC_SERVER_ERROR,
                        )
                    )
                    return
                self.buf.maybe_extract_lines()  # consumes exactly that head
                self._dropped += 1
                yield commands.Log(
                    f"dropped informational response {status.group(1).decode()}", logging.DEBUG
                )
        yield from super().read_headers(event)

    def mark_done(
        self, *, request: bool = False, response: bool = False
    ) -> layer.CommandGenerator[None]:
        if response:
            self._dropped = 0
        yield from super().mark_done(request=request, response=response)


def install() -> None:
    """Make mitmproxy's HTTP layer build our HTTP/1 client for upstream connections."""
    current = getattr(http_layers, "Http1Client", None)
    if current is InformationalDroppingHttp1Client:
        return
    if current is not _http1.Http1Client or not hasattr(_http1.Http1Client, "read_headers"):
        raise RuntimeError(
            "mitmproxy's HTTP/1 client layer is not where egress-sidecar expects it "
            "(see docs/mitmproxy-traps.md, informational responses)"
        )
    setattr(http_layers, "Http1Client", InformationalDroppingHttp1Client)  # noqa: B010
