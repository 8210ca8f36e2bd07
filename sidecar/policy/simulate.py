"""What the sidecar would decide about one request, without a network. Pure.

`policy test` and `policy explain` both ask this: the request's URL, method, SNI, Host
and tenant go through `PolicyEngine.decide` (destination, host agreement, port,
scheme, method, path), then the name's addresses through S3 vetting, then the headers
and query through the credential layer's detection (a real key the gateway holds is
refused; no key is ever read or added here, only the secret's *name* is reported).

Name resolution: no DNS is asked. A request may give the `addresses` its name
resolves to (to check `addresses:` entries, rebinding to private ranges, metadata);
without them the name is taken to resolve to public addresses only, which S3 always
accepts, so the outcome is the policy's.

Not simulated: virtual keys and tenant grants (they live in the keys file, not the
policy: `tenant` is carried into the decision only), limits (sizes, rates, timeouts),
TLS, response-side checks. `body` is carried for the request-body rules; no rule in
the core reads it yet.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import parse_qsl, urlsplit

from sidecar.decision import Decision, Reason, Verdict
from sidecar.engine import Attempt, PolicyEngine
from sidecar.hostnames import HostError, IPAddress, parse_host, split_host_port
from sidecar.policy.model import Endpoint

DEFAULT_PORTS = {"https": 443, "http": 80}


class RequestError(ValueError):
    """The request cannot be simulated (a URL we cannot read); the message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class SimRequest:
    url: str
    method: str = "GET"
    sni: str | None = None
    host: str | None = None  # Host header (host part)
    tenant: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: str | None = None  # for the request-body rules; not read by the core yet
    addresses: tuple[IPAddress, ...] | None = None  # None: public addresses assumed


@dataclasses.dataclass(frozen=True, slots=True)
class SimulatedTarget:
    scheme: str
    host: str
    port: int
    path: str  # with its query, as the request-target carries it
    query: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Simulation:
    decision: Decision
    endpoint: Endpoint | None  # the entry that matched the destination, if any
    credential_secret: str | None  # secret name the sidecar would add; never a value
    credential_note: str  # why none would be added, or how it would be


def parse_target(url: str) -> SimulatedTarget:
    """Scheme, host, port and path of an absolute http(s) URL."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise RequestError(f"not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise RequestError(f"{url!r}: only http:// and https:// URLs (write the scheme)")
    if "@" in parts.netloc:
        raise RequestError(f"{url!r}: user information in a URL is not supported")
    if not parts.netloc:
        raise RequestError(f"{url!r}: no host")
    try:
        host, port = split_host_port(parts.netloc, DEFAULT_PORTS[scheme])
    except HostError as exc:
        raise RequestError(str(exc)) from None
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    query = tuple(parse_qsl(parts.query, keep_blank_values=True))
    return SimulatedTarget(scheme, host, port, path, query)


def simulate(engine: PolicyEngine, request: SimRequest) -> Simulation:
    # Imported here: the CLI builds every subcommand's parser, and `policy check` should
    # not pay for the credential scanners it never uses.
    from sidecar.credentials.confinement import UNLISTED, key_withheld_because
    from sidecar.credentials.inject import HeaderList, prepare_request
    from sidecar.credentials.secret_store import SecretStore

    target = parse_target(request.url)
    attempt = Attempt(
        host=target.host,
        port=target.port,
        mode="explicit",
        scheme=target.scheme,
        method=request.method,
        path=target.path,
        sni=request.sni,
        host_header=request.host,
        tenant=request.tenant,
    )
    decision = engine.decide(attempt)
    endpoint = engine.endpoint(decision.rule)
    if decision.verdict is Verdict.BLOCK:
        return Simulation(decision, endpoint, None, f"request is blocked ({decision.reason})")
    decision = _vet(engine, decision, endpoint, request)
    if decision.verdict is Verdict.BLOCK:
        return Simulation(decision, endpoint, None, f"request is blocked ({decision.reason})")
    headers = HeaderList(list(request.headers))
    query = HeaderList(list(target.query), fold_case=False)
    vetted = decision if decision.address else decision.with_context(address="public")
    withheld = key_withheld_because(vetted, endpoint, target.scheme)
    result = prepare_request(
        endpoint or UNLISTED, headers, query, SecretStore(environ={}), add_key=False
    )
    if result.reason is not None:
        decision = engine.overrule(decision, result.reason, result.detail[:300])
        return Simulation(decision, endpoint, None, f"request is refused ({decision.reason})")
    if withheld is not None or endpoint is None or endpoint.credential is None:
        return Simulation(decision, endpoint, None, withheld or "no credential")
    spec = endpoint.credential
    note = f"adds secret {spec.secret!r} as {spec.header}: {spec.format}"
    return Simulation(decision, endpoint, spec.secret, note)


def _vet(
    engine: PolicyEngine, decision: Decision, endpoint: Endpoint | None, request: SimRequest
) -> Decision:
    """S3 on the given answers (names only: a literal was classified by `decide`)."""
    if request.addresses is None or parse_host(decision.host).name is None:
        return decision
    vetting = engine.vet_answers(request.addresses, endpoint)
    if vetting.reason is not Reason.ALLOWED:
        return engine.overrule(decision, vetting.reason, vetting.detail)
    return decision.with_context(address=str(vetting.address))
