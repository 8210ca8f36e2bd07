"""The `dlp:` policy sections (request DLP, issue 13): loading, merging, and every
mistake refused with file, line and key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from policy_helpers import REPO, dedent, load_text, problems_of

from sidecar.dlp.document import DlpFinding
from sidecar.dlp.kinds import Confidence, SecretKind
from sidecar.dlp.rules import describe, effective, plan
from sidecar.policy.dlp import Action

SCHEMA = json.loads((REPO / "sidecar" / "policy" / "policy.schema.json").read_text())

KNOWN = hashlib.sha256(b"ghp_known_fixture_token").hexdigest()
POLICY = f"""\
version: 1
dlp:
  low: ignore
  actions: {{jwt: redact, env_dump: alert}}
  allow:
    - {{kinds: [aws_access_key_id], value: "AKIAFIXTURE*"}}
providers:
  openai:
    hosts: [api.openai.com]
    dlp:
      high: redact
      actions: {{env_dump: block}}
      allow:
        - {{sha256: "{KNOWN}"}}
  anthropic:
    hosts: [api.anthropic.com]
    dlp: {{enabled: false}}
  gemini:
    hosts: [generativelanguage.googleapis.com]
"""


def _finding(kind: SecretKind, confidence: Confidence = Confidence.HIGH) -> DlpFinding:
    return DlpFinding(kind, confidence, "$.x")


def test_sections_merge_provider_over_top_level_over_defaults(tmp_path: Path) -> None:
    policy = load_text(tmp_path, POLICY)
    openai = effective(policy.dlp, policy.provider("openai").dlp)  # type: ignore[union-attr]
    assert openai.enabled
    assert openai.action(_finding(SecretKind.PRIVATE_KEY)) is Action.REDACT  # provider high
    assert openai.action(_finding(SecretKind.ENV_DUMP)) is Action.BLOCK  # provider per kind
    assert openai.action(_finding(SecretKind.JWT, Confidence.LOW)) is Action.REDACT  # top per kind
    assert (
        openai.action(_finding(SecretKind.STRIPE_KEY, Confidence.LOW)) is Action.IGNORE
    )  # top low
    assert openai.allowed(SecretKind.AWS_ACCESS_KEY_ID, "AKIAFIXTURE00000001", "$.x")  # top allow
    assert openai.allowed(SecretKind.GITHUB_TOKEN, "ghp_known_fixture_token", "$.x")  # provider sha
    assert not openai.allowed(SecretKind.GITHUB_TOKEN, "ghp_other_token", "$.x")
    assert not effective(policy.dlp, policy.provider("anthropic").dlp).enabled  # type: ignore[union-attr]
    gemini = effective(policy.dlp, policy.provider("gemini").dlp)  # type: ignore[union-attr]
    assert gemini.action(_finding(SecretKind.PRIVATE_KEY)) is Action.BLOCK  # the default
    assert gemini.action(_finding(SecretKind.ENV_DUMP)) is Action.ALERT  # top per kind
    assert not gemini.allowed(SecretKind.GITHUB_TOKEN, "ghp_known_fixture_token", "$.x")


def test_no_dlp_section_means_block_high_alert_low(tmp_path: Path) -> None:
    policy = load_text(tmp_path, "version: 1\nproviders:\n  p:\n    hosts: [a.example.com]\n")
    rules = effective(policy.dlp, policy.provider("p").dlp)  # type: ignore[union-attr]
    assert rules.enabled
    assert rules.action(_finding(SecretKind.GCP_CREDENTIALS)) is Action.BLOCK
    assert rules.action(_finding(SecretKind.JWT, Confidence.LOW)) is Action.ALERT


def test_the_sidecar_own_keys_are_always_blocked_and_never_allowed(tmp_path: Path) -> None:
    policy = load_text(tmp_path, "version: 1\ndlp: {high: alert, low: ignore}\n")
    rules = effective(policy.dlp, None)
    assert rules.action(_finding(SecretKind.SIDECAR_KEY)) is Action.BLOCK
    assert not rules.allowed(SecretKind.SIDECAR_KEY, "anything", "$.x")


def test_a_request_takes_its_strongest_action() -> None:
    rules = effective(None, None)
    findings = (
        _finding(SecretKind.JWT, Confidence.LOW),
        _finding(SecretKind.AWS_SECRET_ACCESS_KEY),
        DlpFinding(SecretKind.GITHUB_TOKEN, Confidence.HIGH, "$.messages[1].content"),
    )
    result = plan(findings, rules)
    assert result.action is Action.BLOCK
    assert result.redact_kinds == {SecretKind.AWS_SECRET_ACCESS_KEY, SecretKind.GITHUB_TOKEN}
    assert describe(result.reported()) == (
        "aws_secret_access_key at $.x, github_token at $.messages[1].content, jwt at $.x"
    )
    assert plan((), rules).action is Action.IGNORE


def test_shipped_schema_accepts_the_sections() -> None:
    jsonschema.Draft202012Validator(SCHEMA).validate(yaml.safe_load(POLICY))


# (id, file text, line, key, message fragment)
ERRORS = [
    ("unknown key", "version: 1\ndlp:\n  hgih: block\n", 3, "dlp.hgih", "unknown key"),
    ("bad action", "version: 1\ndlp:\n  high: deny\n", 3, "dlp.high", "unknown action 'deny'"),
    (
        "unknown kind",
        "version: 1\ndlp:\n  actions:\n    aws_key: block\n",
        4,
        "dlp.actions.aws_key",
        "unknown kind 'aws_key'",
    ),
    (
        "own keys cannot be lowered",
        "version: 1\ndlp:\n  actions: {sidecar_key: alert}\n",
        3,
        "dlp.actions.sidecar_key",
        "always refused",
    ),
    (
        "enabled not a bool",
        "version: 1\ndlp:\n  enabled: yes please\n",
        3,
        "dlp.enabled",
        "true or false",
    ),
    (
        "allow without a condition",
        "version: 1\ndlp:\n  allow:\n    - {kinds: [jwt]}\n",
        4,
        "dlp.allow[0]",
        "needs 'value', 'sha256' or 'field'",
    ),
    (
        "allow everything glob",
        'version: 1\ndlp:\n  allow:\n    - {value: "*"}\n',
        4,
        "dlp.allow[0].value",
        "almost any secret",
    ),
    (
        "allow bad digest",
        "version: 1\ndlp:\n  allow:\n    - {sha256: ABC}\n",
        4,
        "dlp.allow[0].sha256",
        "64 lower-case hex digits",
    ),
    (
        "provider section",
        "version: 1\nproviders:\n  p:\n    hosts: [a.example.com]\n    dlp:\n      low: maybe\n",
        6,
        "providers.p.dlp.low",
        "unknown action 'maybe'",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_mistakes_are_refused_with_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, fragment: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    problems = problems_of([path])
    assert [(p.file, p.line, p.key) for p in problems] == [(str(path), line, key)]
    assert fragment in problems[0].message


def test_two_files_cannot_both_set_the_top_level_section(tmp_path: Path) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("version: 1\ndlp: {high: block}\n")
    second.write_text(dedent("version: 1\n\ndlp: {high: alert}\n"))
    problems = problems_of([first, second])
    assert [(p.file, p.line, p.key) for p in problems] == [(str(second), 3, "dlp")]
    assert f"{first}:2" in problems[0].message
