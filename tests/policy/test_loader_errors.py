"""Every mistake or attack a policy file can carry is refused, naming file, line and key.

One row per case. Each asserts the exact (line, key) list of the problems reported and a
fragment of the message, so a change in what is reported fails loudly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from policy_helpers import WriteFiles, dedent, problems_of

from sidecar.policy.errors import PolicyError, Problem
from sidecar.policy.loader import load_policy


def _single(tmp_path: Path, text: str) -> tuple[Path, list[Problem]]:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    problems = problems_of([path])
    assert {p.file for p in problems} == {str(path)}
    return path, problems


def _provider(body: str) -> str:
    """A file whose provider `p` has `body`; body line 1 is file line 4."""
    lines = dedent(body).splitlines()
    return "version: 1\nproviders:\n  p:\n" + "".join(f"    {ln}\n" for ln in lines)


# (id, provider body, line, key, message fragment)
PROVIDER_CASES = [
    # hosts: wildcards (S2)
    ("wildcard_star_alone", 'hosts: ["*"]', 4, "providers.p.hosts[0]", "unsupported wildcard '*'"),
    ("wildcard_tld", 'hosts: ["*.com"]', 4, "providers.p.hosts[0]", "covers a whole top-level"),
    ("wildcard_in_middle", "hosts: [api.*.com]", 4, "providers.p.hosts[0]", "only a leading '*.'"),
    ("wildcard_glob_prefix", 'hosts: ["*openai.com"]', 4, "providers.p.hosts[0]", "unsupported"),
    ("wildcard_double", 'hosts: ["*.*.example.com"]', 4, "providers.p.hosts[0]", "unsupported"),
    ("wildcard_trailing", 'hosts: ["api.openai.*"]', 4, "providers.p.hosts[0]", "unsupported"),
    # hosts: IP literals in every spelling (S4)
    ("ip_literal_host", "hosts: [10.0.0.1]", 4, "providers.p.hosts[0]", "is an IP address"),
    ("ip_literal_decimal", 'hosts: ["2130706433"]', 4, "providers.p.hosts[0]", "IP address"),
    ("ip_literal_hex", 'hosts: ["0x7f.1"]', 4, "providers.p.hosts[0]", "IP address"),
    ("ip_literal_v6_brackets", 'hosts: ["[::1]"]', 4, "providers.p.hosts[0]", "IP address"),
    ("ip_literal_metadata", 'hosts: ["169.254.169.254"]', 4, "providers.p.hosts[0]", "IP addr"),
    # hosts: one spelling only, so reviewers see what is allowed
    ("host_upper_case", "hosts: [API.OpenAI.com]", 4, "providers.p.hosts[0]", "'api.openai.com'"),
    ("host_trailing_dot", "hosts: [api.openai.com.]", 4, "providers.p.hosts[0]", "canonical"),
    (
        "host_idn_homoglyph",
        "hosts: [\u0430pi.openai.com]",  # Cyrillic a
        4,
        "providers.p.hosts[0]",
        "'xn--pi-6kc.openai.com' (international names",
    ),
    ("host_is_url", "hosts: [https://api.openai.com]", 4, "providers.p.hosts[0]", "not a URL"),
    ("host_with_path", "hosts: [api.openai.com/v1]", 4, "providers.p.hosts[0]", "not a URL"),
    (
        "host_with_port",
        "hosts: ['api.openai.com:443']",
        4,
        "providers.p.hosts[0]",
        "under 'ports:'",
    ),
    ("host_empty_label", "hosts: [api..openai.com]", 4, "providers.p.hosts[0]", "invalid label"),
    ("host_bad_char", "hosts: [api!.openai.com]", 4, "providers.p.hosts[0]", "invalid label"),
    ("host_leading_hyphen", "hosts: [-api.openai.com]", 4, "providers.p.hosts[0]", "invalid label"),
    ("host_twice", "hosts: [a.example.com, a.example.com]", 4, "providers.p.hosts[1]", "twice"),
    ("host_number", "hosts: [443]", 4, "providers.p.hosts[0]", "got the number 443"),
    ("host_bool", "hosts: [yes]", 4, "providers.p.hosts[0]", "reads as a boolean"),
    ("hosts_scalar", "hosts: api.openai.com", 4, "providers.p.hosts", "e.g. [api.openai.com]"),
    ("hosts_empty_list", "hosts: []", 4, "providers.p.hosts", "empty list"),
    ("hosts_null", "hosts:", 4, "providers.p.hosts", "got nothing (null)"),
    ("hosts_missing", "ports: [443]", 3, "providers.p.hosts", "missing"),
    # structure
    (
        "unknown_key_typo",
        "hosts: [a.example.com]\nhostz: [b.example.com]",
        5,
        "providers.p.hostz",
        "did you mean 'hosts'?",
    ),
    (
        "unknown_key_port_singular",
        "hosts: [a.example.com]\nport: 443",
        5,
        "providers.p.port",
        "did you mean 'ports'?",
    ),
    (
        "provider_cidr",
        "hosts: [a.example.com]\ncidr: 10.0.0.0/8",
        5,
        "providers.p.cidr",
        "belong in an 'allow:' entry",
    ),
    (
        "duplicate_yaml_key",
        "hosts: [a.example.com]\nhosts: [evil.example]",
        5,
        "providers.p.hosts",
        "duplicate key (first at line 4)",
    ),
    (
        "yaml_merge_key",
        "<<: {ports: [443]}\nhosts: [a.example.com]",
        4,
        "providers.p.<<",
        "merge keys",
    ),
    # ports
    ("port_zero", "hosts: [a.example.com]\nports: [0]", 5, "providers.p.ports[0]", "decimal"),
    (
        "port_out_of_range",
        "hosts: [a.example.com]\nports: [65536]",
        5,
        "providers.p.ports[0]",
        "out of range",
    ),
    (
        "port_negative",
        "hosts: [a.example.com]\nports: [-1]",
        5,
        "providers.p.ports[0]",
        "plain decimal",
    ),
    (
        "port_octal_trap",
        "hosts: [a.example.com]\nports: [0443]",
        5,
        "providers.p.ports[0]",
        "octal",
    ),
    ("port_hex", "hosts: [a.example.com]\nports: [0x1bb]", 5, "providers.p.ports[0]", "hex"),
    (
        "port_quoted",
        "hosts: [a.example.com]\nports: ['443']",
        5,
        "providers.p.ports[0]",
        "without quotes",
    ),
    ("port_bool", "hosts: [a.example.com]\nports: [true]", 5, "providers.p.ports[0]", "boolean"),
    (
        "port_float",
        "hosts: [a.example.com]\nports: [443.0]",
        5,
        "providers.p.ports[0]",
        "got the number 443.0",
    ),
    (
        "port_twice",
        "hosts: [a.example.com]\nports: [443, 8443, 443]",
        5,
        "providers.p.ports[2]",
        "port 443 is listed twice (also providers.p.ports[0])",
    ),
    ("ports_scalar", "hosts: [a.example.com]\nports: 443", 5, "providers.p.ports", "e.g. [443]"),
    ("ports_empty", "hosts: [a.example.com]\nports: []", 5, "providers.p.ports", "empty list"),
    # paths
    (
        "path_no_slash",
        "hosts: [a.example.com]\npaths: [v1/models]",
        5,
        "providers.p.paths[0]",
        "must start with '/'",
    ),
    (
        "path_star_middle",
        "hosts: [a.example.com]\npaths: ['/v1/*/x']",
        5,
        "providers.p.paths[0]",
        "final '/*'",
    ),
    (
        "path_star_glued",
        "hosts: [a.example.com]\npaths: ['/v1*']",
        5,
        "providers.p.paths[0]",
        "final '/*'",
    ),
    (
        "path_double_star",
        "hosts: [a.example.com]\npaths: ['/v1/**']",
        5,
        "providers.p.paths[0]",
        "final '/*'",
    ),
    (
        "path_dotdot",
        "hosts: [a.example.com]\npaths: [/v1/../admin]",
        5,
        "providers.p.paths[0]",
        "'..' segments",
    ),
    (
        "path_dot_segment",
        "hosts: [a.example.com]\npaths: [/v1/./x]",
        5,
        "providers.p.paths[0]",
        "'..' segments",
    ),
    (
        "path_double_slash",
        "hosts: [a.example.com]\npaths: [/v1//x]",
        5,
        "providers.p.paths[0]",
        "'//'",
    ),
    (
        "path_percent",
        "hosts: [a.example.com]\npaths: [/v1%2fadmin]",
        5,
        "providers.p.paths[0]",
        "'%'",
    ),
    (
        "path_query",
        "hosts: [a.example.com]\npaths: ['/v1/x?debug=1']",
        5,
        "providers.p.paths[0]",
        "'?'",
    ),
    (
        "path_fragment",
        "hosts: [a.example.com]\npaths: ['/v1/x#a']",
        5,
        "providers.p.paths[0]",
        "'#'",
    ),
    (
        "path_space",
        "hosts: [a.example.com]\npaths: ['/v1/a b']",
        5,
        "providers.p.paths[0]",
        "whitespace",
    ),
    (
        "path_tab",
        'hosts: [a.example.com]\npaths: ["/v1/a\\tb"]',
        5,
        "providers.p.paths[0]",
        "control",
    ),
    (
        "path_crlf",
        'hosts: [a.example.com]\npaths: ["/v1\\r\\nHost: evil"]',
        5,
        "providers.p.paths[0]",
        "control",
    ),
    (
        "path_backslash",
        "hosts: [a.example.com]\npaths: ['/v1\\admin']",
        5,
        "providers.p.paths[0]",
        "backslash",
    ),
    (
        "path_non_ascii",
        "hosts: [a.example.com]\npaths: [/v1/caf\u00e9]",
        5,
        "providers.p.paths[0]",
        "non-ASCII",
    ),
    (
        "path_bad_char",
        "hosts: [a.example.com]\npaths: ['/v1/<x>']",
        5,
        "providers.p.paths[0]",
        "character '<'",
    ),
    (
        "path_twice",
        "hosts: [a.example.com]\npaths: [/v1/x, /v1/x]",
        5,
        "providers.p.paths[1]",
        "twice",
    ),
    (
        "path_covered_by_prefix",
        "hosts: [a.example.com]\npaths: ['/v1/*', /v1/models]",
        5,
        "providers.p.paths[1]",
        "already covered by '/v1/*' (providers.p.paths[0])",
    ),
    (
        "path_prefix_under_any",
        "hosts: [a.example.com]\npaths: ['/*', '/v1/*']",
        5,
        "providers.p.paths[1]",
        "already covered by '/*'",
    ),
    # methods
    (
        "method_lower_case",
        "hosts: [a.example.com]\nmethods: [get]",
        5,
        "providers.p.methods[0]",
        "write 'GET'",
    ),
    (
        "method_connect",
        "hosts: [a.example.com]\nmethods: [CONNECT]",
        5,
        "providers.p.methods[0]",
        "never allowed",
    ),
    (
        "method_trace",
        "hosts: [a.example.com]\nmethods: [trace]",
        5,
        "providers.p.methods[0]",
        "TRACE is never allowed",
    ),
    (
        "method_unknown",
        "hosts: [a.example.com]\nmethods: [PROPFIND]",
        5,
        "providers.p.methods[0]",
        "unknown method",
    ),
    (
        "method_twice",
        "hosts: [a.example.com]\nmethods: [GET, GET]",
        5,
        "providers.p.methods[1]",
        "twice",
    ),
    # addresses
    (
        "addresses_metadata",
        "hosts: [a.example.com]\naddresses: [169.254.0.0/16]",
        5,
        "providers.p.addresses[0]",
        "metadata address 169.254.169.254",
    ),
    (
        "addresses_host_bits",
        "hosts: [a.example.com]\naddresses: [10.1.2.3/8]",
        5,
        "providers.p.addresses[0]",
        "did you mean '10.0.0.0/8'",
    ),
    (
        "addresses_scalar",
        "hosts: [a.example.com]\naddresses: 10.0.0.0/8",
        5,
        "providers.p.addresses",
        "expected a list of CIDRs",
    ),
]


@pytest.mark.parametrize(
    ("body", "line", "key", "fragment"),
    [pytest.param(*row[1:], id=row[0]) for row in PROVIDER_CASES],
)
def test_provider_mistakes(tmp_path: Path, body: str, line: int, key: str, fragment: str) -> None:
    _, problems = _single(tmp_path, _provider(body))
    assert [(p.line, p.key) for p in problems] == [(line, key)], problems
    assert fragment in problems[0].message


def test_provider_host_singular_is_named_with_a_hint(tmp_path: Path) -> None:
    _, problems = _single(tmp_path, _provider("host: a.example.com"))
    assert [(p.line, p.key) for p in problems] == [
        (3, "providers.p.hosts"),
        (4, "providers.p.host"),
    ]
    assert problems[1].message == (
        "unknown key 'host': providers take a list: 'hosts: [api.example.com]'"
    )


def _cred(spec: str) -> str:
    return _provider(f"hosts: [a.example.com]\ncredential: {spec}")


# (id, credential flow mapping, key, message fragment); all on line 5
CREDENTIAL_CASES = [
    (
        "format_two_placeholders",
        '{header: authorization, format: "{secret}{secret}", secret: a}',
        "format",
        "exactly once (found 2)",
    ),
    (
        "format_no_placeholder",
        '{header: authorization, format: "Bearer", secret: a}',
        "format",
        "exactly once (found 0)",
    ),
    (
        "format_crlf",
        '{header: authorization, format: "Bearer {secret}\\r\\nX-Evil: 1", secret: a}',
        "format",
        "CR, LF",
    ),
    (
        "format_nul",
        '{header: authorization, format: "{secret}\\0", secret: a}',
        "format",
        "control",
    ),
    (
        "format_other_braces",
        '{header: authorization, format: "{secret} {x}", secret: a}',
        "format",
        "only braces",
    ),
    (
        "format_python_attr",
        '{header: authorization, format: "{secret.__class__}", secret: a}',
        "format",
        "exactly once (found 0)",
    ),
    (
        "format_padded",
        '{header: authorization, format: " Bearer {secret}", secret: a}',
        "format",
        "leading and trailing",
    ),
    (
        "format_non_ascii",
        '{header: authorization, format: "Bearer\u00a0{secret}", secret: a}',
        "format",
        "non-ASCII",
    ),
    (
        "format_not_string",
        "{header: authorization, format: 1, secret: a}",
        "format",
        "expected a string",
    ),
    ("header_host", '{header: host, format: "{secret}", secret: a}', "header", "never"),
    ("header_host_upper", '{header: Host, format: "{secret}", secret: a}', "header", "never"),
    (
        "header_content_length",
        '{header: content-length, format: "{secret}", secret: a}',
        "header",
        "never",
    ),
    (
        "header_transfer_encoding",
        '{header: transfer-encoding, format: "{secret}", secret: a}',
        "header",
        "never",
    ),
    ("header_connection", '{header: connection, format: "{secret}", secret: a}', "header", "never"),
    ("header_cookie", '{header: cookie, format: "{secret}", secret: a}', "header", "never"),
    (
        "header_upper_case",
        '{header: Authorization, format: "{secret}", secret: a}',
        "header",
        "write 'authorization'",
    ),
    (
        "header_space",
        '{header: x api key, format: "{secret}", secret: a}',
        "header",
        "not a valid header name",
    ),
    (
        "header_pseudo",
        '{header: ":authority", format: "{secret}", secret: a}',
        "header",
        "not a valid header name",
    ),
    (
        "header_crlf",
        '{header: "x-a\\r\\nhost", format: "{secret}", secret: a}',
        "header",
        "not a valid header name",
    ),
    (
        "secret_path_traversal",
        '{header: x-api-key, format: "{secret}", secret: ../openai}',
        "secret",
        "invalid secret name",
    ),
    (
        "secret_slash",
        '{header: x-api-key, format: "{secret}", secret: a/b}',
        "secret",
        "invalid secret name",
    ),
    (
        "secret_upper",
        '{header: x-api-key, format: "{secret}", secret: OpenAI}',
        "secret",
        "invalid secret name",
    ),
    ("credential_missing_secret", '{header: x-api-key, format: "{secret}"}', "secret", "missing"),
    (
        "credential_unknown_key",
        '{header: x-api-key, format: "{secret}", secret: a, value: sk-1}',
        "value",
        "unknown key 'value'",
    ),
    ("credential_not_mapping", "x-api-key", "", "expected a mapping"),
]


@pytest.mark.parametrize(
    ("spec", "subkey", "fragment"),
    [pytest.param(*row[1:], id=row[0]) for row in CREDENTIAL_CASES],
)
def test_credential_mistakes(tmp_path: Path, spec: str, subkey: str, fragment: str) -> None:
    _, problems = _single(tmp_path, _cred(spec))
    key = "providers.p.credential" + (f".{subkey}" if subkey else "")
    assert [(p.line, p.key) for p in problems] == [(5, key)], problems
    assert fragment in problems[0].message


# (id, whole file, line, key, message fragment)
DOCUMENT_CASES = [
    ("empty_file", "", 1, "", "empty file"),
    ("comments_only", "# nothing here\n", 1, "", "empty file"),
    ("version_missing", "providers: {}\n", 1, "version", "missing"),
    ("version_2", "version: 2\nproviders: {}\n", 1, "version", "unsupported version"),
    ("version_quoted", "version: '1'\n", 1, "version", "without quotes"),
    ("version_float", "version: 1.0\n", 1, "version", "unsupported version"),
    ("top_level_list", "- version: 1\n", 1, "", "expected a mapping"),
    ("top_level_scalar", "version\n", 1, "", "expected a mapping"),
    ("unknown_top_key", "version: 1\nprovider: {}\n", 2, "provider", "did you mean 'providers'"),
    ("unknown_top_key_far", "version: 1\nxyz: 1\n", 2, "xyz", "allowed keys are version, mode"),
    ("duplicate_top_key", "version: 1\nversion: 1\n", 2, "version", "duplicate key"),
    (
        "duplicate_provider_in_file",
        "version: 1\nproviders:\n  p: {hosts: [a.example.com]}\n  p: {hosts: [evil.example]}\n",
        4,
        "providers.p",
        "duplicate key (first at line 3)",
    ),
    ("mode_unknown", "version: 1\nmode: block\n", 2, "mode", "unknown mode 'block'"),
    ("mode_upper_case", "version: 1\nmode: AUDIT\n", 2, "mode", "write 'audit'"),
    ("mode_bool", "version: 1\nmode: off\n", 2, "mode", "boolean"),
    ("providers_list", "version: 1\nproviders: [openai]\n", 2, "providers", "expected a mapping"),
    ("providers_null", "version: 1\nproviders:\n", 2, "providers", "got nothing (null)"),
    (
        "provider_name_upper",
        "version: 1\nproviders:\n  OpenAI: {hosts: [a.example.com]}\n",
        3,
        "providers.OpenAI",
        "invalid provider name",
    ),
    (
        "provider_name_dot",
        "version: 1\nproviders:\n  open.ai: {hosts: [a.example.com]}\n",
        3,
        "providers.open.ai",
        "invalid provider name",
    ),
    (
        "provider_name_too_long",
        f"version: 1\nproviders:\n  {'a' * 64}: {{hosts: [a.example.com]}}\n",
        3,
        f"providers.{'a' * 64}",
        "invalid provider name",
    ),
    (
        "provider_name_bool",
        "version: 1\nproviders:\n  yes: {hosts: [a.example.com]}\n",
        3,
        "providers.yes",
        "invalid provider name",
    ),
    (
        "provider_not_mapping",
        "version: 1\nproviders:\n  p: [a.example.com]\n",
        3,
        "providers.p",
        "expected a mapping",
    ),
    (
        "syntax_unclosed_bracket",
        "version: 1\nproviders:\n  p:\n    hosts: [a.example.com\n",
        5,
        "",
        "YAML syntax error",
    ),
    (
        "syntax_bad_indent",
        "version: 1\nproviders:\n  p:\n    hosts: [a]\n   ports: [1]\n",
        5,
        "",
        "YAML syntax error",
    ),
    ("syntax_tab_indent", "version: 1\nproviders:\n\tp: {}\n", 3, "", "YAML syntax error"),
    ("two_documents", "version: 1\n---\nversion: 1\n", 2, "", "single document"),
    ("custom_tag", "version: 1\nmode: !env MODE\n", 2, "mode", "tagged !env"),
    ("python_tag", "version: 1\nmode: !!python/name:os.system\n", 2, "mode", "tagged"),
    ("complex_key", "version: 1\n? [a]\n: 1\n", 2, "<top>", "plain names"),
    # allow entries
    (
        "allow_not_list",
        "version: 1\nallow: {host: a.example.com}\n",
        2,
        "allow",
        "expected a list of entries",
    ),
    ("allow_empty_list", "version: 1\nallow: []\n", 2, "allow", "empty list"),
    (
        "allow_missing_ports",
        "version: 1\nallow:\n  - host: a.example.com\n",
        3,
        "allow[0].ports",
        "must list their ports",
    ),
    (
        "allow_no_destination",
        "version: 1\nallow:\n  - ports: [1]\n",
        3,
        "allow[0]",
        "missing destination",
    ),
    (
        "allow_host_and_hosts",
        "version: 1\nallow:\n  - host: a.example.com\n    hosts: [b.example.com]\n    ports: [1]\n",
        4,
        "allow[0].hosts",
        "either 'host' or 'hosts'",
    ),
    (
        "allow_host_and_cidr",
        "version: 1\nallow:\n  - host: a.example.com\n    cidr: 10.0.0.0/8\n    ports: [1]\n",
        4,
        "allow[0].cidr",
        "not both",
    ),
    (
        "allow_addresses_with_cidr",
        "version: 1\nallow:\n  - cidr: 10.0.0.0/8\n    addresses: [10.0.0.0/8]\n    ports: [1]\n",
        4,
        "allow[0].addresses",
        "host names only",
    ),
    (
        "allow_credential",
        "version: 1\nallow:\n  - host: a.example.com\n    ports: [1]\n"
        "    credential: {header: x-api-key, format: '{secret}', secret: a}\n",
        5,
        "allow[0].credential",
        "never get a credential",
    ),
    (
        "allow_bad_name",
        "version: 1\nallow:\n  - {name: Otel, host: a.example.com, ports: [1]}\n",
        3,
        "allow[0].name",
        "invalid name",
    ),
    (
        "allow_second_entry",
        "version: 1\nallow:\n  - {host: a.example.com, ports: [1]}\n"
        "  - {host: b.example.com, ports: [1], port: 2}\n",
        4,
        "allow[1].port",
        "did you mean",
    ),
    (
        "allow_host_wildcard_star",
        "version: 1\nallow:\n  - {host: '*', ports: [443]}\n",
        3,
        "allow[0].host",
        "unsupported wildcard",
    ),
    (
        "allow_host_ip",
        "version: 1\nallow:\n  - {host: 10.0.0.5, ports: [443]}\n",
        3,
        "allow[0].host",
        "under 'cidr:'",
    ),
    # CIDRs
    (
        "cidr_invalid",
        "version: 1\nallow:\n  - {cidr: 10.0.0.0/33, ports: [1]}\n",
        3,
        "allow[0].cidr",
        "not a valid CIDR",
    ),
    (
        "cidr_garbage",
        "version: 1\nallow:\n  - {cidr: ten, ports: [1]}\n",
        3,
        "allow[0].cidr",
        "not a valid CIDR",
    ),
    (
        "cidr_host_bits",
        "version: 1\nallow:\n  - {cidr: 10.1.2.3/24, ports: [1]}\n",
        3,
        "allow[0].cidr",
        "did you mean '10.1.2.0/24'",
    ),
    (
        "cidr_not_canonical_v6",
        "version: 1\nallow:\n  - {cidr: 'FD12::/16', ports: [1]}\n",
        3,
        "allow[0].cidr",
        "canonical form 'fd12::/16'",
    ),
    (
        "cidr_twice_in_list",
        "version: 1\nallow:\n  - {cidrs: [10.0.0.0/8, 10.0.0.0/8], ports: [1]}\n",
        3,
        "allow[0].cidrs[1]",
        "twice",
    ),
    (
        "metadata_cidr",
        "version: 1\nallow:\n  - {cidr: 169.254.0.0/16, ports: [80]}\n",
        3,
        "allow[0].cidr",
        "metadata address 169.254.169.254",
    ),
    (
        "metadata_exact",
        "version: 1\nallow:\n  - {cidr: 169.254.169.254, ports: [80]}\n",
        3,
        "allow[0].cidr",
        "can never be allowed",
    ),
    (
        "metadata_ecs",
        "version: 1\nallow:\n  - {cidr: 169.254.170.0/24, ports: [80]}\n",
        3,
        "allow[0].cidr",
        "169.254.170.2",
    ),
    (
        "metadata_alibaba_in_cgnat",
        "version: 1\nallow:\n  - {cidr: 100.64.0.0/10, ports: [80]}\n",
        3,
        "allow[0].cidr",
        "100.100.100.200",
    ),
    (
        "metadata_all_v4",
        "version: 1\nallow:\n  - {cidr: 0.0.0.0/0, ports: [443]}\n",
        3,
        "allow[0].cidr",
        "metadata",
    ),
    (
        "metadata_all_v6",
        "version: 1\nallow:\n  - {cidr: '::/0', ports: [443]}\n",
        3,
        "allow[0].cidr",
        "metadata",
    ),
    (
        "metadata_aws_v6",
        "version: 1\nallow:\n  - {cidr: 'fd00:ec2::/64', ports: [80]}\n",
        3,
        "allow[0].cidr",
        "covers the cloud metadata address fd00:ec2::",
    ),
    (
        "metadata_ipv4_mapped",
        "version: 1\nallow:\n  - {cidr: '::ffff:a9fe:a9fe', ports: [80]}\n",
        3,
        "allow[0].cidr",
        "metadata",
    ),
    (
        "metadata_nat64",
        "version: 1\nallow:\n  - {cidr: '64:ff9b::/96', ports: [80]}\n",
        3,
        "allow[0].cidr",
        "metadata",
    ),
    (
        "metadata_6to4",
        "version: 1\nallow:\n  - {cidr: '2002:a9fe:a9fe::/48', ports: [80]}\n",
        3,
        "allow[0].cidr",
        "metadata",
    ),
    (
        "metadata_in_second_cidr",
        "version: 1\nallow:\n  - {cidrs: [10.0.0.0/8, 169.254.169.254/32], ports: [80]}\n",
        3,
        "allow[0].cidrs[1]",
        "metadata",
    ),
    (
        "ipv4_mapped_range",
        "version: 1\nallow:\n  - {cidr: '::ffff:a00:0/104', ports: [80]}\n",
        3,
        "allow[0].cidr",
        "IPv4-mapped",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [pytest.param(*row[1:], id=row[0]) for row in DOCUMENT_CASES],
)
def test_document_mistakes(tmp_path: Path, text: str, line: int, key: str, fragment: str) -> None:
    _, problems = _single(tmp_path, text)
    assert [(p.line, p.key) for p in problems] == [(line, key)], problems
    assert fragment in problems[0].message


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"version: 1\n# caf\xe9\n")
    assert problems_of([path]) == [Problem(str(path), 2, "", "the file is not valid UTF-8")]


def test_all_problems_are_collected_in_file_order(write_files: WriteFiles) -> None:
    (path,) = write_files(
        (
            "p.yaml",
            """
            version: 1
            mode: loud
            providers:
              a:
                hosts: ["*"]
                ports: [0]
              b:
                hostz: [x.example.com]
            allow:
              - {host: "*.com", ports: [70000]}
            """,
        )
    )
    problems = problems_of([path])
    assert [(p.line, p.key) for p in problems] == [
        (2, "mode"),
        (5, "providers.a.hosts[0]"),
        (6, "providers.a.ports[0]"),
        (7, "providers.b.hosts"),
        (8, "providers.b.hostz"),
        (10, "allow[0].host"),
        (10, "allow[0].ports[0]"),
    ]


def test_error_string_is_one_problem_per_line(write_files: WriteFiles) -> None:
    (path,) = write_files(("p.yaml", "version: 1\nmode: loud\nproviders:\n  a: {hosts: ['*']}\n"))
    with pytest.raises(PolicyError) as info:
        load_policy([path])
    assert str(info.value).splitlines() == [
        f"{path}:2: mode: unknown mode 'loud'; expected one of enforce, audit",
        f"{path}:4: providers.a.hosts[0]: unsupported wildcard '*': only a leading '*.' is "
        "allowed (e.g. '*.example.com')",
    ]


@pytest.mark.parametrize(
    ("problem", "text"),
    [
        pytest.param(
            Problem("a.yaml", 3, "providers.x", "bad"), "a.yaml:3: providers.x: bad", id="full"
        ),
        pytest.param(Problem("a.yaml", 3, "", "bad"), "a.yaml:3: bad", id="no_key"),
        pytest.param(Problem("a.yaml", 0, "", "gone"), "a.yaml: gone", id="whole_file"),
    ],
)
def test_problem_rendering(problem: Problem, text: str) -> None:
    assert str(problem) == text


def test_control_character_in_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nmode: \x1b[31menforce\n")
    assert problems_of([path]) == [
        Problem(str(path), 2, "", "character '\\x1b' is not allowed in a YAML file")
    ]


def test_problem_with_newline_in_key_still_renders_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text('version: 1\n"evil\\nkey": 1\n')
    (problem,) = problems_of([path])
    assert problem.key == "evil\nkey"
    assert str(problem).startswith(f"{path}:2: evil\\nkey: unknown key 'evil\\nkey'")
    assert "\n" not in str(problem)


def test_key_bound_to_wildcard_host_is_refused(tmp_path: Path) -> None:
    """Attack: anyone can own a name under *.openai.azure.com; our key must not go there."""
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\n"
        "providers:\n"
        "  azure:\n"
        '    hosts: [mine.openai.azure.com, "*.openai.azure.com"]\n'
        '    credential: {header: api-key, format: "{secret}", secret: azure}\n'
    )
    with pytest.raises(PolicyError) as info:
        load_policy([path])
    assert [(p.line, p.key) for p in info.value.problems] == [(5, "providers.azure.credential")]
    assert "wildcard host '*.openai.azure.com'" in info.value.problems[0].message


# issue 10: max_request_body on a provider entry
@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("ten", "expected a size"),
        ("0", "greater than 0"),
        ("[1]", "expected a size"),
        ("5g", "larger than the most accepted"),
        ("1.5m", "expected a size"),
    ],
)
def test_bad_max_request_body_names_file_line_and_key(tmp_path: Path, value, fragment):
    _path, problems = _single(
        tmp_path, _provider(f"hosts: [api.example.com]\nmax_request_body: {value}")
    )
    assert [(p.line, p.key) for p in problems] == [(5, "providers.p.max_request_body")]
    assert fragment in problems[0].message


def test_max_request_body_is_read_in_bytes(tmp_path: Path):
    path = tmp_path / "p.yaml"
    path.write_text(_provider("hosts: [api.example.com]\nmax_request_body: 2m"))
    (endpoint,) = load_policy([path]).endpoints
    assert endpoint.max_request_body == 2 * 1024 * 1024
