"""`egress-sidecar policy test CASES... --policy PATH...`: a policy's own unit tests.

A case file lists requests and what the sidecar must decide about them; teams keep
them next to their policy and run them in CI. Each case runs through the pure core
(`sidecar/policy/simulate.py`): no network, no DNS. Format (docs/policy-reference.md,
"Policy tests"):

    version: 1
    cases:
      - name: chat completions get the OpenAI key
        request:
          method: POST                 # default GET
          url: https://api.openai.com/v1/chat/completions
          sni: api.openai.com          # optional: TLS SNI
          host: api.openai.com         # optional: Host header
          tenant: team-a               # optional
          headers: {authorization: "Bearer sk-dummy"}   # optional
          body: '{"model": "gpt-4o"}'  # optional: string or mapping (as JSON)
          addresses: [1.1.1.1]         # optional: what the name resolves to
        expect:
          decision: allow              # allow | block | would_block
          reason: allowed              # a reason code (README)
          rule: providers.openai       # optional
          credential: openai           # optional: the secret name added, or none

Prints `PASS`/`FAIL file:line name` per case and a summary; exit 0 when every case
passes, 1 when one fails, 2 when a case file or the policy cannot be read (every
problem as `file:line: key: message`).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from sidecar import yamlfile
from sidecar.decision import Reason, Verdict
from sidecar.engine import PolicyEngine
from sidecar.hostnames import IPAddress
from sidecar.policy.errors import PolicyError, Problem
from sidecar.policy.loader import ALLOWED_METHODS, load_policy
from sidecar.policy.simulate import RequestError, SimRequest, Simulation, parse_target, simulate

CASES_VERSION = 1
NO_CREDENTIAL = "none"
_TOP_KEYS = ("version", "policy", "cases")
_CASE_KEYS = ("name", "request", "expect")
_REQUEST_KEYS = ("method", "url", "sni", "host", "tenant", "headers", "body", "addresses")
_EXPECT_KEYS = ("decision", "reason", "rule", "credential")
_VERDICTS = ", ".join(v.value for v in Verdict)


@dataclasses.dataclass(frozen=True, slots=True)
class Expectation:
    decision: Verdict
    reason: Reason
    rule: str | None = None
    credential: str | None = None  # a secret name, or NO_CREDENTIAL


@dataclasses.dataclass(frozen=True, slots=True)
class Case:
    file: str
    line: int
    name: str
    request: SimRequest
    expect: Expectation
    policy: tuple[str, ...] = ()  # the case file's `policy:`, relative to the file


@dataclasses.dataclass(frozen=True, slots=True)
class CaseResult:
    case: Case
    simulation: Simulation
    mismatches: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.mismatches


# --- reading ---------------------------------------------------------------------------


class _CaseReader(yamlfile.YamlChecker):
    def __init__(self, file: str, problems: list[Problem]) -> None:
        super().__init__(file, problems)
        self.cases: list[Case] = []
        self.policy: tuple[str, ...] = ()

    def read(self, root: Node) -> None:
        top = self.mapping(root, "", _TOP_KEYS)
        if top is None:
            return
        version = top.get("version")
        if version is None:
            self.err(1, "version", f"missing: a case file starts with 'version: {CASES_VERSION}'")
        elif not (
            isinstance(version[1], ScalarNode)
            and version[1].tag == yamlfile.INT
            and version[1].value == str(CASES_VERSION)
        ):
            self.err(version[1], "version", f"unsupported: write 'version: {CASES_VERSION}'")
            return
        if "policy" in top:
            self.policy = self._policy(top["policy"][1])
        if "cases" not in top:
            self.err(1, "cases", "missing: list the cases under 'cases:'")
            return
        for index, node in enumerate(self.seq(top["cases"][1], "cases", "case") or []):
            self._case(index, node)

    def _policy(self, node: Node) -> tuple[str, ...]:
        base = Path(self.file).parent
        out = []
        for index, item in enumerate(self.seq(node, "policy", "policy path") or []):
            text = self.string(item, f"policy[{index}]", "a path relative to this file")
            if text is not None:
                out.append(str(base / text))
        return tuple(out)

    def _case(self, index: int, node: Node) -> None:
        key = f"cases[{index}]"
        errors = self._errors
        fields = self.mapping(node, key, _CASE_KEYS)
        if fields is None:
            return
        for required in _CASE_KEYS:
            if required not in fields:
                self.err(node, f"{key}.{required}", "missing: a case has name, request, expect")
        if errors != self._errors:
            return
        name = self.string(fields["name"][1], f"{key}.name", "the case's name")
        request = self._request(fields["request"][1], f"{key}.request")
        expect = self._expect(fields["expect"][1], f"{key}.expect")
        if errors == self._errors and name and request and expect:
            line = yamlfile.line(node)
            self.cases.append(Case(self.file, line, name, request, expect, self.policy))

    def _request(self, node: Node, key: str) -> SimRequest | None:
        fields = self.mapping(node, key, _REQUEST_KEYS)
        if fields is None:
            return None
        if "url" not in fields:
            self.err(node, f"{key}.url", "missing: the request's absolute URL, https://host/path")
            return None
        values: dict[str, str] = {}
        for name in ("method", "url", "sni", "host", "tenant"):
            if name in fields:
                text = self.string(fields[name][1], f"{key}.{name}")
                if text is not None:
                    values[name] = text
        method = values.get("method", "GET")
        if "method" in values and method not in (*ALLOWED_METHODS, "CONNECT", "TRACE"):
            self.err(fields["method"][1], f"{key}.method", f"unknown method {method!r}")
        if "url" in values:
            try:
                parse_target(values["url"])
            except RequestError as exc:
                self.err(fields["url"][1], f"{key}.url", str(exc))
        headers = (
            self._headers(fields["headers"][1], f"{key}.headers") if "headers" in fields else ()
        )
        body = self._body(fields["body"][1], f"{key}.body") if "body" in fields else None
        addresses = None
        if "addresses" in fields:
            addresses = self._addresses(fields["addresses"][1], f"{key}.addresses")
        if "url" not in values:
            return None
        return SimRequest(
            url=values["url"],
            method=method,
            sni=values.get("sni"),
            host=values.get("host"),
            tenant=values.get("tenant"),
            headers=headers,
            body=body,
            addresses=addresses,
        )

    def _headers(self, node: Node, key: str) -> tuple[tuple[str, str], ...]:
        out: list[tuple[str, str]] = []
        for name, (_, vnode) in (self.mapping(node, key, None) or {}).items():
            text = self.string(vnode, f"{key}.{name}", "a header value")
            if text is not None:
                out.append((name, text))
        return tuple(out)

    def _body(self, node: Node, key: str) -> str | None:
        if isinstance(node, ScalarNode) and node.tag == yamlfile.STR:
            return str(node.value)
        if isinstance(node, MappingNode):
            # YAML dates and binary have no JSON form: their text stands in.
            return json.dumps(yaml.safe_load(yaml.serialize(node)), default=str)
        self.err(node, key, "expected a string, or a mapping sent as JSON")
        return None

    def _addresses(self, node: Node, key: str) -> tuple[IPAddress, ...] | None:
        out: list[IPAddress] = []
        for index, item in enumerate(self.seq(node, key, "address", "addresses") or []):
            text = self.string(item, f"{key}[{index}]", "an IP address")
            if text is None:
                continue
            try:
                out.append(ipaddress.ip_address(text))
            except ValueError:
                self.err(item, f"{key}[{index}]", f"{text!r} is not an IP address")
        return tuple(out) if out else None

    def _expect(self, node: Node, key: str) -> Expectation | None:
        fields = self.mapping(node, key, _EXPECT_KEYS)
        if fields is None:
            return None
        values: dict[str, str] = {}
        for name in _EXPECT_KEYS:
            if name in fields:
                text = self.string(fields[name][1], f"{key}.{name}")
                if text is not None:
                    values[name] = text
        for required in ("decision", "reason"):
            if required not in fields:
                self.err(
                    node,
                    f"{key}.{required}",
                    f"missing: expect needs decision ({_VERDICTS}) and reason",
                )
        if "decision" not in values or "reason" not in values:
            return None
        try:
            verdict = Verdict(values["decision"])
        except ValueError:
            self.err(fields["decision"][1], f"{key}.decision", f"expected one of {_VERDICTS}")
            return None
        try:
            reason = Reason(values["reason"])
        except ValueError:
            self.err(
                fields["reason"][1],
                f"{key}.reason",
                f"unknown reason code {values['reason']!r}; see the README's reason table",
            )
            return None
        return Expectation(verdict, reason, values.get("rule"), values.get("credential"))


def read_cases(paths: Sequence[str | Path]) -> list[Case]:
    """Every case of the files (directories give their *.yaml/*.yml); PolicyError if bad."""
    problems: list[Problem] = []
    cases: list[Case] = []
    for path in _case_files(paths, problems):
        try:
            data = path.read_bytes()
        except OSError as exc:
            problems.append(Problem(str(path), 0, "", f"cannot read file: {exc.strerror}"))
            continue
        empty = f"empty file: a case file starts with 'version: {CASES_VERSION}'"
        root = yamlfile.compose(str(path), data, problems, empty=empty)
        if root is None:
            continue
        reader = _CaseReader(str(path), problems)
        reader.read(root)
        cases.extend(reader.cases)
    if problems:
        raise PolicyError(problems)
    return cases


def _case_files(paths: Sequence[str | Path], problems: list[Problem]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(
                p
                for p in sorted(path.iterdir())
                if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
            )
        elif path.is_file():
            files.append(path)
        else:
            problems.append(Problem(str(path), 0, "", "no such file or directory"))
    return files


# --- running ---------------------------------------------------------------------------


def run_case(engine: PolicyEngine, case: Case) -> CaseResult:
    sim = simulate(engine, case.request)
    got = sim.decision
    want = case.expect
    mismatches: list[str] = []
    if got.verdict is not want.decision or got.reason is not want.reason:
        mismatches.append(
            f"expected {want.decision.value} {want.reason.value}, "
            f"got {got.verdict.value} {got.reason.value}"
        )
    if want.rule is not None and got.rule != want.rule:
        mismatches.append(f"expected rule {want.rule}, got {got.rule}")
    if want.credential is not None:
        added = sim.credential_secret or NO_CREDENTIAL
        if added != want.credential:
            mismatches.append(f"expected credential {want.credential}, got {added}")
    return CaseResult(case, sim, tuple(mismatches))


def describe_outcome(outcome: CaseResult) -> str:
    case = outcome.case
    got = outcome.simulation.decision
    where = f"{case.file}:{case.line}"
    if outcome.passed:
        return f"PASS {where} {case.name}"
    why = "; ".join(outcome.mismatches)
    context = f" (rule {got.rule}" + (f", {got.detail}" if got.detail else "") + ")"
    return f"FAIL {where} {case.name}: {why}{context}"


# --- command ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "cases", nargs="+", metavar="CASES", help="case files, or directories of *.yaml case files"
    )
    parser.add_argument(
        "--policy",
        nargs="+",
        action="extend",
        metavar="PATH",
        help="policy files or directories, as for 'policy check' (default: each case "
        "file's own 'policy:' list)",
    )


def main(args: argparse.Namespace) -> int:
    try:
        cases = read_cases(args.cases)
        engines = _engines(cases, args.policy)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"ERROR: {len(exc.problems)} problem(s) in the input", file=sys.stderr)
        return 2
    if not cases:
        print("ERROR: no cases found", file=sys.stderr)
        return 2
    failed = 0
    for case in cases:
        outcome = run_case(engines[_policy_of(case, args.policy)], case)
        failed += not outcome.passed
        print(describe_outcome(outcome))
    print(f"{'FAILED' if failed else 'OK'}: {len(cases) - failed} passed, {failed} failed")
    return 1 if failed else 0


def _policy_of(case: Case, given: Sequence[str] | None) -> tuple[str, ...]:
    return tuple(given) if given else case.policy


def _engines(
    cases: Sequence[Case], given: Sequence[str] | None
) -> dict[tuple[str, ...], PolicyEngine]:
    """One engine per distinct policy; a case with no policy at all is bad input."""
    engines: dict[tuple[str, ...], PolicyEngine] = {}
    tried: set[tuple[str, ...]] = set()
    problems: list[Problem] = []
    for case in cases:
        paths = _policy_of(case, given)
        if not paths:
            problems.append(
                Problem(
                    case.file,
                    1,
                    "policy",
                    "no policy: add 'policy: [PATH]' to the case file or pass --policy",
                )
            )
        elif paths not in tried:
            tried.add(paths)
            try:
                engines[paths] = PolicyEngine(load_policy(paths))
            except PolicyError as exc:
                problems.extend(exc.problems)
    if problems:
        raise PolicyError(dict.fromkeys(problems))
    return engines
