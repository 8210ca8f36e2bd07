"""Where the sidecar's own cloud credential calls may go: STS and Google's token endpoints.

These calls carry what mints a cloud credential (the web identity token, a signed JWT
assertion, a federated token) and bring back the credential itself. They are made by
the sidecar directly (not through its proxy), so they get the same care as any egress:

- **Only the official endpoints**: `https://sts[.<region>].amazonaws.com[.cn]` and
  `https://{oauth2,sts,iamcredentials}.googleapis.com`, plus the endpoints the operator
  names in the sidecar's own settings (`EGRESS_SIDECAR_STS_ENDPOINT`, a VPC endpoint
  or a test server; `EGRESS_SIDECAR_CLOUD_TOKEN_ENDPOINTS`). A `token_uri` in a key
  file that names anything else is refused, and so is a redirect.
- **Addresses vetted and pinned** (S3): every answer of the name must be public (or in
  `EGRESS_SIDECAR_CLOUD_ENDPOINT_ADDRESSES`, e.g. the private addresses of a VPC
  endpoint); metadata addresses never; the connection dials the vetted address, with
  the name kept for SNI and certificate checks.
- **No environment redirects them**: the pool is plain urllib3 (which reads no
  `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`), and STS is called without botocore, whose
  session reads `AWS_ENDPOINT_URL*`, `AWS_CA_BUNDLE`, config files and proxy variables.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import urllib3
import urllib3.connection
import urllib3.connectionpool

from sidecar.credentials.cloud_signing import CloudCredentialError
from sidecar.netguard import AddressClass, classify_address, is_metadata

__all__ = [
    "ENV_ADDRESSES",
    "ENV_STS_ENDPOINT",
    "ENV_TOKEN_ENDPOINTS",
    "EndpointRules",
    "sts_url",
    "vetted_pool",
]

ENV_STS_ENDPOINT = "EGRESS_SIDECAR_STS_ENDPOINT"
ENV_TOKEN_ENDPOINTS = "EGRESS_SIDECAR_CLOUD_TOKEN_ENDPOINTS"  # noqa: S105  (a name)
ENV_ADDRESSES = "EGRESS_SIDECAR_CLOUD_ENDPOINT_ADDRESSES"

GOOGLE_HOSTS = frozenset({"oauth2.googleapis.com", "sts.googleapis.com",
                          "iamcredentials.googleapis.com"})  # fmt: skip
_AWS_STS_HOST = re.compile(r"sts(-fips)?(\.[a-z]{2}(-[a-z]+)+-\d)?\.amazonaws\.com(\.cn)?")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Origin = tuple[str, str, int]  # scheme, host (lower case), port
Resolve = Callable[[str, int], Iterable[str]]


def _origin(url: str) -> Origin | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)


def _system_resolve(host: str, port: int) -> list[str]:
    answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in answers]


@dataclass(frozen=True)
class EndpointRules:
    extra_origins: frozenset[Origin] = frozenset()
    networks: tuple[Network, ...] = ()
    sts_override: str | None = None
    region: str = "us-east-1"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> EndpointRules:
        """The sidecar's own settings; errors name the variable and how to fix it."""
        origins: set[Origin] = set()
        sts = environ.get(ENV_STS_ENDPOINT) or None
        named = [sts] if sts else []
        named += [u.strip() for u in environ.get(ENV_TOKEN_ENDPOINTS, "").split(",") if u.strip()]
        for url in named:
            origin = _origin(url)
            if origin is None:
                raise ValueError(
                    f"{ENV_STS_ENDPOINT} / {ENV_TOKEN_ENDPOINTS}: {url!r} is not an "
                    "http(s) URL with a host"
                )
            origins.add(origin)
        networks: list[Network] = []
        for text in environ.get(ENV_ADDRESSES, "").split(","):
            if not text.strip():
                continue
            try:
                networks.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError:
                raise ValueError(
                    f"{ENV_ADDRESSES}: {text.strip()!r} is not an address range (CIDR)"
                ) from None
        # AWS_REGION only chooses among the official regional endpoints.
        region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        if not _REGION.fullmatch(region):
            region = "us-east-1"
        return cls(frozenset(origins), tuple(networks), sts, region)

    def refusal(self, url: str) -> str | None:
        """Why a call to `url` is not allowed, or None."""
        origin = _origin(url)
        if origin is None:
            return "not an http(s) URL"
        if origin in self.extra_origins:
            return None
        scheme, host, port = origin
        official = host in GOOGLE_HOSTS or _AWS_STS_HOST.fullmatch(host) is not None
        if not official or scheme != "https" or port != 443:
            return (
                f"{scheme}://{host}:{port} is not an official STS or Google token endpoint "
                f"(name others in {ENV_STS_ENDPOINT} / {ENV_TOKEN_ENDPOINTS})"
            )
        return None

    def vet(self, host: str, port: int, resolve: Resolve = _system_resolve) -> str:
        """Resolve `host`; every answer must be allowed; return the one to dial."""
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
            answers = [str(literal)]
        except ValueError:
            try:
                answers = list(resolve(host, port))
            except OSError as exc:
                raise CloudCredentialError(f"{host}: name resolution failed ({exc})") from None
        if not answers:
            raise CloudCredentialError(f"{host}: no address")
        for text in answers:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if is_metadata(address):
                raise CloudCredentialError(f"{host}: resolves to a metadata address, refused")
            cls = classify_address(address)
            if cls is not AddressClass.PUBLIC and not any(
                address.version == n.version and address in n for n in self.networks
            ):
                raise CloudCredentialError(
                    f"{host}: resolves to a {cls.value} address, refused (allow a range "
                    f"with {ENV_ADDRESSES})"
                )
        return answers[0].split("%", 1)[0]


def sts_url(rules: EndpointRules) -> str:
    return rules.sts_override or f"https://sts.{rules.region}.amazonaws.com/"


def vetted_pool(
    rules: EndpointRules, ca_certs: str, resolve: Resolve = _system_resolve
) -> urllib3.PoolManager:
    """A urllib3 pool that reaches only allowed endpoints, at vetted addresses."""

    def vetted(base: Any) -> Any:
        class Vetted(base):  # type: ignore[misc]
            def _new_conn(self) -> socket.socket:
                # The name was checked by the pool manager; dial a vetted address of it.
                self._dns_host = rules.vet(self.host, self.port, resolve)
                sock: socket.socket = super()._new_conn()
                return sock

        return Vetted

    class HttpPool(urllib3.connectionpool.HTTPConnectionPool):
        ConnectionCls = vetted(urllib3.connection.HTTPConnection)

    class HttpsPool(urllib3.connectionpool.HTTPSConnectionPool):
        ConnectionCls = vetted(urllib3.connection.HTTPSConnection)

    class Manager(urllib3.PoolManager):
        def connection_from_host(
            self,
            host: str | None,
            port: int | None = None,
            scheme: str | None = "http",
            pool_kwargs: dict[str, Any] | None = None,
        ) -> urllib3.HTTPConnectionPool:
            # Every connection, redirects included, goes through here.
            scheme = scheme or "http"
            netloc = f"[{host}]" if host and ":" in host else host
            url = f"{scheme}://{netloc}" + (f":{port}" if port else "")
            why = rules.refusal(url)
            if why is not None:
                raise CloudCredentialError(why)
            return super().connection_from_host(host, port, scheme, pool_kwargs)

    manager = Manager(
        cert_reqs="CERT_REQUIRED",
        ca_certs=ca_certs,
        timeout=urllib3.Timeout(connect=5.0, read=10.0),
        retries=urllib3.Retry(total=2, redirect=0, raise_on_redirect=True),
    )
    manager.pool_classes_by_scheme = {"http": HttpPool, "https": HttpsPool}
    return manager
