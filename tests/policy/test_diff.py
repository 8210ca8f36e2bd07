"""`egress-sidecar policy diff OLD NEW`: opens, closes, changes and the risky-addition flags.

Each risk flag has a test named after the change an attacker (or a hurried reviewer)
would slip into a pull request, and a control that the same shape without the risk is
not flagged.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from policy_helpers import REPO, WriteFiles

from sidecar.policy.diff import CHANGES, CLOSES, OPENS, PolicyDiff, compare
from sidecar.policy.loader import load_policy
from tests.support.policy_lines import line_of

CLI = Path(sys.executable).parent / "egress-sidecar"
DEFAULT = REPO / "policies" / "default.yaml"
EXAMPLES = REPO / "policies" / "examples"

BASE = """
version: 1
providers:
  openai:
    hosts: [api.openai.com]
    paths: ["/v1/*"]
    credential: {header: authorization, format: "Bearer {secret}", secret: openai}
  anthropic:
    hosts: [api.anthropic.com]
    credential: {header: x-api-key, format: "{secret}", secret: anthropic}
allow:
  - {name: otel, host: otel.example.org, ports: [4318]}
"""


def diff_of(write_files: WriteFiles, new: str, old: str = BASE) -> PolicyDiff:
    old_path, new_path = write_files(("old/p.yaml", old), ("new/p.yaml", new))
    return compare(load_policy([old_path]), load_policy([new_path]))


def flags(diff: PolicyDiff) -> list[str]:
    return [r.flag for r in diff.risks]


def with_provider(extra: str) -> str:
    return BASE.replace("allow:\n", extra + "allow:\n")


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "policy", "diff", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "wildcard", ["*.amazonaws.com", "*.s3.amazonaws.com", "*.openai.azure.com",
                 "*.googleapis.com", "*.herokuapp.com", "*.co.uk"]
)  # fmt: skip
def test_diff_flags_wildcard_on_shared_cloud_domain(write_files: WriteFiles, wildcard: str) -> None:
    diff = diff_of(write_files, with_provider(f"  bucket:\n    hosts: ['{wildcard}']\n"))
    assert flags(diff) == ["wildcard_shared_domain"]
    assert diff.risks[0].rule == "providers.bucket"


def test_diff_does_not_flag_wildcard_on_own_domain(write_files: WriteFiles) -> None:
    diff = diff_of(write_files, with_provider("  mine:\n    hosts: ['*.llm.example.com']\n"))
    assert flags(diff) == []
    assert [c.rule for c in diff.of(OPENS)] == ["providers.mine"]


def test_diff_flags_key_moved_to_another_provider(write_files: WriteFiles) -> None:
    new = BASE.replace("secret: anthropic", "secret: openai").replace(
        '"Bearer {secret}", secret: openai', '"Bearer {secret}", secret: openai-2'
    )
    diff = diff_of(write_files, new)
    assert flags(diff) == ["credential_moved_provider"]
    assert "secret 'openai' was bound to providers.openai" in diff.risks[0].message


def test_diff_flags_key_sent_to_look_alike_domain(write_files: WriteFiles) -> None:
    new = BASE.replace("hosts: [api.openai.com]", "hosts: [api.openai.com, api.openai-eu.com]")
    diff = diff_of(write_files, new)
    assert flags(diff) == ["credential_new_domain"]
    assert "'api.openai-eu.com' gets secret 'openai'" in diff.risks[0].message


def test_diff_does_not_flag_new_host_in_the_providers_own_domain(write_files: WriteFiles) -> None:
    new = BASE.replace("hosts: [api.openai.com]", "hosts: [api.openai.com, eu.api.openai.com]")
    diff = diff_of(write_files, new)
    assert flags(diff) == []
    assert [(c.kind, c.what) for c in diff.changes] == [(OPENS, "host eu.api.openai.com")]


def test_diff_flags_key_bound_onto_an_allow_host(write_files: WriteFiles) -> None:
    new = BASE.replace("hosts: [api.anthropic.com]", "hosts: [api.anthropic.com, otel.example.org]")
    new = new.replace("  - {name: otel, host: otel.example.org, ports: [4318]}\n", "")
    new = new.replace("allow:\n", "")
    diff = diff_of(write_files, new)
    assert "credential_onto_allow_host" in flags(diff)
    assert (CLOSES, "allow.otel") in [(c.kind, c.rule) for c in diff.changes]


@pytest.mark.parametrize(
    ("cidr", "classes"),
    [
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/24", "link_local"),
        ("10.0.0.0/8", "private"),
        ("fd00:1::/32", "private"),
        ("0.0.0.0/2", "private, unspecified"),
    ],
)
def test_diff_flags_addresses_reaching_loopback_link_local_or_private(
    write_files: WriteFiles, cidr: str, classes: str
) -> None:
    new = BASE.replace("ports: [4318]}", f"ports: [4318], addresses: ['{cidr}']}}")
    diff = diff_of(write_files, new)
    assert flags(diff) == ["special_address_range"]
    assert diff.risks[0].message.startswith(f"addresses {cidr} includes {classes}")


def test_diff_flags_cidr_entry_on_private_range(write_files: WriteFiles) -> None:
    diff = diff_of(write_files, BASE + "  - {name: db, cidr: 192.168.1.0/24, ports: [5432]}\n")
    assert flags(diff) == ["special_address_range"]


def test_diff_does_not_flag_public_cidr(write_files: WriteFiles) -> None:
    diff = diff_of(write_files, BASE + "  - {name: db, cidr: 8.8.8.0/24, ports: [5432]}\n")
    assert flags(diff) == []


def test_diff_flags_mode_switched_to_audit(write_files: WriteFiles) -> None:
    diff = diff_of(write_files, BASE.replace("version: 1\n", "version: 1\nmode: audit\n"))
    assert flags(diff) == ["mode_audit"]
    back = diff_of(write_files, BASE, old=BASE.replace("version: 1\n", "version: 1\nmode: audit\n"))
    assert flags(back) == []
    assert [(c.kind, c.what) for c in back.changes] == [(CLOSES, "mode audit -> enforce")]


def test_diff_lists_ports_paths_methods_and_credential_changes(write_files: WriteFiles) -> None:
    new = BASE.replace('paths: ["/v1/*"]', 'paths: ["/v1/*", "/v2/*"]\n    ports: [443, 8443]')
    new = new.replace("secret: anthropic}", "secret: anthropic}\n    methods: [GET]")
    new = new.replace(
        'format: "{secret}", secret: anthropic', 'format: "Key {secret}", secret: anthropic'
    )
    diff = diff_of(write_files, new)
    seen = [(c.kind, c.rule, c.what) for c in diff.changes]
    assert (OPENS, "providers.openai", "port 8443") in seen
    assert (OPENS, "providers.openai", "path /v2/*") in seen
    assert (CLOSES, "providers.anthropic", "method POST") in seen
    assert (
        CHANGES,
        "providers.anthropic",
        "credential 'anthropic' as x-api-key: {secret} -> 'anthropic' as x-api-key: Key {secret}",
    ) in seen


def test_identical_policies_have_no_changes(write_files: WriteFiles) -> None:
    assert diff_of(write_files, BASE).changes == ()


def test_cli_on_shipped_overrides_example_is_risky_and_says_what_it_closes() -> None:
    result = run(DEFAULT, DEFAULT, "--new", EXAMPLES / "overrides.yaml")
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert out.startswith("policy diff: 1 file (mode enforce) -> 2 files (mode audit)\n")
    overrides = EXAMPLES / "overrides.yaml"
    assert f"  - providers.xai: removed by {overrides}:15: api.x.ai;" in out
    azure = line_of(DEFAULT, "azure-openai:")
    assert f"  - providers.azure-openai: host *.openai.azure.com  ({DEFAULT}:{azure})" in out
    assert "  ! [mode_audit] mode: mode switched to audit" in out
    assert out.endswith("4 opens, 2 closes, 0 changes\n")


def test_cli_markdown_for_a_pull_request(tmp_path: Path) -> None:
    new = tmp_path / "new.yaml"
    new.write_text(
        DEFAULT.read_text().replace(
            'hosts: ["*.openai.azure.com"]', 'hosts: ["*.openai.azure.com", "*.herokuapp.com"]'
        )
    )
    result = run(DEFAULT, new, "--markdown")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "### Egress policy change",
        "",
        "1 file (mode enforce) → 1 file (mode enforce): 1 opens, 0 closes, 0 changes; **1 risky**.",
    ]
    assert "| flag | entry | why | where |" in lines
    assert any(
        line.startswith(
            "| `wildcard_shared_domain` | `providers.azure-openai` | '\\*.herokuapp.com'"
        )
        for line in lines
    )
    azure = line_of(new, "azure-openai:")
    assert "- `providers.azure-openai`: host \\*.herokuapp.com (`" + f"{new}:{azure}`)" in lines


def test_cli_no_change_exits_0() -> None:
    result = run(DEFAULT, DEFAULT)
    assert result.returncode == 0
    assert result.stdout.endswith("0 opens, 0 closes, 0 changes\n")


def test_cli_broken_side_exits_2(tmp_path: Path) -> None:
    broken = tmp_path / "b.yaml"
    broken.write_text("version: 1\nproviders: {x: {hosts: ['*']}}\n")
    result = run(DEFAULT, broken)
    assert result.returncode == 2
    assert result.stderr.startswith("NEW policy cannot be loaded:\n")
    assert f"{broken}:2: providers.x.hosts[0]" in result.stderr


def test_diff_lists_any_other_entry_key_that_changed(write_files: WriteFiles) -> None:
    """Keys without their own rendering (max_request_body today, the request-body rules
    tomorrow) still show up as a change of that key."""
    new = BASE.replace('paths: ["/v1/*"]', 'paths: ["/v1/*"]\n    max_request_body: 1m')
    diff = diff_of(write_files, new)
    assert [(c.kind, c.rule, c.what) for c in diff.changes] == [
        (CHANGES, "providers.openai", "max_request_body None -> 1048576")
    ]


def test_narrowing_paths_and_methods_only_closes(write_files: WriteFiles) -> None:
    old = BASE.replace("ports: [4318]}", "ports: [4318], paths: ['/*']}")
    new = BASE.replace("ports: [4318]}", "ports: [4318], paths: ['/v1/*'], methods: [POST]}")
    diff = diff_of(write_files, new, old=old)
    assert [(c.kind, c.what) for c in diff.changes] == [
        (CLOSES, "path /*"),
        (CLOSES, "method any"),
    ]
    widened = diff_of(write_files, old, old=new)
    assert [(c.kind, c.what) for c in widened.changes] == [
        (OPENS, "path /*"),
        (OPENS, "method any"),
    ]
