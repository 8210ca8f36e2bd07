"""Minimal reproduction, against plain mitmproxy: the sixth request on a kept-alive
client connection stalls when an addon's `server_connect` pins the upstream address.

    .venv/bin/python -m tests.mitmproxy_traps.sixth_request

No egress-sidecar code: mitmproxy's Master with its proxy server, a reverse listener
towards `localhost:PORT`, and a five-line addon that does what DNS pinning does (dial
the vetted IP, here 127.0.0.1, instead of the name). Without the addon every request
reuses one upstream connection; with it, every request opens a new one (the stored
connection's address no longer equals the requested one, so it is never matched for
reuse), the old ones stay open, and mitmproxy's per-client, per-address limit of five
concurrent upstream connections (an asyncio.Semaphore(5) held for each connection's
whole life) makes the sixth request wait until the upstream closes an idle one.
Explained in docs/mitmproxy-traps.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys

from mitmproxy import options
from mitmproxy.addons import next_layer, proxyserver
from mitmproxy.master import Master
from mitmproxy.proxy import server_hooks

from tests.support.ports import free_port

REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class PinAddress:
    """Dial the pinned address instead of the name (what a DNS-pinning addon does)."""

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        assert data.server.address is not None
        data.server.address = ("127.0.0.1", data.server.address[1])


@dataclasses.dataclass
class Outcome:
    answered: int  # requests answered before the first one that did not come back
    upstream_connections: int
    # The stalled request, once the upstream closed one idle connection: answered?
    released_by_idle_close: bool | None = None


class _Upstream:
    """HTTP/1.1 keep-alive server answering "ok" to every request; counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(REPLY)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def close_oldest(self) -> None:
        """What the upstream's idle timeout would do, eventually."""
        self.writers.pop(0).close()

    async def stop(self) -> None:
        for writer in self.writers:
            writer.close()
        assert self.server is not None
        self.server.close()
        await asyncio.sleep(0.1)  # let the handlers see EOF and return


async def reproduce(pin: bool, requests: int = 8, wait: float = 3.0) -> Outcome:
    upstream = _Upstream()
    upstream_port = await upstream.start()
    listen_port = free_port()
    opts = options.Options()
    master = Master(opts, event_loop=asyncio.get_running_loop())
    addons: list[object] = [PinAddress()] if pin else []
    master.addons.add(*addons, proxyserver.Proxyserver(), next_layer.NextLayer())
    opts.update(
        mode=[f"reverse:http://localhost:{upstream_port}@127.0.0.1:{listen_port}"],
        connection_strategy="lazy",
    )
    running = asyncio.create_task(master.run())
    outcome = Outcome(0, 0)
    try:
        for _ in range(200):  # wait for the listener
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", listen_port)
                break
            except OSError:
                await asyncio.sleep(0.05)
        else:
            raise RuntimeError("mitmproxy did not listen")

        async def answer() -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            await reader.readexactly(len(b"ok"))

        for _ in range(requests):  # one kept-alive client connection, one at a time
            writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            await writer.drain()
            pending = asyncio.ensure_future(answer())
            done, _ = await asyncio.wait([pending], timeout=wait)
            if not done:
                # Stalled. If it waits for a connection slot, freeing one releases it.
                upstream.close_oldest()
                done, _ = await asyncio.wait([pending], timeout=wait)
                outcome.released_by_idle_close = bool(done)
                pending.cancel()
                break
            pending.result()
            outcome.answered += 1
        writer.close()
        await asyncio.sleep(0.1)
    finally:
        outcome.upstream_connections = upstream.connections
        master.shutdown()
        await running
        await upstream.stop()
    return outcome


def main() -> int:
    for pin in (False, True):
        outcome = asyncio.run(reproduce(pin))
        label = "with address pinning   " if pin else "without address pinning"
        print(
            f"{label}: {outcome.answered} of 8 requests answered in turn, "
            f"{outcome.upstream_connections} upstream connections; the stalled request "
            f"answered once the upstream closed an idle connection: "
            f"{outcome.released_by_idle_close}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
