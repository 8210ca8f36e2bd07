"""`overrides:`: drop another file's entries and set the mode once, without copying files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from policy_helpers import REPO, WriteFiles, problems_of

from sidecar.policy.loader import load_policy
from sidecar.policy.model import Mode, SourceRef
from tests.support.policy_lines import line_of

CLI = Path(sys.executable).parent / "egress-sidecar"
DEFAULT = REPO / "policies" / "default.yaml"


def test_remove_drops_the_defaults_provider_and_its_key(write_files: WriteFiles) -> None:
    (override,) = write_files(("zz.yaml", "version: 1\noverrides:\n  remove: [providers.xai]\n"))
    policy = load_policy([DEFAULT, override])
    assert policy.provider("xai") is None
    assert len(policy.endpoints) == 13
    (removal,) = policy.removed
    assert removal.rule == "providers.xai"
    assert removal.by == SourceRef(str(override), 3)
    assert removal.source.file == str(DEFAULT)


def test_mode_override_wins_over_the_defaults_explicit_mode(write_files: WriteFiles) -> None:
    (override,) = write_files(("zz.yaml", "version: 1\noverrides: {mode: audit}\n"))
    policy = load_policy([DEFAULT, override])
    assert policy.mode is Mode.AUDIT
    assert policy.mode_source == SourceRef(str(override), 2)


def test_plain_mode_still_conflicts_with_the_default(write_files: WriteFiles) -> None:
    (other,) = write_files(("zz.yaml", "version: 1\nmode: audit\n"))
    (problem,) = problems_of([DEFAULT, other])
    assert problem.key == "mode" and "conflicts with mode 'enforce'" in problem.message


def test_two_files_overriding_the_mode_differently_is_an_error(write_files: WriteFiles) -> None:
    a, b = write_files(
        ("a.yaml", "version: 1\noverrides: {mode: audit}\n"),
        ("b.yaml", "version: 1\noverrides: {mode: enforce}\n"),
    )
    (problem,) = problems_of([DEFAULT, a, b])
    assert (problem.file, problem.line, problem.key) == (str(b), 2, "overrides.mode")
    assert f"{a}:2 overrides it to 'audit'" in problem.message


def test_removed_entry_may_be_defined_anew_by_the_overriding_file(write_files: WriteFiles) -> None:
    (override,) = write_files(
        (
            "zz.yaml",
            """
            version: 1
            overrides: {remove: [providers.azure-openai]}
            providers:
              azure-openai:
                hosts: [contoso.openai.azure.com]
                credential: {header: api-key, format: "{secret}", secret: azure-openai}
            """,
        )
    )
    policy = load_policy([DEFAULT, override])
    azure = policy.provider("azure-openai")
    assert azure is not None and azure.hosts == ("contoso.openai.azure.com",)
    assert azure.source.file == str(override)


def test_removing_a_typo_is_an_error_not_a_silent_no_op(write_files: WriteFiles) -> None:
    (override,) = write_files(("zz.yaml", "version: 1\noverrides: {remove: [providers.xia]}\n"))
    (problem,) = problems_of([DEFAULT, override])
    assert (problem.line, problem.key) == (2, "overrides.remove[0]")
    assert problem.message == "no other file defines providers.xia: did you mean 'providers.xai'?"


def test_removing_an_entry_of_the_same_file_is_an_error(write_files: WriteFiles) -> None:
    (only,) = write_files(
        (
            "p.yaml",
            """
            version: 1
            overrides: {remove: [allow.otel]}
            allow:
              - {name: otel, host: otel.example.org, ports: [4318]}
            """,
        )
    )
    (problem,) = problems_of([only])
    assert "defined in this file: delete it here" in problem.message


def test_remove_takes_rule_ids_only(write_files: WriteFiles) -> None:
    (override,) = write_files(
        ("zz.yaml", "version: 1\noverrides: {remove: ['allow[0]', openai, providers.xai]}\n")
    )
    problems = problems_of([DEFAULT, override])
    assert [p.key for p in problems] == ["overrides.remove[0]", "overrides.remove[1]"]
    assert "give an unnamed allow entry a name" in problems[0].message


def test_unnamed_allow_entries_of_two_files_cannot_share_a_rule_id(write_files: WriteFiles) -> None:
    a, b = write_files(
        ("a.yaml", "version: 1\nallow:\n  - {host: a.example.org, ports: [443]}\n"),
        ("b.yaml", "version: 1\nallow:\n  - {host: b.example.org, ports: [443]}\n"),
    )
    (problem,) = problems_of([a, b])
    assert (problem.file, problem.line, problem.key) == (str(b), 3, "allow[0]")
    assert problem.message == (
        f"rule id allow[0] is also the id of the entry at {a}:3; give one of them a 'name:'"
    )


def test_named_entries_of_two_files_cannot_share_a_rule_id(write_files: WriteFiles) -> None:
    a, b = write_files(
        ("a.yaml", "version: 1\nallow:\n  - {name: svc, host: a.example.org, ports: [443]}\n"),
        ("b.yaml", "version: 1\nallow:\n  - {name: svc, host: b.example.org, ports: [443]}\n"),
    )
    (problem,) = problems_of([a, b])
    assert problem.file == str(b) and f"also defined at {a}:3" in problem.message


def test_check_shows_the_merged_policy_with_sources_and_removals(write_files: WriteFiles) -> None:
    (override,) = write_files(
        ("zz.yaml", "version: 1\noverrides:\n  mode: audit\n  remove: [providers.xai]\n")
    )
    result = subprocess.run(
        [str(CLI), "policy", "check", str(DEFAULT), str(override)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("OK: 2 files, 13 endpoints (mode=audit)")
    assert lines[1] == f"mode audit (set at {override}:3)"
    assert all(f"({DEFAULT}:" in line for line in lines[2:-1])
    assert (
        lines[-1]
        == f"  removed providers.xai ({DEFAULT}:{line_of(DEFAULT, 'xai:')}) by {override}:4"
    )


def test_removing_a_rule_twice_is_an_error(write_files: WriteFiles) -> None:
    (override,) = write_files(
        ("zz.yaml", "version: 1\noverrides: {remove: [providers.xai, providers.xai]}\n")
    )
    (problem,) = problems_of([DEFAULT, override])
    assert (problem.line, problem.key) == (2, "overrides.remove[1]")
    assert problem.message == "providers.xai is listed twice (also overrides.remove[0])"
