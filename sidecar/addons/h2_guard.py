"""HTTP/2 requests whose `:authority` and `host` differ (S5, S9; issue 11 item 3).

The h2 library checks, with `validate_inbound_headers` on, that a request header
block's `:authority` and `host` are byte-for-byte equal. When they are not it raises
`ProtocolError` while decoding the block; mitmproxy's HTTP/2 layer answers with a
GOAWAY (PROTOCOL_ERROR) and closes the connection. No request object exists and no
addon hook runs, so the attempt left no decision line. There is no stream to answer
with a 403 on: the connection is gone by then.

We keep the validation (turning `validate_inbound_headers` off would also drop h2's
checks for upper-case and illegal characters in field names, connection-specific
fields and `te`, pseudo-header rules, empty or missing `:path`, and requests with
neither `:authority` nor `host`: the checks that stop HTTP/2-to-HTTP/1 smuggling,
see docs/tls-and-http2.md). mitmproxy reports the error only through its logger
`mitmproxy.proxy.server`, with the client's address attached (`record.client`). This
filter, installed on that logger, remembers which client connections h2 closed for
this reason; the enforcer turns that into one `host_mismatch` decision when the
connection ends. Everything else below ERROR is dropped, as the runner wants
(mitmproxy's informational lines can quote raw request lines).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict

MITMPROXY_CONNECTION_LOGGER = "mitmproxy.proxy.server"
# The text h2 (4.x) raises and mitmproxy logs; tests/integration/test_h2_host_mismatch.py
# fails if either changes it.
_MISMATCH = re.compile(
    r"HTTP/2 protocol error: Request header block has mismatched :authority and Host "
    r"headers: (b'.*'|b\".*\") / (b'.*'|b\".*\")$"
)
_MAX_PENDING = 10_000  # connections closed by h2 whose disconnect has not been seen yet


class H2HostMismatches(logging.Filter):
    def __init__(self, show_from: int = logging.ERROR) -> None:
        super().__init__()
        self._show_from = show_from
        self._pending: OrderedDict[tuple[object, ...], tuple[str, str]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self._show_from:
            return True
        found = _MISMATCH.search(record.getMessage())
        peer = getattr(record, "client", None)
        if found and peer is not None:
            self._pending[tuple(peer)] = (_text(found.group(1)), _text(found.group(2)))
            while len(self._pending) > _MAX_PENDING:
                self._pending.popitem(last=False)
        return False

    def pop(self, peername: tuple[object, ...]) -> tuple[str, str] | None:
        """(:authority, host) if h2 closed this client's connection for disagreeing."""
        return self._pending.pop(tuple(peername), None)

    @classmethod
    def install(cls) -> H2HostMismatches:
        watcher = cls()
        logger = logging.getLogger(MITMPROXY_CONNECTION_LOGGER)
        logger.setLevel(logging.INFO)  # the error is logged at INFO; the filter drops it
        logger.addFilter(watcher)
        return watcher


def _text(literal: str) -> str:
    """b'...' as mitmproxy printed it -> printable text, bounded (attacker-chosen)."""
    inner = literal[2:-1][:200]
    return "".join(c if c.isprintable() and c.isascii() else "?" for c in inner)
