"""`egress-sidecar report DECISION_LOGS...`: what enforce would break (audit) or broke.

Reads decision logs (one JSON object per line, as `egress-sidecar run` writes them;
other lines, such as a container runtime's prefixes or stack traces, are counted and
skipped) and summarises the refusals (`block` and `would_block`) per destination:
count, first and last seen, reasons, tenants, methods, paths. With `--suggest FILE`
it writes a policy file for what policy refused, for a human to review: `allow:`
entries for unlisted host names only (never IP literals, metadata or private
addresses, never anything refused for a reason audit mode enforces: those are attacks
or breakage, not missing policy), and comments for entries that exist but refused a
port, path or method. The suggestion is checked with the policy loader (together
with `--policy` when given) before it is written.

Pure reading and counting; the only I/O is the files named.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sidecar.decision import ALWAYS_ENFORCED, RULE_DEFAULT_DENY, Reason
from sidecar.hostnames import HostError, normalize_policy_host, parse_host
from sidecar.policy.errors import PolicyError
from sidecar.policy.loader import (
    ALLOWED_METHODS,
    find_policy_files,
    load_policy,
    load_policy_bytes,
)
from sidecar.policy.model import Policy
from sidecar.settings import bundled_policy_dir

REFUSED = ("block", "would_block")
# Policy refusals a new entry can answer; every other reason is enforced in audit mode
# too (addresses, literals, credentials, limits) and never becomes a suggestion.
ENTRY_REASONS = frozenset({Reason.HOST_NOT_ALLOWED.value})
WIDEN_REASONS = frozenset(
    {Reason.PORT_NOT_ALLOWED.value, Reason.PATH_NOT_ALLOWED.value, Reason.METHOD_NOT_ALLOWED.value}
)
_ENFORCED_IN_AUDIT = frozenset(r.value for r in ALWAYS_ENFORCED)
_SEGMENT = re.compile(r"^[A-Za-z0-9_~-][A-Za-z0-9._~-]*$")
_MAX_PATHS = 1000  # distinct paths kept per destination (the logs are attacker-shaped)


@dataclasses.dataclass(slots=True)
class Destination:
    host: str
    port: int
    count: int = 0
    first: str = ""
    last: str = ""
    verdicts: Counter[str] = dataclasses.field(default_factory=Counter)
    reasons: Counter[str] = dataclasses.field(default_factory=Counter)
    tenants: Counter[str] = dataclasses.field(default_factory=Counter)
    methods: Counter[str] = dataclasses.field(default_factory=Counter)
    rules: Counter[str] = dataclasses.field(default_factory=Counter)
    paths: set[str] = dataclasses.field(default_factory=set)

    def add(self, record: dict[str, Any]) -> None:
        self.count += 1
        when = str(record.get("time") or "")
        if when and (not self.first or when < self.first):
            self.first = when
        if when > self.last:
            self.last = when
        self.verdicts[str(record.get("decision"))] += 1
        self.reasons[str(record.get("reason"))] += 1
        self.tenants[str(record.get("tenant") or "-")] += 1
        self.rules[str(record.get("rule"))] += 1
        if record.get("method"):
            self.methods[str(record["method"])] += 1
        path = record.get("path")
        if isinstance(path, str) and len(self.paths) < _MAX_PATHS:
            self.paths.add(path)


@dataclasses.dataclass(slots=True)
class Summary:
    files: int = 0
    lines: int = 0
    not_json: int = 0
    other_events: int = 0
    verdicts: Counter[str] = dataclasses.field(default_factory=Counter)
    destinations: dict[tuple[str, int], Destination] = dataclasses.field(default_factory=dict)

    def add_line(self, line: str) -> None:
        self.lines += 1
        if not line.strip():
            return
        try:
            record = json.loads(line)
        except ValueError:
            self.not_json += 1
            return
        if not isinstance(record, dict) or not {"decision", "reason", "host"} <= record.keys():
            self.other_events += 1
            return
        verdict = str(record["decision"])
        self.verdicts[verdict] += 1
        if verdict not in REFUSED:
            return
        port = record.get("port")
        key = (str(record["host"]), port if isinstance(port, int) else 0)
        self.destinations.setdefault(key, Destination(*key)).add(record)

    def refused(self) -> list[Destination]:
        return sorted(self.destinations.values(), key=lambda d: (-d.count, d.host, d.port))


def summarise(paths: Iterable[str]) -> Summary:
    summary = Summary()
    for name in paths:
        summary.files += 1
        if name == "-":
            for line in sys.stdin:
                summary.add_line(line)
            continue
        with open(name, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                summary.add_line(line)
    return summary


def _top(counter: Counter[str], limit: int = 5) -> str:
    shown = ", ".join(f"{k} {v}" for k, v in counter.most_common(limit))
    more = len(counter) - limit
    return shown + (f", +{more} more" if more > 0 else "")


def render(summary: Summary) -> str:
    v = summary.verdicts
    lines = [
        f"decision logs: {summary.files} file(s), {summary.lines} lines: "
        f"{sum(v.values())} decisions, {summary.other_events} other events, "
        f"{summary.not_json} not JSON (skipped)",
        f"allow {v['allow']}; would_block {v['would_block']} (audit: enforce would refuse "
        f"these); block {v['block']} (refused)",
    ]
    refused = summary.refused()
    lines.append(f"refused destinations: {len(refused)}" + (" (by count)" if refused else ""))
    for d in refused:
        lines.append(
            f"  {d.host}:{d.port}  {d.count}  ({_top(d.verdicts)})  "
            f"first {d.first or '-'}  last {d.last or '-'}"
        )
        lines.append(f"      reasons: {_top(d.reasons)}; rules: {_top(d.rules)}")
        lines.append(f"      tenants: {_top(d.tenants)}; methods: {_top(d.methods) or '-'}")
        lines.append(f"      paths (distinct): {_top(_prefixes(d.paths)) or '-'}")
    return "\n".join(map(_one_line, lines))


# --- the suggested policy --------------------------------------------------------------


def _prefix(path: str) -> str | None:
    """The policy path for a seen path: `/v1/*` for /v1/chat/completions, `/` for /.

    None for a first segment a policy cannot list (escapes, dots, wildcards).
    """
    if path == "/":
        return "/"
    segment = path.split("/")[1] if path.startswith("/") else ""
    if not _SEGMENT.match(segment) or segment in (".", ".."):
        return None
    return f"/{segment}/*" if path.count("/") > 1 else f"/{segment}"


def provider_domains(policy: Policy) -> dict[str, str]:
    """Registrable domain of each key-bearing provider host -> the provider's rule."""
    from sidecar.domains import registrable_domain  # the PSL: see policy/diff.py

    return {
        registrable_domain(host.removeprefix("*.")): endpoint.rule
        for endpoint in policy.endpoints
        if endpoint.credential is not None
        for host in endpoint.hosts
    }


def _lookalike(name: str, known: dict[str, str]) -> str | None:
    """A provider's domain word inside another domain: how stolen keys were shipped out."""
    from sidecar.domains import registrable_domain

    domain = registrable_domain(name)
    if domain in known:
        return None
    for provider_domain, rule in sorted(known.items()):
        word = provider_domain.split(".")[0]
        if len(word) >= 4 and word in name:  # api-openai.com, api.openai.com.evil.example
            return f"{name} looks like {provider_domain} ({rule}) but is in {domain}"
    return None


def suggest(summary: Summary, known: dict[str, str] | None = None) -> str:
    """The suggested policy; `known`: provider domains (`provider_domains`) to warn about."""
    hosts: dict[str, list[Destination]] = {}
    skipped: list[str] = []
    widen: list[str] = []
    for d in summary.refused():
        entry_refusals = sum(d.reasons[r] for r in ENTRY_REASONS)
        narrow = Counter({r: d.reasons[r] for r in sorted(WIDEN_REASONS) if d.reasons[r]})
        if narrow:
            rule = d.rules.most_common(1)[0][0]
            widen.append(
                f"# {rule}: {d.host}:{d.port} refused {_top(narrow)}; methods "
                f"{_top(d.methods) or '-'}; paths {_top(_prefixes(d.paths)) or '-'}"
            )
        if not entry_refusals or d.rules[RULE_DEFAULT_DENY] == 0:
            continue
        enforced = [r for r in d.reasons if r in _ENFORCED_IN_AUDIT]
        if enforced:
            skipped.append(f"# skipped {d.host}: also refused for {', '.join(sorted(enforced))}")
            continue
        try:
            name = normalize_policy_host(d.host)
            literal = parse_host(d.host).address is not None
        except HostError:
            skipped.append(f"# skipped {d.host!r}: not a host name")
            continue
        if literal or name != d.host:
            skipped.append(f"# skipped {d.host}: not a host name in its canonical form")
            continue
        hosts.setdefault(name, []).append(d)
    out = [
        "# Suggested by `egress-sidecar report` from decision logs: REVIEW EVERY ENTRY.",
        "# Each is a destination the gateway tried and policy refused; some may be the",
        "# attack the sidecar is there to stop (a look-alike domain, a stolen key's",
        "# exfiltration host). Delete what you do not recognise; narrow paths and methods.",
        "# IP literals, metadata and private addresses are never suggested.",
        "version: 1",
    ]
    if hosts:
        out.append("allow:")
    for name, seen in sorted(hosts.items()):
        ports = sorted({d.port for d in seen if 0 < d.port < 65536})
        if not ports:
            skipped.append(f"# skipped {name}: no port in the logs")
            continue
        count = sum(d.count for d in seen)
        methods = sorted({m for d in seen for m in d.methods} & set(ALLOWED_METHODS))
        prefixes = sorted({p for d in seen for p in map(_prefix, d.paths) if p})
        tenants = _top(sum((d.tenants for d in seen), Counter()))
        out.append(
            f"  # {count} refused; first {min(d.first for d in seen) or '-'}, "
            f"last {max(d.last for d in seen) or '-'}; tenants {tenants}"
        )
        warning = _lookalike(name, known or {})
        if warning:
            out.append(f"  # WARNING: {warning}: a look-alike is where stolen keys go")
        out.append(f"  - name: {name}")
        out.append(f"    host: {name}")
        out.append(f"    ports: [{', '.join(map(str, ports))}]")
        if methods:
            out.append(f"    methods: [{', '.join(methods)}]")
        if prefixes:
            out.append(f"    paths: [{', '.join(json.dumps(p) for p in _outermost(prefixes))}]")
        if name.endswith((".svc", ".cluster.local", ".internal", ".local")):
            out.append(
                "    # in-cluster name: add 'addresses:' with the narrowest range it resolves to"
            )
    if widen:
        out += ["# Existing entries that refused a port, path or method:", *widen]
    out.extend(skipped)
    # Log values reach the comments: one logical line stays one line, whatever they hold.
    return "\n".join(map(_one_line, out)) + "\n"


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _prefixes(paths: Iterable[str]) -> Counter[str]:
    return Counter(_prefix(p) or "?" for p in paths)


def _outermost(prefixes: list[str]) -> list[str]:
    """Drop exact paths a prefix covers ("/v1" is not covered by "/v1/*")."""
    return [
        p
        for p in prefixes
        if p.endswith("/*") or not any(q.endswith("/*") and p.startswith(q[:-1]) for q in prefixes)
    ]


def check_suggestion(text: str, policy_paths: list[str]) -> None:
    """Raise PolicyError unless the suggestion loads (with the current policy, if given)."""
    sources = (
        [(str(p), p.read_bytes()) for p in find_policy_files(policy_paths)] if policy_paths else []
    )
    load_policy_bytes([*sources, ("<suggested policy>", text.encode())])


# --- command ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "logs",
        nargs="+",
        metavar="DECISION_LOGS",
        help="decision log files (JSON lines; '-' for stdin)",
    )
    parser.add_argument(
        "--suggest",
        metavar="FILE",
        help="write a suggested policy file for review ('-' for stdout)",
    )
    parser.add_argument(
        "--policy",
        nargs="+",
        action="extend",
        default=[],
        metavar="PATH",
        help="the current policy: the suggestion must load together with it",
    )


def main(args: argparse.Namespace) -> int:
    try:
        summary = summarise(args.logs)
    except OSError as exc:
        print(f"error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    print(render(summary))
    if args.suggest:
        try:
            current = load_policy(args.policy or [bundled_policy_dir() / "default.yaml"])
        except PolicyError as exc:
            return _problems("the current policy does not load", exc)
        text = suggest(summary, provider_domains(current))
        try:
            check_suggestion(text, args.policy)
        except PolicyError as exc:
            return _problems("the suggested policy does not load; not written", exc)
        if args.suggest == "-":
            sys.stdout.write(text)
        else:
            Path(args.suggest).write_text(text, encoding="utf-8")
            print(
                f"suggested policy written to {args.suggest} (review it; "
                f"check: egress-sidecar policy check {args.suggest})"
            )
    return 0


def _problems(what: str, exc: PolicyError) -> int:
    print(f"error: {what}:", file=sys.stderr)
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    return 2
