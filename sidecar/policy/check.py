"""`egress-sidecar policy check PATH...`: validate policy files, for a security team's CI.

Prints `OK: N files, M endpoints (mode=enforce), digest <12 hex>`, then the merged
policy (the mode and each entry with the file:line it comes from, and the entries
other files' `overrides.remove` dropped) unless `--quiet`, and exits 0; or prints
every problem as `file:line: key: message` on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import sys

from sidecar.policy.errors import PolicyError
from sidecar.policy.explain import describe_endpoint
from sidecar.policy.loader import load_policy
from sidecar.policy.model import Policy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="policy file, or directory whose *.yaml/*.yml files are merged (sorted, "
        "non-recursive, dot-files skipped)",
    )
    parser.add_argument("--quiet", action="store_true", help="print the OK line only")


def merged(policy: Policy) -> list[str]:
    """The merged policy, one line per entry, each with its source."""
    origin = f"set at {policy.mode_source}" if policy.mode_source else "default"
    lines = [f"mode {policy.mode} ({origin})"]
    for endpoint in policy.endpoints:
        lines.append(f"  {endpoint.rule}: {describe_endpoint(endpoint)}  ({endpoint.source})")
    for removal in policy.removed:
        lines.append(f"  removed {removal.rule} ({removal.source}) by {removal.by}")
    return lines


def main(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.paths)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        count = len(exc.problems)
        print(f"FAILED: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    print(
        f"OK: {len(policy.files)} files, {len(policy.endpoints)} endpoints "
        f"(mode={policy.mode.value}), digest {policy.digest[:12]}"
    )
    if not args.quiet:
        print("\n".join(merged(policy)))
    return 0
