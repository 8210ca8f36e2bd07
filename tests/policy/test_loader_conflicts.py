"""Duplicates and conflicts, within a file and across the files of a directory.

Each row writes several files, loads them in order and asserts the one problem: where
it is reported (file, line, key) and that the message names the other location.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from policy_helpers import WriteFiles, problems_of

A = """\
version: 1
providers:
  openai:
    hosts: [api.openai.com]
    credential: {header: authorization, format: "Bearer {secret}", secret: openai}
  wild:
    hosts: ["*.example.com"]
allow:
  - name: otel
    host: otel.monitoring.svc.cluster.local
    ports: [4318]
  - cidrs: [10.1.2.0/24]
    ports: [9000]
"""

# (id, second file, line in b.yaml, key, where the first is named in the message)
CROSS_FILE = [
    (
        "provider_in_two_files",
        "version: 1\nproviders:\n  openai:\n    hosts: [api2.openai.com]\n",
        3,
        "providers.openai",
        "provider 'openai' is also defined at {a}:3",
    ),
    (
        "host_in_two_providers_across_files",
        "version: 1\nproviders:\n  evil:\n    hosts: [api.openai.com]\n",
        4,
        "providers.evil.hosts[0]",
        "also listed by providers.openai at {a}:4 (providers.openai.hosts[0])",
    ),
    (
        "host_in_provider_and_allow",
        "version: 1\nallow:\n  - {host: api.openai.com, ports: [8443]}\n",
        3,
        "allow[0].host",
        "also listed by providers.openai at {a}:4",
    ),
    (
        "exact_shadowed_by_wildcard",
        "version: 1\nallow:\n  - {host: api.example.com, ports: [443]}\n",
        3,
        "allow[0].host",
        "covered by '*.example.com' of providers.wild at {a}:7",
    ),
    (
        "deep_name_shadowed_by_wildcard",
        "version: 1\nproviders:\n  x:\n    hosts: [a.b.c.example.com]\n",
        4,
        "providers.x.hosts[0]",
        "covered by '*.example.com' of providers.wild at {a}:7",
    ),
    (
        "overlapping_wildcards",
        "version: 1\nproviders:\n  x:\n    hosts: ['*.eu.example.com']\n",
        4,
        "providers.x.hosts[0]",
        "covered by '*.example.com' of providers.wild at {a}:7",
    ),
    (
        "same_wildcard_twice",
        "version: 1\nproviders:\n  x:\n    hosts: ['*.example.com']\n",
        4,
        "providers.x.hosts[0]",
        "also listed by providers.wild at {a}:7",
    ),
    (
        "same_cidr_two_entries",
        "version: 1\nallow:\n  - {cidr: 10.1.2.0/24, ports: [9001]}\n",
        3,
        "allow[0].cidr",
        "10.1.2.0/24 is also listed by allow[1] at {a}:12 (allow[1].cidrs[0])",
    ),
    (
        "overlapping_cidrs",
        "version: 1\nallow:\n  - {cidr: 10.0.0.0/8, ports: [9001]}\n",
        3,
        "allow[0].cidr",
        "10.0.0.0/8 overlaps 10.1.2.0/24 by allow[1] at {a}:12",
    ),
    (
        "allow_name_in_two_files",
        "version: 1\nallow:\n  - {name: otel, host: otel2.example.org, ports: [4318]}\n",
        3,
        "allow[0].name",
        "allow entry name 'otel' is also defined at {a}:9",
    ),
    (
        "secret_reused_by_other_provider",
        "version: 1\nproviders:\n  evil:\n    hosts: [attacker.example.net]\n"
        "    credential: {header: authorization, format: 'Bearer {secret}', secret: openai}\n",
        5,
        "providers.evil.credential.secret",
        "secret 'openai' is already bound to providers.openai at {a}:5",
    ),
    (
        "mode_conflict",
        "version: 1\nmode: audit\n",
        2,
        "mode",
        "mode 'audit' conflicts with mode 'enforce' at {a}:2",
    ),
]


@pytest.mark.parametrize(
    ("second", "line", "key", "names_first"),
    [pytest.param(*row[1:], id=row[0]) for row in CROSS_FILE],
)
def test_cross_file_conflicts(
    write_files: WriteFiles, second: str, line: int, key: str, names_first: str
) -> None:
    a_text = A if "mode" not in key else A.replace("version: 1\n", "version: 1\nmode: enforce\n")
    a, b = write_files(("a.yaml", a_text), ("b.yaml", second))
    problems = problems_of([a, b])
    assert [(p.file, p.line, p.key) for p in problems] == [(str(b), line, key)], problems
    assert names_first.format(a=a) in problems[0].message


def test_conflicts_via_directory_name_both_files(write_files: WriteFiles, tmp_path: Path) -> None:
    write_files(
        ("policy/10-openai.yaml", "version: 1\nproviders:\n  o:\n    hosts: [api.openai.com]\n"),
        ("policy/20-team.yaml", "version: 1\nallow:\n  - {host: api.openai.com, ports: [443]}\n"),
    )
    problems = problems_of([tmp_path / "policy"])
    assert len(problems) == 1
    assert str(problems[0]) == (
        f"{tmp_path}/policy/20-team.yaml:3: allow[0].host: host 'api.openai.com' is also listed "
        f"by providers.o at {tmp_path}/policy/10-openai.yaml:4 (providers.o.hosts[0]); a host "
        "belongs to one entry: merge them"
    )


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        pytest.param(
            "version: 1\nproviders:\n  a: {hosts: [x.example.com]}\n"
            "  b: {hosts: [x.example.com]}\n",
            4,
            "providers.b.hosts[0]",
            id="host_in_two_providers_same_file",
        ),
        pytest.param(
            "version: 1\nproviders:\n  a: {hosts: ['*.example.com']}\n"
            "allow:\n  - {host: x.example.com, ports: [80]}\n",
            5,
            "allow[0].host",
            id="exact_shadowed_by_wildcard_same_file",
        ),
        pytest.param(
            "version: 1\nproviders:\n  a: {hosts: [x.a.example.com]}\n"
            "  b: {hosts: ['*.example.com']}\n",
            3,
            "providers.a.hosts[0]",
            id="wildcard_after_the_exact_name",
        ),
        pytest.param(
            "version: 1\nallow:\n  - {name: x, host: a.example.com, ports: [1]}\n"
            "  - {name: x, host: b.example.com, ports: [1]}\n",
            4,
            "allow[1].name",
            id="allow_name_twice_same_file",
        ),
        pytest.param(
            "version: 1\nallow:\n  - {cidr: 'fd12::/16', ports: [1]}\n"
            "  - {cidr: 'fd12:1::/32', ports: [2]}\n",
            4,
            "allow[1].cidr",
            id="overlapping_v6_cidrs",
        ),
    ],
)
def test_same_file_conflicts(write_files: WriteFiles, text: str, line: int, key: str) -> None:
    (path,) = write_files(("p.yaml", text))
    problems = problems_of([path])
    assert [(p.line, p.key) for p in problems] == [(line, key)], problems


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            "version: 1\nproviders:\n  a: {hosts: ['*.example.com', x.example.com]}\n",
            id="exact_under_own_wildcard",
        ),
        pytest.param(
            "version: 1\nproviders:\n  a: {hosts: [example.com]}\n"
            "  b: {hosts: ['*.example.com']}\n",
            id="apex_and_wildcard_are_different_names",
        ),
        pytest.param(
            "version: 1\nallow:\n  - {cidr: 10.1.0.0/16, ports: [1]}\n"
            "  - {cidr: 10.2.0.0/16, ports: [1]}\n",
            id="adjacent_cidrs",
        ),
        pytest.param(
            "version: 1\nproviders:\n  a: {hosts: [a.example.com], addresses: [10.0.0.0/8]}\n"
            "  b: {hosts: [b.example.com], addresses: [10.0.0.0/8]}\n",
            id="same_addresses_range_in_two_entries",
        ),
        pytest.param(
            "version: 1\nallow:\n  - {host: a.example.com, ports: [1]}\n"
            "  - {host: b.example.com, ports: [1]}\n",
            id="unnamed_allow_entries",
        ),
    ],
)
def test_not_conflicts(write_files: WriteFiles, text: str) -> None:
    from sidecar.policy.loader import load_policy

    (path,) = write_files(("p.yaml", text))
    assert load_policy([path]).endpoints
