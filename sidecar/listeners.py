"""Proxy listening sockets bound once by the supervisor and shared by every worker.

The supervisor binds and listens on each listener's address (port 0 resolved once, so
every worker serves the same port) and hands the sockets to its workers; each worker's
mitmproxy accepts on the inherited socket instead of binding its own. One kernel
socket per address, accepted from by N processes:

- a worker that dies takes no queued connection with it (with SO_REUSEPORT, the
  connections waiting in the dead worker's own accept queue are reset);
- an accepted socket is an ordinary socket of the worker that accepted it, so
  transparent mode's SO_ORIGINAL_DST (read by mitmproxy on the accepted socket) is the
  one the client's connection was redirected from, whichever worker accepts;
- no other process of the pod's user can join the listener with SO_REUSEPORT and take
  a share of the connections.

docs/performance.md ("Workers") has the measurements behind choosing this over
SO_REUSEPORT.
"""

from __future__ import annotations

import socket
from typing import Any

BACKLOG = 1024
# For measuring the alternative only (docs/performance.md, "Workers"): "reuseport" makes
# the supervisor reserve each address without listening and every worker listen on its
# own SO_REUSEPORT socket. Not an option: the shared socket is what we ship.
ACCEPT_ENV = "EGRESS_SIDECAR_BENCH_ACCEPT"


def reuseport() -> bool:
    import os

    return os.environ.get(ACCEPT_ENV) == "reuseport"


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening TCP sockets for host:port as asyncio.start_server would bind them
    ("" = every address, v4 and v6), all on one port even when port is 0."""
    share = reuseport()
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address[0]) in seen:
                continue
            seen.add((family, address[0]))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if share:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if sockets[0] is not sock:  # port 0: the others take the first one's port
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            if not share:
                sock.listen(BACKLOG)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def use_inherited(by_spec: dict[str, list[socket.socket]]) -> None:
    """Make mitmproxy's TCP servers accept on these sockets (keyed by mode spec)."""
    import asyncio

    from mitmproxy.proxy import mode_servers

    original = mode_servers.AsyncioServerInstance.listen
    if reuseport():
        by_spec = {spec: [_own_socket(s) for s in socks] for spec, socks in by_spec.items()}

    async def listen(self: Any, host: str, port: int) -> list[Any]:
        sockets = by_spec.get(self.mode.full_spec)
        if sockets is None:
            return await original(self, host, port)
        return [
            await asyncio.start_server(self.handle_stream, sock=sock, backlog=BACKLOG)
            for sock in sockets
        ]

    mode_servers.AsyncioServerInstance.listen = listen  # type: ignore[method-assign]


def _own_socket(reserved: socket.socket) -> socket.socket:
    """(measurement only) this worker's SO_REUSEPORT socket on a reserved address."""
    sock = socket.socket(reserved.family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if reserved.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(reserved.getsockname())
    sock.listen(BACKLOG)
    reserved.close()
    return sock
