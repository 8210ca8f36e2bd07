"""The response framing of a request reads its query only where it can matter (issue 17):
the same framing as from the whole query, for every API and path shape."""

from __future__ import annotations

import pytest
from mitmproxy.test import tutils

from sidecar.addons.responses import request_framing
from sidecar.streams.inspector import stream_framing

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
