"""Table tests for the single-value checks of sidecar/policy/values.py.

Each row is a value a policy author might write and the problem it must get (None: accepted).
The loader tests check the same rules in context, with file:line:key; these pin each rule.
"""

from __future__ import annotations

import pytest

from sidecar.policy.values import (
    canonical_host,
    format_problem,
    header_problem,
    path_problem,
    secret_problem,
)


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("/v1/chat/completions", None),
        ("/v1/*", None),
        ("/", None),
        ("v1/models", "must start with '/'"),
        ("/v1/%2e%2e/admin", "'%' is not allowed"),
        ("/v1/models?key=x", "'?' is not allowed"),
        ("/v1#frag", "'#' is not allowed"),
        ("/v1/*/models", "'*' is only allowed as a final '/*'"),
        ("/v1*", "'*' is only allowed as a final '/*'"),
        ("/v1//models", "empty path segment"),
        ("/v1/../admin", "'.' and '..' segments"),
        ("/v1/.", "'.' and '..' segments"),
        ("/v1\\admin", "backslashes"),
        ("/v1/mod els", "whitespace and control characters"),
        ("/v1/\u0430pi", "non-ASCII"),
        ("/v1/<script>", "character '<' is not allowed"),
    ],
)
def test_path_problem(path: str, problem: str | None) -> None:
    found = path_problem(path)
    assert (found is None) if problem is None else (found is not None and problem in found)


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("authorization", None),
        ("x-api-key", None),
        ("Authorization", "lower case"),
        ("host", "never be written to the 'host' header"),
        ("Content-Length", "never be written to the 'content-length' header"),
        ("proxy-authorization", "never be written"),
        ("cookie", "never be written"),
        ("x api key", "not a valid header name"),
        ("x-key:", "not a valid header name"),
    ],
)
def test_header_problem(header: str, problem: str | None) -> None:
    found = header_problem(header)
    assert (found is None) if problem is None else (found is not None and problem in found)


@pytest.mark.parametrize(
    ("fmt", "problem"),
    [
        ("Bearer {secret}", None),
        ("{secret}", None),
        ("Bearer {secret}\r\nX-Injected: 1", "control characters"),
        ("Bearer", "exactly once (found 0)"),
        ("{secret} {secret}", "exactly once (found 2)"),
        ("Bearer {secret} {tenant}", "the only braces allowed"),
        (" Bearer {secret}", "leading and trailing spaces"),
        ("Bearer \u00a0{secret}", "non-ASCII"),
    ],
)
def test_format_problem(fmt: str, problem: str | None) -> None:
    found = format_problem(fmt)
    assert (found is None) if problem is None else (found is not None and problem in found)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("openai", None),
        ("openai.prod_2", None),
        ("OpenAI", "invalid secret name"),
        ("../etc/passwd", "invalid secret name"),
        (".hidden", "invalid secret name"),
        ("", "invalid secret name"),
    ],
)
def test_secret_problem(name: str, problem: str | None) -> None:
    found = secret_problem(name)
    assert (found is None) if problem is None else (found is not None and problem in found)


@pytest.mark.parametrize(
    ("raw", "host", "problem"),
    [
        ("api.openai.com", "api.openai.com", None),
        ("*.example.com", "*.example.com", None),
        ("xn--bcher-kva.de", "xn--bcher-kva.de", None),
        ("API.OpenAI.com", "api.openai.com", "canonical form 'api.openai.com'"),
        ("api.openai.com.", "api.openai.com", "canonical form 'api.openai.com'"),
        ("b\u00fccher.de", "xn--bcher-kva.de", "canonical form 'xn--bcher-kva.de'"),
        ("exa mple.com", "exa mple.com", "invalid label"),
        ("10.0.0.1", "10.0.0.1", "list addresses under 'cidr:'"),
        ("", "", "empty or padded host"),
    ],
)
def test_canonical_host(raw: str, host: str, problem: str | None) -> None:
    found_host, found = canonical_host(raw)
    assert found_host == host
    assert (found is None) if problem is None else (found is not None and problem in found)
