"""`egress-sidecar redteam`: prove a live deployment holds, from the gateway's position.

Sends the catalogue's probes (sidecar/redteam/catalogue.py) with canary credentials,
rate limited, then prints a scorecard: per probe blocked, blocked and alerted, no
answer, not run, or MISSED, with the sidecar's reason code. Exit 0 only when nothing
was missed; 2 on bad usage. See docs/redteam.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request
from typing import Any

from sidecar.redteam.canaries import MARK, Canaries
from sidecar.redteam.catalogue import GROUPS, Http, build_catalogue
from sidecar.redteam.probing import Position, send
from sidecar.redteam.scorecard import (
    ProbeOutcome,
    Result,
    exit_code,
    judge,
    render_json,
    render_text,
)

EXIT_USAGE = 2
DEFAULT_TARGET = "1.1.1.1"  # any public address: the pod's rules must never reach it
DEFAULT_TARGET6 = "2606:4700:4700::1111"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--proxy",
        metavar="URL",
        help="probe through this explicit proxy (http://HOST:PORT) instead "
        "of from inside the pod; pod-only probes are then not run",
    )
    parser.add_argument(
        "--ca",
        metavar="FILE",
        help="the sidecar's CA certificate (accepted for symmetry with the "
        "gateway; probes never verify certificates, as an attacker would not)",
    )
    parser.add_argument(
        "--provider",
        default="https://api.openai.com",
        metavar="URL",
        help="an allowed provider that the content attacks (fronting, keys) are aimed at "
        "(https://api.openai.com)",
    )
    parser.add_argument(
        "--target",
        default=DEFAULT_TARGET,
        metavar="ADDRESS",
        help=f"outside IPv4 address for direct-egress probes ({DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--target6",
        default=DEFAULT_TARGET6,
        metavar="ADDRESS",
        help=f"outside IPv6 address ({DEFAULT_TARGET6})",
    )
    parser.add_argument(
        "--dns-server",
        metavar="ADDRESS",
        help="the pod's resolver (default: the first of /etc/resolv.conf)",
    )
    parser.add_argument(
        "--alertmanager",
        metavar="URL",
        help="Alertmanager to ask for each refusal's alert (else: not checked)",
    )
    parser.add_argument(
        "--alert-wait",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how long alerts may take to reach Alertmanager (15)",
    )
    parser.add_argument(
        "--group", action="append", choices=GROUPS, help="run only this group; repeatable"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=5.0,
        metavar="PER_SECOND",
        help="probes per second, at most (5): safe beside production traffic",
    )
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument("--run-id", metavar="ID", help="mark for this run (default: random)")
    parser.add_argument("--json", action="store_true", help="the scorecard as JSON, for CI")
    parser.add_argument("--list", action="store_true", help="list the probes and exit")  # fmt: skip


def main(args: argparse.Namespace) -> int:
    canaries = Canaries.new(args.run_id)
    probes = [
        p
        for p in build_catalogue(canaries, args.provider)
        if not args.group or p.group in args.group
    ]
    if args.list:
        for probe in probes:
            where = " (pod only)" if probe.pod_only else ""
            print(f"{probe.group:<22} {probe.name}{where}\n{'':<22} {probe.attack}")
        return 0
    try:
        position = _position(args, canaries.run_id)
    except ValueError as exc:
        sys.stderr.write(f"egress-sidecar redteam: {exc}\n")
        return EXIT_USAGE
    if args.alertmanager and not args.alertmanager.startswith(("http://", "https://")):
        sys.stderr.write("egress-sidecar redteam: --alertmanager takes an http(s):// URL\n")
        return EXIT_USAGE
    if args.rate <= 0 or args.timeout <= 0:
        sys.stderr.write("egress-sidecar redteam: --rate and --timeout must be positive\n")
        return EXIT_USAGE
    results: list[Result] = []
    started = time.time()
    for index, probe in enumerate(probes):
        if index:
            time.sleep(1.0 / args.rate)
        results.append(judge(probe, send(probe, position)))
    if args.alertmanager:
        results = _check_alerts(args.alertmanager, results, started, args.alert_wait)
    mode = f"proxy {args.proxy}" if args.proxy else "pod"
    if args.json:
        meta = {"run_id": canaries.run_id, "mode": mode, "marker": f"{MARK}-{canaries.run_id}"}
        sys.stdout.write(render_json(results, meta))
    else:
        header = f"egress-sidecar redteam: run {MARK}-{canaries.run_id}, {mode}"
        sys.stdout.write(render_text(results, header))
    return exit_code(results)


def _position(args: argparse.Namespace, run_id: str) -> Position:
    proxy = None
    if args.proxy:
        parts = urllib.parse.urlsplit(args.proxy)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"--proxy {args.proxy!r}: expected http://HOST:PORT")
        proxy = (parts.hostname, parts.port)
    return Position(
        run_id=run_id, proxy=proxy, target=args.target, target6=args.target6,
        timeout=args.timeout, dns_server=args.dns_server,
    )  # fmt: skip


def _check_alerts(url: str, results: list[Result], since: float, wait: float) -> list[Result]:
    """Mark each refusal whose alert Alertmanager holds: same reason, and (for a named
    destination) the probe's host among the alert's annotations. Polls until every
    refusal is matched or `wait` has passed."""
    deadline = time.monotonic() + wait
    while True:
        alerts = _alerts(url)
        marked = [_with_alert(r, alerts) for r in results]
        pending = [r for r in marked if r.outcome is ProbeOutcome.BLOCKED and r.alert != "alerted"]
        if not pending or time.monotonic() >= deadline:
            return marked
        time.sleep(1.0)


def _alerts(url: str) -> list[dict[str, Any]]:
    if not url.startswith(("http://", "https://")):
        return []
    try:
        request = url.rstrip("/") + "/api/v2/alerts"
        with urllib.request.urlopen(request, timeout=5) as reply:  # noqa: S310 (checked above)
            return list(json.load(reply))
    except (OSError, ValueError):
        return []


# What the sidecar's alert says for refusals whose reason the client could not read.
_ALERT_REASONS: dict[str, frozenset[str] | None] = {
    "dns_refused": frozenset({"dns_name_not_allowed", "dns_tunnel_suspected"}),
    "dns_nxdomain": frozenset({"dns_name_not_allowed", "dns_tunnel_suspected"}),
    "closed": frozenset({"protocol_not_allowed"}),
    "tls_refused": None,  # any reason: the ClientHello refusal names it in the alert only
}


def _with_alert(result: Result, alerts: list[dict[str, Any]]) -> Result:
    if result.outcome not in (ProbeOutcome.BLOCKED, ProbeOutcome.BLOCKED_ALERTED):
        return result
    reason = result.reason or ""
    reasons = _ALERT_REASONS.get(reason, frozenset({reason}))
    action = result.probe.action
    name = None
    if isinstance(action, Http) and "{" not in action.url:
        name = urllib.parse.urlsplit(action.url).hostname
    if name is not None and (name[0].isdigit() or ":" in name):
        name = None  # an address: alerts spell it their own way; the reason decides
    for alert in alerts:
        if reasons is not None and alert.get("labels", {}).get("reason") not in reasons:
            continue
        if name is None or name in json.dumps(alert.get("annotations", {})):
            return Result(result.probe, ProbeOutcome.BLOCKED_ALERTED, result.reason,
                          result.detail, "alerted")  # fmt: skip
    return Result(result.probe, result.outcome, result.reason, result.detail, "no alert found")
