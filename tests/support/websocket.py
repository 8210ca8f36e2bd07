"""The TLS context our tests give the openai SDK's WebSocket client (websockets' sync
client) when it talks through the sidecar.

That client starts its reader thread before it writes the upgrade request, and both use
one SSL object. With TLS 1.3 the server's NewSessionTicket arrives just after the
handshake; when the reader processes it while the request is being written, the request
is now and then never sent (OpenSSL does not allow a read and a write on one SSL object
at the same time). Reproduced 2 in 300 handshakes before the hot-path work of issue 17,
about 5 in 300 after, and it stopped at TLS 1.2. The sidecar's own trace of a failing
connection showed the handshake done, the ticket sent and no byte of a request ever
received. TLS 1.2 sends its ticket inside the handshake, so nothing arrives while the
request is written. The proxy path is otherwise the same: the sidecar accepts TLS 1.2
from the gateway.
"""

from __future__ import annotations

import ssl


def websocket_tls(cafile: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context
