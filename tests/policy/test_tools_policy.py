"""The `tools:` key of a provider (issue 14): what it loads, and how each mistake is
named (file, line, key, how to fix)."""

from __future__ import annotations

from pathlib import Path

import pytest
from policy_helpers import dedent, problems_of

from sidecar.policy.loader import load_policy
from sidecar.policy.tools import DEFAULT_PACKAGE_INDEXES


def _policy(tools: str) -> str:
    head = "version: 1\nproviders:\n  openai:\n    hosts: [api.openai.com]\n    tools:\n"
    return head + "\n".join("      " + line for line in dedent(tools).splitlines()) + "\n"


def _load(tmp_path: Path, tools: str):
    path = tmp_path / "p.yaml"
    path.write_text(_policy(tools))
    return load_policy([path])


def _problems(tmp_path: Path, tools: str):
    path = tmp_path / "p.yaml"
    path.write_text(_policy(tools))
    return problems_of([path])


def test_tools_load_with_tenants_and_defaults(tmp_path: Path) -> None:
    policy = _load(
        tmp_path,
        """
        allow: [get_weather, search]
        deny_arguments: [download_piped_to_shell, {pattern: "rm -rf"}]
        tenants:
          team-a: {allow: [search]}
        """,
    )
    tools = policy.endpoints[0].tools
    assert tools is not None
    assert tools.rules.allow == {"get_weather", "search"}
    assert [r.name for r in tools.rules.deny] == ["download_piped_to_shell", "pattern #1"]
    assert tools.rules.package_indexes == DEFAULT_PACKAGE_INDEXES
    assert tools.for_tenant("team-a").allow == {"search"}
    assert tools.for_tenant("other").allow == {"get_weather", "search"}
    assert tools.for_tenant("team-a").deny == tools.rules.deny
    hash(policy.endpoints[0])  # policies stay hashable


@pytest.mark.parametrize(
    ("tools", "line", "key", "fragment"),
    [
        ("allow: get_weather\n", 6, "providers.openai.tools.allow", "write it as a list"),
        ("allow: [get weather]\n", 6, "providers.openai.tools.allow", "invalid tool name"),
        ("deny_arguments: [curl_pipe]\n", 6, "providers.openai.tools.deny_arguments[0]",
         "built-in rules: download_piped_to_shell"),
        ('deny_arguments: [{pattern: "(unclosed"}]\n', 6,
         "providers.openai.tools.deny_arguments[0].pattern", "invalid regular expression"),
        ("deny_arguments: [url_outside_allowlist]\n", 6,
         "providers.openai.tools.deny_arguments[0]", "needs 'url_hosts"),
        ("url_hosts: [http://x.example]\n", 6, "providers.openai.tools.url_hosts", "invalid host"),
        ("allowed: [x]\n", 6, "providers.openai.tools.allowed", "unknown key"),
        ("tenants: {team-a: {deny_arguments: [x]}}\n", 6,
         "providers.openai.tools.tenants.team-a.deny_arguments", "unknown key"),
    ],
)  # fmt: skip
def test_tools_mistakes_name_file_line_and_key(
    tmp_path: Path, tools: str, line: int, key: str, fragment: str
) -> None:
    (problem,) = _problems(tmp_path, tools)
    assert (problem.file.endswith("p.yaml"), problem.line, problem.key) == (True, line, key)
    assert fragment in problem.message
