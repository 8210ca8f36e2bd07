"""Reflected keys in the encodings a response can carry them in (issue: reflection forms).

A provider error page, a debug echo or a hostile upstream hands a key back escaped:
percent-encoded (all of it, or all its separators: `sk%2Dproj%2D…`), as JSON escapes
(`\\u002d`, `\\/`), HTML entities, hex or base64. Each must come out redacted, and the
key must not be recoverable from what is left. What is not caught is in
docs/credentials.md ("Encodings").
"""

from __future__ import annotations

import base64
import html
import json
from urllib.parse import quote, unquote

import pytest

from sidecar.credentials.reflection import REDACTED, StreamRedactor, compile_patterns
from tests.credentials import helpers as h

KEY = h.openai_project_key()
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY/q9"  # with '/' and '+'
PATTERNS = compile_patterns([KEY.encode(), AWS_SECRET.encode()])


def every_byte(key: str, fmt: str) -> str:
    return "".join(fmt % ord(c) for c in key)


def separators_only(key: str, fmt: str) -> str:
    return "".join(c if c.isalnum() else fmt % ord(c) for c in key)


FORMS = {
    "literal": lambda k: k,
    "quote": lambda k: quote(k, safe=""),
    "percent-every-byte-upper": lambda k: every_byte(k, "%%%02X"),
    "percent-every-byte-lower": lambda k: every_byte(k, "%%%02x"),
    "percent-separators": lambda k: separators_only(k, "%%%02X"),
    "json-ensure-ascii-every-byte": lambda k: every_byte(k, "\\u%04x"),
    "json-u-escaped-separators": lambda k: separators_only(k, "\\u%04X"),
    "json-escaped-slashes": lambda k: json.dumps(k).strip('"').replace("/", "\\/"),
    "html-decimal-entities": lambda k: every_byte(k, "&#%d;"),
    "html-hex-entities": lambda k: every_byte(k, "&#x%02x;"),
    "html-escaped-separators": lambda k: separators_only(k, "&#%d;"),
    "hex-lower": lambda k: k.encode().hex(),
    "hex-upper": lambda k: k.encode().hex().upper(),
    "base64": lambda k: base64.b64encode(k.encode()).decode(),
    "base64-urlsafe": lambda k: base64.urlsafe_b64encode(k.encode()).decode(),
    "base64-inside-a-blob": lambda k: base64.b64encode(b"user:" + k.encode()).decode(),
}

# What an attacker recovers from the redacted text: the inverse of the form.
DECODE = [
    lambda t: t,
    unquote,
    lambda t: json.loads(f'"{t}"') if "\\" in t else t,
    html.unescape,
]


def _redact(text: str) -> tuple[str, StreamRedactor]:
    redactor = StreamRedactor(PATTERNS)
    out = redactor.feed(text.encode()) + redactor.feed(b"")
    return out.decode(), redactor


@pytest.mark.parametrize("key", [KEY, AWS_SECRET], ids=["openai", "aws-secret"])
@pytest.mark.parametrize("form", sorted(FORMS))
def test_reflected_key_in_an_encoding_is_redacted(form, key):
    encoded = FORMS[form](key)
    body = f'{{"error": {{"message": "Incorrect API key provided: {encoded}."}}}}'
    out, redactor = _redact(body)
    assert redactor.found and REDACTED.decode() in out
    assert encoded not in out
    for decode in DECODE:
        try:
            recovered = decode(out)
        except ValueError:
            continue
        assert key not in recovered


def test_text_without_a_key_is_untouched():
    body = "hex " + "ab" * 200 + " entities &#115;&#107; percent %73%6B%2D url a%2Db"
    out, redactor = _redact(body)
    assert out == body and not redactor.found
