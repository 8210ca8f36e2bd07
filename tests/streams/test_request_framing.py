"""The response framing of a request reads its query only where it can matter (issue 17):
the same framing as from the whole query, for every API and path shape."""

from __future__ import annotations

import pytest
from mitmproxy.test import tutils

from sidecar.addons.responses import request_framing
from sidecar.streams.inspector import foreign_charset, stream_framing

PATHS = [
    "/v1/chat/completions",
    "/v1beta/models/gemini-pro:streamGenerateContent",
    "/v1beta/models/gemini-pro:streamGenerateContent?alt=sse",
    "/v1beta/models/gemini-pro:streamGenerateContent?alt=proto&key=x",
    "/v1beta/models/gemini-pro:streamGenerateContent?%24alt=SSE",
    "/v1beta/models/gemini-pro:streamGenerateContent?alt=json&alt=sse",
    "/v1beta/models/gemini-pro:streamGenerateContent#frag?alt=proto",
    "/openai/deployments/d/chat/completions?api-version=2024-06-01&alt=proto",
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("api", ["openai", "anthropic", "gemini", "responses"])
def test_framing_is_what_the_whole_query_gives(api, path):
    request = tutils.treq(path=path.encode())
    assert request_framing(request, api) == stream_framing(
        api, list(request.query.items(multi=True))
    )


@pytest.mark.parametrize(
    ("query", "framing"),
    [
        ("", "json_array"),
        ("alt=json", "json_array"),
        ("alt=sse&key=k", "sse"),
        ("%24alt=SSE", "sse"),
        ("alt=proto", "unreadable"),
        ("alt=sse&alt=proto", "unreadable"),
        ("ALT=proto", "unreadable"),  # a server folding case reads protobuf
        ("Alt=sse", "unreadable"),  # ... and one that does not, a JSON array
        ("alt+=proto", "unreadable"),
        ("x=1;alt=proto", "unreadable"),  # a server splitting on ";"
    ],
)
def test_gemini_framing_of_an_alt_spelt_oddly_is_never_guessed(query, framing):
    path = f"/v1beta/models/gemini-pro:streamGenerateContent?{query}"
    assert request_framing(tutils.treq(path=path.encode()), "gemini") == framing


@pytest.mark.parametrize(
    ("content_type", "foreign"),
    [
        ("application/json", False),
        ("application/json; charset=utf-8", False),
        ("application/json; charset=UTF-8", False),
        ('text/event-stream; charset="utf-8"', False),
        ("application/json; charset=us-ascii", False),
        ("application/json; charset=iso-8859-1", True),
        ("application/json; charset=cp037", True),
        ("application/json, text/plain; charset=utf-16", True),  # two lines, joined
        ("application/json; charset=cp037; x=charset=utf-8", True),
    ],
)
def test_a_charset_httpx_would_decode_by_is_foreign_unless_utf8(content_type, foreign):
    assert foreign_charset(content_type) is foreign
