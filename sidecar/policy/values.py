"""Checks of single policy values, each a pure function: the problem in words, or None.

Kept apart from the reader (sidecar/policy/entries.py) so that each rule has its own
table test (tests/policy/test_values.py) and other files a user writes can share them.
"""

from __future__ import annotations

import re

from sidecar.hostnames import HostError, normalize_policy_host

__all__ = [
    "ALLOWED_METHODS",
    "FORBIDDEN_CREDENTIAL_HEADERS",
    "format_problem",
    "header_problem",
    "path_problem",
    "secret_problem",
]

ALLOWED_METHODS: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

# Headers a credential may never be written to: framing, routing, hop-by-hop, cookies.
FORBIDDEN_CREDENTIAL_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "cookie",
        "set-cookie",
        "forwarded",
        "via",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "range",
    }
)

_SECRET_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_HEADER_TOKEN = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_PATH_CHARS = re.compile(r"^[A-Za-z0-9._~!$&'()+,;=:@/*-]*$")


def canonical_host(raw: str) -> tuple[str, str | None]:
    """The host a policy's `raw` text names, and the problem if it is not written so."""
    try:
        host = normalize_policy_host(raw)
    except HostError as exc:
        return raw, str(exc)
    if host != raw:
        return host, f"write the host in its canonical form {host!r}"
    return host, None


def path_problem(text: str) -> str | None:
    if not text.startswith("/"):
        return "a path must start with '/'"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return "whitespace and control characters are not allowed in a path"
    if not text.isascii():
        return "non-ASCII characters are not allowed in a path"
    if "%" in text:
        return (
            "'%' is not allowed: a percent-encoded path can be read two ways; list the plain path"
        )
    if "?" in text:
        return "'?' is not allowed: query strings are not matched; list the path only"
    if "#" in text:
        return "'#' is not allowed: fragments are never sent; list the path only"
    if "*" in text and (not text.endswith("/*") or text.count("*") != 1):
        return "'*' is only allowed as a final '/*' (prefix match), e.g. '/v1/*'"
    if "//" in text:
        return "empty path segment '//' is not allowed"
    if ".." in text or "/./" in text or text.endswith("/."):
        return "'.' and '..' segments are not allowed"
    if "\\" in text:
        return "backslashes are not allowed in a path"
    if not _PATH_CHARS.match(text):
        bad = next(c for c in text if not _PATH_CHARS.match(c))
        return f"character {bad!r} is not allowed in a path"
    return None


def header_problem(text: str) -> str | None:
    lower = text.lower()
    if not _HEADER_TOKEN.match(lower):
        return f"{text!r} is not a valid header name"
    if lower in FORBIDDEN_CREDENTIAL_HEADERS:
        return f"a credential can never be written to the {lower!r} header"
    if text != lower:
        return f"header names are written in lower case: write {lower!r}"
    return None


def format_problem(text: str) -> str | None:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return "CR, LF and other control characters are not allowed in a format"
    if not text.isascii():
        return "non-ASCII characters are not allowed in a header value format"
    count = text.count("{secret}")
    if count != 1:
        return f"the format must contain '{{secret}}' exactly once (found {count})"
    if "{" in text.replace("{secret}", "") or "}" in text.replace("{secret}", ""):
        return "the only braces allowed are those of '{secret}'"
    if text != text.strip():
        return "remove leading and trailing spaces from the format"
    return None


def secret_problem(text: str) -> str | None:
    if not _SECRET_NAME.match(text):
        return (
            "invalid secret name: use lower-case letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return None
