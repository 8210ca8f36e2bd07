"""Upstream name resolution with dnspython (S3): the sidecar asks, vets, then dials.

The sidecar never lets the OS (or mitmproxy) resolve an upstream name on its own:
the address it connects to is always one of the answers it vetted. Answers are
cached for their TTL (bounded), so the request hook and the connect hook that vet
the same name see the same answer instead of doing a second lookup.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import ipaddress
import time
from collections.abc import Callable

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from sidecar.hostnames import IPAddress

MAX_CACHE_ENTRIES = 4096
MIN_TTL = 1.0
MAX_TTL = 300.0


# Why a resolution failed: a bounded set, used as a metric label.
NO_ADDRESS = "no_address"  # NXDOMAIN or no A/AAAA data: the name has no address
TIMEOUT = "timeout"  # no answer from the resolver in time
SERVER_FAILURE = "server_failure"  # the resolver answered SERVFAIL, REFUSED, ...
OTHER = "other"  # anything else dnspython raised (malformed answers, ...)
ERROR_KINDS = (NO_ADDRESS, TIMEOUT, SERVER_FAILURE, OTHER)


class ResolutionError(Exception):
    """The name has no usable answer (NXDOMAIN, no data, timeout, server failure)."""

    def __init__(self, message: str, kind: str = OTHER) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def upstream_failed(self) -> bool:
        """The resolver failed (not: the name has no address); worth a retry later."""
        return self.kind in (TIMEOUT, SERVER_FAILURE)


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    addresses: tuple[IPAddress, ...]
    expires: float


def parse_resolver_address(text: str) -> tuple[str, int]:
    """ "127.0.0.1", "127.0.0.1:5353", "[::1]:53" -> (address, port)."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    ipaddress.ip_address(host)  # resolvers are given as addresses, never names
    return host, int(port) if port else 53


class Resolver:
    def __init__(
        self,
        nameserver: str | None = None,
        timeout: float = 3.0,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._on_error = on_error  # called once per failed lookup with its kind
        if nameserver:
            host, port = parse_resolver_address(nameserver)
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [host]
            self._resolver.port = port
        else:
            self._resolver = dns.asyncresolver.Resolver()  # /etc/resolv.conf
        self._resolver.lifetime = timeout
        self._resolver.cache = None  # our own cache below keeps both hooks consistent
        self._cache: collections.OrderedDict[str, Answer] = collections.OrderedDict()
        self._inflight: dict[str, asyncio.Future[Answer]] = {}

    @property
    def nameservers(self) -> list[str]:
        """The servers asked, as ADDRESS:PORT ([v6]:PORT), for the start-up event."""
        port = self._resolver.port
        return [
            f"[{ns}]:{port}" if ":" in str(ns) else f"{ns}:{port}"
            for ns in self._resolver.nameservers
        ]

    async def resolve(self, name: str) -> tuple[IPAddress, ...]:
        now = time.monotonic()
        cached = self._cache.get(name)
        if cached is not None and cached.expires > now:
            self._cache.move_to_end(name)
            return cached.addresses
        pending = self._inflight.get(name)
        if pending is not None:
            return (await asyncio.shield(pending)).addresses
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._inflight[name] = future
        try:
            answer = await self._query(name)
            future.set_result(answer)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            if isinstance(exc, ResolutionError) and self._on_error is not None:
                self._on_error(exc.kind)  # once per lookup, not per coalesced waiter
            raise
        finally:
            del self._inflight[name]
        self._cache[name] = answer
        self._cache.move_to_end(name)
        while len(self._cache) > MAX_CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return answer.addresses

    async def _query(self, name: str) -> Answer:
        # A and AAAA in parallel: the first request to a name waits for one round trip.
        results = await asyncio.gather(
            self._query_type(name, dns.rdatatype.A),
            self._query_type(name, dns.rdatatype.AAAA),
        )
        addresses = [a for found, _ in results for a in found]
        if not addresses:
            raise ResolutionError(f"no address for {name}", NO_ADDRESS)
        ttl = min(ttl for _, ttl in results)
        return Answer(tuple(addresses), time.monotonic() + max(MIN_TTL, ttl))

    async def _query_type(
        self, name: str, rdtype: dns.rdatatype.RdataType
    ) -> tuple[list[IPAddress], float]:
        try:
            result = await self._resolver.resolve(name + ".", rdtype, search=False)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return [], MAX_TTL
        except dns.exception.Timeout:
            raise ResolutionError(f"timeout asking for {name}", TIMEOUT) from None
        except dns.resolver.NoNameservers:
            raise ResolutionError(
                f"resolver failure (SERVFAIL/REFUSED) asking for {name}", SERVER_FAILURE
            ) from None
        except dns.exception.DNSException as exc:
            raise ResolutionError(f"{type(exc).__name__} asking for {name}") from None
        ttl = float(result.rrset.ttl) if result.rrset is not None else MIN_TTL
        return [ipaddress.ip_address(record.to_text()) for record in result], ttl
