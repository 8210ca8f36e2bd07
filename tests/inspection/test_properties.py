"""Properties of request inspection: no input makes it raise, and its output is bounded
by its input (issue 13)."""

from __future__ import annotations

import json
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.inspection.body_inspection import Api, inspect_body
from sidecar.inspection.policy import FetchList, FetchRule, RelayRules

RULES = RelayRules(fetch=FetchList((FetchRule("https", "*.example.com", None),)))
APIS = st.sampled_from(list(Api))
KEYS = st.sampled_from([
    "tools", "type", "server_url", "url", "image_url", "file_url", "file_data", "fileData",
    "file_uri", "fileUri", "source", "mcp_servers", "network_policy", "allowed_domains",
    "domain_secrets", "domain", "connector_id", "session", "uri", "input", "content",
]) | st.text(max_size=8)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(
        [
            "mcp",
            "url",
            "web_search",
            "mcp_server",
            "image",
            "allowlist",
            "https://a.example.com/x",
            "http://evil/",
            "data:x",
            "//x",
            "files/a",
            '[{"type":"mcp"}]',
            "web_fetch_2025",
            "googleSearch",
        ]
    )
    | st.text(max_size=20)
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=60,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=DOCUMENTS, api=APIS)
def test_no_json_document_raises(document, api) -> None:
    raw = json.dumps(document).encode()
    result = inspect_body(raw, api=api, rules=RULES, limit=1 << 20)
    if result.violation is not None:
        assert len(result.violation.detail) < 600


@settings(max_examples=400, deadline=None)
@given(
    raw=st.binary(max_size=400),
    api=APIS,
    coding=st.sampled_from(["", "gzip", "br", "zstd", "deflate", "x"]),
)
def test_no_bytes_raise(raw: bytes, api: Api, coding: str) -> None:
    inspect_body(raw, api=api, rules=RULES, limit=1 << 16, content_encoding=[coding])


def test_cost_grows_linearly_with_the_body() -> None:
    """Bounded per byte: a body of many findings costs about what a plain body of the
    same size costs (no quadratic walk). Ratios only; no absolute timings."""

    def body(n: int) -> bytes:
        parts = [{"type": "input_image", "image_url": "https://a.example.com/x"}] * n
        return json.dumps({"input": [{"role": "user", "content": parts}]}).encode()

    def cost(raw: bytes) -> float:
        start = time.perf_counter()
        for _ in range(3):
            inspect_body(raw, api=Api.OPENAI_RESPONSES, rules=RULES, limit=64 << 20)
        return time.perf_counter() - start

    small, large = body(2_000), body(20_000)
    ratio = cost(large) / max(cost(small), 1e-6)
    assert ratio < 40, ratio  # 10x the input; linear would be ~10
