"""`egress-sidecar` command line: run | policy check|test|explain|diff | report | init |
redteam | virtual-key new|hash | keys list|suspend|resume.

Each subcommand lives in its own module and contributes `add_arguments(parser)` and
`main(args) -> int`; this file only wires them, so importing the CLI for `policy
check` never imports mitmproxy.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

# subcommand path -> (module, help)
_COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("run",): ("sidecar.runner", "run the proxy (explicit, reverse; admin on /metrics)"),
    ("policy", "check"): (
        "sidecar.policy.check",
        "validate policy files; exit 1 on any error (for CI)",
    ),
    ("policy", "test"): (
        "sidecar.policy.cases",
        "run a policy's test cases (no network); exit 1 on a failure, 2 on bad input",
    ),
    ("policy", "explain"): (
        "sidecar.policy.explain",
        "say which entry decides a URL and why, and what the sidecar would add",
    ),
    ("policy", "diff"): (
        "sidecar.policy.diff",
        "what a policy change opens and closes; exit 1 if it has risky additions",
    ),
    ("report",): (
        "sidecar.report",
        "summarise decision logs: what enforce would break or broke; suggest a policy",
    ),
    ("init",): (
        "sidecar.netinit",
        "install the pod's iptables/ip6tables redirect rules (init container)",
    ),
    ("redteam",): (
        "sidecar.redteam.command",
        "probe this deployment from the gateway's position; exit 1 if anything got out",
    ),
    ("virtual-key", "new"): (
        "sidecar.virtual_key_cli",
        "create a tenant's virtual key; prints the key and the hash for the keys file",
    ),
    ("keys", "list"): ("sidecar.keys_cli", "list suspended tenants (admin listener, token)"),
    ("keys", "suspend"): ("sidecar.keys_cli", "suspend a tenant's virtual keys"),
    ("keys", "resume"): ("sidecar.keys_cli", "lift a tenant's suspension"),
    ("virtual-key", "hash"): (
        "sidecar.virtual_key_cli",
        "hash a virtual key read from stdin (never pass keys as arguments)",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="egress-sidecar",
        description="Egress-enforcing sidecar for LLM gateways.",
    )
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for path, (module_name, help_text) in _COMMANDS.items():
        if len(path) == 1:
            sub = top.add_parser(path[0], help=help_text, description=help_text)
        else:
            if path[0] not in groups:
                group = top.add_parser(path[0], help=f"{path[0]} commands")
                groups[path[0]] = group.add_subparsers(
                    dest=f"{path[0].replace('-', '_')}_command", required=True, metavar="COMMAND"
                )
            sub = groups[path[0]].add_parser(path[1], help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        _load(module_name).add_arguments(sub)
    return parser


def _load(module_name: str) -> Any:
    return importlib.import_module(module_name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module = _load(args._module)
    code: int = module.main(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
