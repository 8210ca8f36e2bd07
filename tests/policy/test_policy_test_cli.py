"""`egress-sidecar policy test`: case files run against the pure core.

The shipped case files (policies/tests/) run here as the real console command, so a
change to the default or an example that breaks what its cases promise fails CI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from policy_helpers import REPO, WriteFiles

from sidecar.decision import Reason, Verdict
from sidecar.engine import PolicyEngine
from sidecar.policy.cases import read_cases, run_case
from sidecar.policy.errors import PolicyError
from sidecar.policy.loader import load_policy

CLI = Path(sys.executable).parent / "egress-sidecar"
CASES = REPO / "policies" / "tests"
DEFAULT = REPO / "policies" / "default.yaml"


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "policy", "test", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("path", sorted(CASES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_cases_pass(path: Path) -> None:
    result = run(path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    count = len(read_cases([path]))
    assert count >= 2
    assert [line.split(" ", 1)[0] for line in lines[:-1]] == ["PASS"] * count
    assert lines[-1] == f"OK: {count} passed, 0 failed"


def test_shipped_cases_cover_every_example() -> None:
    named = {Path(p).resolve() for case in read_cases([CASES]) for p in case.policy}
    shipped = {DEFAULT, *(REPO / "policies" / "examples").glob("*.yaml")}
    assert shipped <= named


def test_failing_case_prints_fail_line_and_exits_1(write_files: WriteFiles) -> None:
    (cases,) = write_files(
        (
            "cases.yaml",
            f"""
            version: 1
            policy: [{DEFAULT}]
            cases:
              - name: openai is allowed
                request: {{url: "https://api.openai.com/v1/models"}}
                expect: {{decision: allow, reason: allowed, credential: openai}}
              - name: wrongly expects the look-alike to pass
                request: {{url: "https://api-openai.com/v1/models"}}
                expect: {{decision: allow, reason: allowed}}
            """,
        )
    )
    result = run(cases)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"PASS {cases}:4 openai is allowed",
        f"FAIL {cases}:7 wrongly expects the look-alike to pass: expected allow allowed, got "
        "block host_not_allowed (rule default_deny, no policy entry)",
        "FAILED: 1 passed, 1 failed",
    ]


def test_bad_case_file_names_file_line_key_and_exits_2(write_files: WriteFiles) -> None:
    (cases,) = write_files(
        (
            "bad.yaml",
            """
            version: 1
            cases:
              - name: typo in the reason
                request: {url: "https://api.openai.com/v1/models", methd: GET}
                expect: {decision: allowed, reason: allowd}
              - name: not a URL
                request: {url: "api.openai.com/v1"}
                expect: {decision: block, reason: host_not_allowed}
            """,
        )
    )
    result = run(cases, "--policy", DEFAULT)
    assert result.returncode == 2
    assert result.stdout == ""
    errors = result.stderr.splitlines()
    assert errors[:3] == [
        f"{cases}:4: cases[0].request.methd: unknown key 'methd': did you mean 'method'?",
        f"{cases}:5: cases[0].expect.decision: expected one of allow, block, would_block",
        f"{cases}:7: cases[1].request.url: 'api.openai.com/v1': only http:// and https:// "
        "URLs (write the scheme)",
    ]


def test_case_file_without_a_policy_is_bad_input(write_files: WriteFiles) -> None:
    (cases,) = write_files(
        (
            "c.yaml",
            """
            version: 1
            cases:
              - name: x
                request: {url: "https://api.openai.com/v1/models"}
                expect: {decision: allow, reason: allowed}
            """,
        )
    )
    result = run(cases)
    assert result.returncode == 2
    assert f"{cases}:1: policy: no policy" in result.stderr


def _one(tmp_path: Path, policy: str, request: str) -> tuple[Verdict, Reason, str | None]:
    (tmp_path / "p.yaml").write_text(policy)
    (tmp_path / "c.yaml").write_text(
        "version: 1\npolicy: [p.yaml]\ncases:\n  - name: x\n"
        f"    request: {request}\n    expect: {{decision: allow, reason: allowed}}\n"
    )
    (case,) = read_cases([tmp_path / "c.yaml"])
    outcome = run_case(PolicyEngine(load_policy(case.policy)), case)
    decision = outcome.simulation.decision
    return decision.verdict, decision.reason, outcome.simulation.credential_secret


AUDIT = "version: 1\nmode: audit\nallow:\n  - {name: svc, host: svc.example.org, ports: [443]}\n"


def test_audit_mode_cases_see_would_block_but_metadata_still_blocks(tmp_path: Path) -> None:
    assert _one(tmp_path, AUDIT, '{url: "https://other.example.org/"}') == (
        Verdict.WOULD_BLOCK,
        Reason.HOST_NOT_ALLOWED,
        None,
    )
    assert _one(tmp_path, AUDIT, '{url: "http://[::ffff:169.254.169.254]/"}')[:2] == (
        Verdict.BLOCK,
        Reason.METADATA_ADDRESS,
    )


def test_dns_rebinding_case_to_loopback_is_refused(tmp_path: Path) -> None:
    request = '{url: "https://svc.example.org/", addresses: [1.1.1.1, 127.0.0.1]}'
    assert _one(tmp_path, AUDIT, request)[:2] == (Verdict.BLOCK, Reason.PRIVATE_ADDRESS)


def test_gateway_key_in_the_query_is_refused_and_never_printed(tmp_path: Path) -> None:
    key = (
        "sk-ant-api03-"
        + "Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0Uv1Wx2Yz3Ab4Cd5Ef6Gh7Ij8Kl9Mn0Op1Qr2St3Uv4W"
    )
    policy = DEFAULT.read_text()
    request = f'{{url: "https://api.anthropic.com/v1/models?key={key}"}}'
    verdict, reason, _ = _one(tmp_path, policy, request)
    assert (verdict, reason) == (Verdict.BLOCK, Reason.GATEWAY_HOLDS_CREDENTIAL)
    result = run(tmp_path / "c.yaml")
    assert result.returncode == 1
    assert key not in result.stdout + result.stderr
    assert "gateway_holds_credential" in result.stdout


def test_body_is_read_as_text_or_json(write_files: WriteFiles) -> None:
    (cases,) = write_files(
        (
            "b.yaml",
            """
            version: 1
            cases:
              - name: text
                request: {url: "https://a.example/", body: "hello"}
                expect: {decision: block, reason: host_not_allowed}
              - name: mapping
                request: {url: "https://a.example/", body: {model: gpt-4o, stream: true}}
                expect: {decision: block, reason: host_not_allowed}
            """,
        )
    )
    text, mapping = read_cases([cases])
    assert text.request.body == "hello"
    assert mapping.request.body == '{"model": "gpt-4o", "stream": true}'


def test_unreadable_policy_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(PolicyError):
        read_cases([tmp_path / "missing.yaml"])
