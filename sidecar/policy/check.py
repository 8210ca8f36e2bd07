"""`egress-sidecar policy check PATH...`: validate policy files, for a security team's CI.

Prints `OK: N files, M endpoints (mode=enforce), digest <12 hex>` and exits 0, or
prints every problem as `file:line: key: message` on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import sys

from sidecar.policy.errors import PolicyError
from sidecar.policy.loader import load_policy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="policy file, or directory whose *.yaml/*.yml files are merged (sorted, "
        "non-recursive, dot-files skipped)",
    )


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
    return 0
