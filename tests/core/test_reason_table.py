"""The reason table in sidecar/decision.py is the one place a reason's status, audit
behaviour, severity and meaning live; the README's table must say the same."""

from __future__ import annotations

import re
from pathlib import Path

from sidecar.decision import ALWAYS_ENFORCED, REASONS, Reason, Severity

README = Path(__file__).resolve().parents[2] / "README.md"
_ROW = re.compile(r"^\| `([a-z_]+)` \| (.+) \| (.+) \| (block|would_block) \| (\w+) \|$")


def readme_reason_rows() -> dict[str, tuple[str, str, str, str]]:
    text = README.read_text()
    section = text.split("## Reason codes", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = _ROW.match(line)
        if match:
            reason, meaning, answer, audit, severity = match.groups()
            assert reason not in rows, f"README lists {reason} twice"
            rows[reason] = (meaning, answer, audit, severity)
    return rows


def test_every_reason_has_a_row() -> None:
    assert set(REASONS) == set(Reason)


def test_readme_reason_table_matches_the_reason_table() -> None:
    rows = readme_reason_rows()
    expected = {
        reason.value: (
            spec.meaning,
            spec.answer,
            "block" if spec.enforced_in_audit else "would_block",
            spec.severity.value,
        )
        for reason, spec in REASONS.items()
        if reason is not Reason.ALLOWED
    }
    assert rows == expected


def test_always_enforced_is_derived_from_the_table() -> None:
    assert {r for r, s in REASONS.items() if s.enforced_in_audit} == ALWAYS_ENFORCED


def test_an_http_refusal_always_has_an_error_status() -> None:
    for reason, spec in REASONS.items():
        assert 400 <= spec.http_status <= 599, reason


def test_what_steals_credentials_or_reaches_metadata_pages_as_critical() -> None:
    for reason in (
        Reason.METADATA_ADDRESS,
        Reason.GATEWAY_HOLDS_CREDENTIAL,
        Reason.CREDENTIAL_REFLECTED,
        Reason.HOST_MISMATCH,
    ):
        assert REASONS[reason].severity is Severity.CRITICAL


_DECIDED_IN = re.compile(r"^- \[(sidecar/[a-z_/]+\.py)\]\([^)]*\)[^:]*: (.+)$")


def test_readme_names_the_module_that_decides_each_reason() -> None:
    """One hop from a reason code to the code that decides it: README's list, checked
    against the modules (each names `Reason.X` where it builds the decision)."""
    section = README.read_text().split("## Reason codes", 1)[1].split("\n## ", 1)[0]
    root = README.parent
    seen: dict[str, str] = {}
    for line in section.splitlines():
        match = _DECIDED_IN.match(line)
        if not match:
            continue
        module, codes = match[1], re.findall(r"`([a-z_]+)`", match[2])
        source = (root / module).read_text()
        for code in codes:
            assert code not in seen, f"{code} listed under {seen[code]} and {module}"
            seen[code] = module
            assert re.search(rf"\bReason\.{Reason(code).name}\b", source), (code, module)
    assert set(seen) == {r.value for r in Reason if r is not Reason.ALLOWED}
