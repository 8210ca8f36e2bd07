"""`egress-sidecar policy explain URL`: which entry decides a request, why, and what follows.

Runs the request through the pure core (`simulate`), then prints the decision and
reason, the deciding entry with its file:line, the credential the sidecar would add
(the secret's *name* and header, never a value) and the addresses the name may
resolve to. Exit 0 when the request would be allowed, 1 when refused (block or
would_block), 2 on bad input.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

from sidecar.decision import REASONS, Verdict
from sidecar.engine import PolicyEngine
from sidecar.hostnames import IPAddress, parse_host
from sidecar.netguard import METADATA_ADDRESSES, is_metadata
from sidecar.policy.errors import PolicyError
from sidecar.policy.loader import load_policy
from sidecar.policy.model import Endpoint
from sidecar.policy.simulate import RequestError, SimRequest, Simulation, simulate
from sidecar.settings import bundled_policy_dir


def describe_endpoint(endpoint: Endpoint) -> str:
    """One line: what an entry lets out (shared by explain, check and diff)."""
    where = ", ".join(endpoint.hosts + tuple(str(c) for c in endpoint.cidrs))
    paths = (
        "any"
        if endpoint.paths.allows_any
        else ", ".join(sorted([*endpoint.paths.exact, *(p + "*" for p in endpoint.paths.prefixes)]))
    )
    methods = "any" if endpoint.methods is None else ", ".join(sorted(endpoint.methods))
    ports = ", ".join(str(p) for p in sorted(endpoint.ports))
    text = f"{where}; ports {ports}; paths {paths}; methods {methods}"
    if endpoint.tls_required:
        text += "; TLS upstream"
    if endpoint.credential is not None:
        text += f"; credential {endpoint.credential.secret!r} as {endpoint.credential.header}"
    return text


def acceptable_addresses(endpoint: Endpoint | None, host: str) -> str:
    parsed = parse_host(host)
    if parsed.address is not None:
        if is_metadata(parsed.address):
            return "none: cloud metadata addresses are never allowed"
        if endpoint is None or not endpoint.cidrs:
            return "none: no cidr entry lists this literal"
        return f"the literal itself (within {', '.join(map(str, endpoint.cidrs))}); no DNS"
    if endpoint is None:
        return "none: no entry lists the name, so it is not resolved"
    ranges = ", ".join(str(a) for a in endpoint.addresses) or "none listed"
    metadata = ", ".join(str(a) for a in sorted(METADATA_ADDRESSES, key=_order)[:2])
    return (
        f"public addresses; non-public ones only within addresses: ({ranges}); never "
        f"metadata ({metadata}, ...); one refused answer refuses them all"
    )


def _order(address: IPAddress) -> tuple[int, int]:
    return address.version, int(address)


def render(method: str, url: str, sim: Simulation, mode: str) -> str:
    decision = sim.decision
    lines = [f"{method} {url}"]
    outcome = f"{decision.verdict.value} ({decision.reason.value})"
    if decision.detail:
        outcome += f": {decision.detail}"
    lines.append(f"decision:   {outcome}")
    if decision.verdict is Verdict.WOULD_BLOCK:
        lines.append(f"            mode={mode}: logged as would_block and let through")
    elif decision.verdict is Verdict.BLOCK and REASONS[decision.reason].enforced_in_audit:
        lines.append("            refused in audit mode too")
    endpoint = sim.endpoint
    if endpoint is not None:
        lines.append(f"rule:       {endpoint.rule} at {endpoint.source}")
        lines.append(f"entry:      {describe_endpoint(endpoint)}")
    else:
        lines.append(f"rule:       {decision.rule} (no policy entry decided)")
    if sim.credential_secret is not None:
        lines.append(
            f"credential: {sim.credential_note} (name only: the value never leaves "
            "the secrets directory)"
        )
    else:
        lines.append(f"credential: none ({sim.credential_note})")
    lines.append(f"addresses:  {acceptable_addresses(endpoint, decision.host)}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url", metavar="URL", help="absolute URL, e.g. https://api.openai.com/v1/models"
    )
    parser.add_argument("--method", default="GET", help="HTTP method (default GET)")
    parser.add_argument("--tenant", help="tenant name carried into the decision")
    parser.add_argument("--sni", help="TLS SNI the client sends, if it differs")
    parser.add_argument("--host", help="Host header the client sends, if it differs")
    parser.add_argument(
        "--address",
        action="append",
        default=[],
        metavar="IP",
        help="an address the name resolves to (repeatable; default: public addresses)",
    )
    parser.add_argument(
        "--policy",
        nargs="+",
        action="extend",
        metavar="PATH",
        help="policy files or directories (default: the shipped default.yaml)",
    )


def main(args: argparse.Namespace) -> int:
    paths = args.policy or [str(bundled_policy_dir() / "default.yaml")]
    try:
        policy = load_policy(paths)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    try:
        addresses = tuple(ipaddress.ip_address(a) for a in args.address) or None
        request = SimRequest(
            url=args.url,
            method=args.method.upper(),
            sni=args.sni,
            host=args.host,
            tenant=args.tenant,
            addresses=addresses,
        )
        sim = simulate(PolicyEngine(policy), request)
    except (RequestError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render(request.method, args.url, sim, policy.mode.value))
    return 0 if sim.decision.verdict is Verdict.ALLOW else 1
