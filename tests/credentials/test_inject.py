"""Key injection: gateway-held keys refused, gateway credentials stripped, key bound to
its provider, virtual keys mapped to tenants. One row per attack."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from sidecar.credentials.inject import (
    CredentialResult,
    HeaderList,
    Outcome,
    is_credential_header,
    prepare_request,
)
from sidecar.credentials.secret_store import SecretStore
from sidecar.credentials.virtual_keys import (
    VirtualKeys,
    generate_virtual_key,
    hash_virtual_key,
    parse_virtual_keys,
)
from sidecar.decision import Reason
from sidecar.policy.model import Endpoint
from tests.credentials import helpers as h

# The sidecar's own keys for this test module.
OWN = {
    "openai": h.openai_project_key(),
    "anthropic": h.anthropic_key(),
    "azure-openai": h.azure_key(),
    "gemini": h.google_key(),
    "groq": h.groq_key(),
    "anthropic-team-b": h.anthropic_key(),
}


@pytest.fixture
def store(tmp_path: Path) -> SecretStore:
    h.k8s_write(tmp_path / "secrets", {k: v + "\n" for k, v in OWN.items()})
    return SecretStore(tmp_path / "secrets")


def run(
    endpoint: Endpoint,
    headers: list[tuple[str, str]],
    store: SecretStore,
    query: list[tuple[str, str]] | None = None,
    **kwargs: object,
) -> tuple[CredentialResult, HeaderList, HeaderList]:
    hl = HeaderList(headers)
    ql = HeaderList(query or [], fold_case=False)
    result = prepare_request(endpoint, hl, ql, store, **kwargs)  # type: ignore[arg-type]
    return result, hl, ql


# -- gateway-held credentials ---------------------------------------------------------

G = Callable[[], str]
REFUSED_CASES: list[tuple[str, str, list[tuple[str, str]], list[tuple[str, str]], str]] = [
    # (attack, provider, headers, query, expected family)
    (
        "gateway_sends_real_openai_key",
        "openai",
        [("Authorization", f"Bearer {h.openai_project_key()}")],
        [],
        "openai_project_key",
    ),
    (
        "gateway_sends_openai_service_account_key",
        "openai",
        [("Authorization", f"Bearer {h.openai_svcacct_key()}")],
        [],
        "openai_service_account_key",
    ),
    (
        "gateway_sends_real_anthropic_key",
        "anthropic",
        [("x-api-key", h.anthropic_key())],
        [],
        "anthropic_api_key",
    ),
    (
        "gateway_sends_anthropic_admin_key",
        "anthropic",
        [("X-Api-Key", h.anthropic_admin_key())],
        [],
        "anthropic_admin_key",
    ),
    (
        "anthropic_key_sent_to_openai",
        "openai",
        [("Authorization", f"Bearer {h.anthropic_key()}")],
        [],
        "anthropic_api_key",
    ),
    ("gemini_key_in_header", "gemini", [("x-goog-api-key", h.google_key())], [], "google_api_key"),
    ("key_in_query_param", "gemini", [], [("key", h.google_key())], "google_api_key"),
    (
        "key_in_api_key_query_param",
        "openai",
        [],
        [("api_key", h.openai_project_key())],
        "openai_project_key",
    ),
    ("key_in_unrelated_query_param", "openai", [], [("q", "x " + h.groq_key())], "groq_api_key"),
    (
        "key_in_websocket_protocol",
        "openai",
        [
            (
                "Sec-WebSocket-Protocol",
                f"realtime, openai-insecure-api-key.{h.openai_project_key()}, "
                "openai-beta.realtime-v1",
            )
        ],
        [],
        "openai_project_key",
    ),
    (
        "unprefixed_key_in_websocket_protocol",
        "openai",
        [("Sec-WebSocket-Protocol", f"realtime, openai-insecure-api-key.{h.deepseek_key()}")],
        [],
        "generic_sk_key",
    ),
    (
        "azure_hex_key_in_api_key_header",
        "azure-openai",
        [("api-key", h.azure_key())],
        [],
        "azure_openai_key",
    ),
    (
        "aws_access_key_in_custom_header",
        "openai",
        [("x-aws-access", h.aws_key_id())],
        [],
        "aws_access_key_id",
    ),
    (
        "sigv4_signed_request_to_openai",
        "openai",
        [
            (
                "Authorization",
                f"AWS4-HMAC-SHA256 Credential={h.aws_key_id()}"
                "/20261122/us-east-1/bedrock/aws4_request, "
                "SignedHeaders=host, Signature=" + h.hexs(64),
            )
        ],
        [],
        "aws_access_key_id",
    ),
    ("groq_key", "groq", [("Authorization", f"Bearer {h.groq_key()}")], [], "groq_api_key"),
    ("xai_key", "xai", [("Authorization", f"Bearer {h.xai_key()}")], [], "xai_api_key"),
    (
        "openrouter_key",
        "openrouter",
        [("Authorization", f"Bearer {h.openrouter_key()}")],
        [],
        "openrouter_api_key",
    ),
    (
        "fireworks_key",
        "fireworks",
        [("Authorization", f"Bearer {h.fireworks_key()}")],
        [],
        "fireworks_api_key",
    ),
    (
        "deepseek_style_generic_sk_key",
        "deepseek",
        [("Authorization", f"Bearer {h.deepseek_key()}")],
        [],
        "generic_sk_key",
    ),
    (
        "mistral_style_opaque_key",
        "mistral",
        [("Authorization", f"Bearer {h.mistral_key()}")],
        [],
        "opaque_random_token",
    ),
    (
        "jwt_bearer_token",
        "azure-openai",
        [("Authorization", f"Bearer {h.jwt()}")],
        [],
        "jwt_bearer_token",
    ),
    (
        "key_hidden_in_basic_auth",
        "openai",
        [
            (
                "Authorization",
                "Basic " + base64.b64encode(f"user:{h.openai_project_key()}".encode()).decode(),
            )
        ],
        [],
        "openai_project_key",
    ),
    (
        "key_in_cookie",
        "openai",
        [("Cookie", f"session=1; k={h.openai_project_key()}")],
        [],
        "openai_project_key",
    ),
    (
        "key_in_proxy_authorization",
        "openai",
        [("Proxy-Authorization", f"Bearer {h.anthropic_key()}")],
        [],
        "anthropic_api_key",
    ),
    (
        "key_in_unrelated_header",
        "openai",
        [("x-debug", f"token={h.anthropic_key()}")],
        [],
        "anthropic_api_key",
    ),
    (
        "key_in_litellm_header",
        "openai",
        [("x-litellm-api-key", h.openai_project_key())],
        [],
        "openai_project_key",
    ),
    (
        "gateway_replays_sidecar_key",
        "azure-openai",
        [("api-key", OWN["azure-openai"])],
        [],
        "azure_openai_key",
    ),
    (
        "gateway_replays_sidecar_gemini_key_in_query",
        "gemini",
        [],
        [("key", OWN["gemini"])],
        "google_api_key",
    ),
]


@pytest.mark.parametrize(
    ("provider_name", "headers", "query", "family"),
    [c[1:] for c in REFUSED_CASES],
    ids=[c[0] for c in REFUSED_CASES],
)
def test_gateway_held_credential_refused(
    store: SecretStore,
    provider_name: str,
    headers: list[tuple[str, str]],
    query: list[tuple[str, str]],
    family: str,
):
    result, hl, ql = run(h.provider(provider_name), headers, store, query)
    assert result.outcome is Outcome.GATEWAY_HOLDS_CREDENTIAL
    assert result.reason is Reason.GATEWAY_HOLDS_CREDENTIAL
    assert result.http_status == 403
    assert family in {f.family for f in result.findings}, result.findings
    # Never injected when refused, and what the gateway sent was stripped anyway.
    assert result.secret is None
    sent_values = [v for _, v in headers] + [v for _, v in query]
    remaining = " ".join(v for _, v in hl.fields) + " ".join(v for _, v in ql.fields)
    for value in sent_values:
        for token in value.replace(",", " ").replace(";", " ").replace("=", " ").split():
            if len(token) >= 20:
                assert token not in remaining
    # The result names where and what, never the value.
    text = f"{result!r} {result.detail} {[f.describe() for f in result.findings]}"
    for value in sent_values:
        for token in value.replace(",", " ").replace(";", " ").split():
            if len(token) >= 20:
                assert token not in text
    for own in OWN.values():
        assert own not in text and own not in remaining


def test_sidecar_own_key_replayed_is_detected_even_without_known_format(tmp_path: Path):
    own = "Zq" + h.rand(10, "abcdefghij")  # matches no rule: found because it is ours
    (tmp_path / "openai").write_text(own)
    store = SecretStore(tmp_path)
    result, _, _ = run(h.provider("openai"), [("Authorization", f"Bearer {own}")], store)
    assert result.outcome is Outcome.GATEWAY_HOLDS_CREDENTIAL
    assert [f.family for f in result.findings] == ["sidecar_secret"]
    assert own not in result.detail


# -- dummies pass, get stripped, real key injected --------------------------------------

DUMMIES = [
    "sk-dummy",
    "dummy",
    "none",
    "sk-xxx",
    "sk-" + "x" * 48,
    "sk-dummy-key-for-litellm-gateway-local",
    "sk-proj-dummy",
    "placeholder",
    "",
    "fake-key",
    "sk-1234",
    "vk-" + "a" * 43,
]


@pytest.mark.parametrize("dummy", DUMMIES)
def test_dummy_key_replaced_by_real_openai_key(store: SecretStore, dummy: str):
    result, hl, _ = run(
        h.provider("openai"),
        [("Authorization", f"Bearer {dummy}"), ("Content-Type", "application/json")],
        store,
    )
    assert result.outcome is Outcome.INJECTED, result.detail
    assert result.reason is None
    assert hl.get_all("authorization") == [f"Bearer {OWN['openai']}"]
    assert hl.get("content-type") == "application/json"
    assert result.secret_name == "openai" and result.secret is not None
    assert OWN["openai"] not in repr(result)


HEADER_FORMS = [
    # (provider, gateway's dummy header, header the key goes in, prefix before the key)
    ("openai", ("Authorization", "Bearer sk-dummy"), "authorization", "Bearer "),
    ("anthropic", ("x-api-key", "sk-ant-dummy"), "x-api-key", ""),
    ("azure-openai", ("api-key", "dummy"), "api-key", ""),
    ("gemini", ("x-goog-api-key", "dummy"), "x-goog-api-key", ""),
    ("groq", ("Authorization", "Bearer dummy"), "authorization", "Bearer "),
]


@pytest.mark.parametrize(("provider_name", "sent", "header", "prefix"), HEADER_FORMS)
def test_injection_header_forms(
    store: SecretStore, provider_name: str, sent: tuple[str, str], header: str, prefix: str
):
    result, hl, _ = run(h.provider(provider_name), [sent, ("accept-encoding", "gzip")], store)
    assert result.outcome is Outcome.INJECTED
    assert hl.get_all(header) == [prefix + OWN[provider_name]]
    # Exactly one credential header remains: the one we added.
    creds = [k for k, _ in hl.fields if is_credential_header(k)]
    assert creds == [header]
    # Uncompressed responses, so the reflection guard sees the bytes.
    assert hl.get_all("accept-encoding") == ["identity"]


STRIP_CASES = [
    # (case, headers, query, names that must be gone)
    (
        "duplicate_authorization_headers",
        [("Authorization", "Bearer a"), ("authorization", "Bearer b")],
        [],
        ["authorization"],
    ),
    (
        "mixed_case_headers",
        [("AUTHORIZATION", "x"), ("X-API-KEY", "y"), ("Api-Key", "z")],
        [],
        ["authorization", "x-api-key", "api-key"],
    ),
    ("cookie_towards_provider", [("Cookie", "a=b"), ("Cookie2", "c")], [], ["cookie", "cookie2"]),
    (
        "proxy_authorization",
        [("Proxy-Authorization", "Basic Zm9vOmJhcg==")],
        [],
        ["proxy-authorization"],
    ),
    (
        "vendor_key_headers",
        [
            ("x-goog-api-key", "d"),
            ("anthropic-api-key", "d"),
            ("x-portkey-api-key", "d"),
            ("helicone-auth", "d"),
            ("x-my-access-token", "d"),
            ("ocp-apim-subscription-key", "d"),
        ],
        [],
        [
            "x-goog-api-key",
            "anthropic-api-key",
            "x-portkey-api-key",
            "helicone-auth",
            "x-my-access-token",
            "ocp-apim-subscription-key",
        ],
    ),
    (
        "query_key_params",
        [],
        [("key", "d"), ("api_key", "d"), ("api-key", "d"), ("access_token", "d"), ("apiKey", "d")],
        ["key", "api_key", "api-key", "access_token", "apiKey"],
    ),
]


@pytest.mark.parametrize(
    ("headers", "query", "gone"), [c[1:] for c in STRIP_CASES], ids=[c[0] for c in STRIP_CASES]
)
def test_gateway_credentials_stripped(
    store: SecretStore,
    headers: list[tuple[str, str]],
    query: list[tuple[str, str]],
    gone: list[str],
):
    headers = [*headers, ("anthropic-version", "2023-06-01"), ("x-stainless-lang", "python")]
    query = [*query, ("api-version", "2024-10-21"), ("alt", "sse")]
    result, hl, ql = run(h.provider("anthropic"), headers, store, query)
    assert result.outcome is Outcome.INJECTED
    names = {k.lower() for k, _ in hl.fields} | {k for k, _ in ql.fields}
    for name in gone:
        if name != "x-api-key":
            assert name not in names, name
    assert hl.get_all("x-api-key") == [OWN["anthropic"]]
    assert hl.get("anthropic-version") == "2023-06-01" and hl.get("x-stainless-lang") == "python"
    assert ql.get("api-version") == "2024-10-21" and ql.get("alt") == "sse"
    assert set(result.stripped) >= {
        f"header {n}" for n in gone if n in {k.lower() for k, _ in headers}
    }


def test_websocket_key_entry_removed_other_protocols_kept(store: SecretStore):
    result, hl, _ = run(
        h.provider("openai"),
        [
            (
                "Sec-WebSocket-Protocol",
                "realtime, openai-insecure-api-key.sk-dummy, openai-beta.realtime-v1",
            ),
            ("Upgrade", "websocket"),
        ],
        store,
    )
    assert result.outcome is Outcome.INJECTED
    assert hl.get_all("sec-websocket-protocol") == ["realtime, openai-beta.realtime-v1"]
    assert hl.get_all("authorization") == [f"Bearer {OWN['openai']}"]  # on the handshake


def test_random_request_ids_are_not_keys(store: SecretStore):
    result, _, _ = run(
        h.provider("openai"),
        [
            ("x-request-id", h.hexs(32)),
            ("x-client-request-id", h.rand(40)),
            ("Authorization", "Bearer sk-dummy"),
            ("idempotency-key", h.rand(36)),
        ],
        store,
    )
    assert result.outcome is Outcome.INJECTED


# -- binding ------------------------------------------------------------------------


def test_missing_secret_refuses_and_never_passes_without_key(tmp_path: Path):
    store = SecretStore(tmp_path)  # empty
    result, hl, _ = run(h.provider("openai"), [("Authorization", "Bearer sk-dummy")], store)
    assert result.outcome is Outcome.CREDENTIAL_UNAVAILABLE
    assert result.reason is Reason.CREDENTIAL_UNAVAILABLE and result.http_status == 503
    assert "'openai'" in result.detail
    assert hl.get_all("authorization") == []  # dummy stripped, nothing added


def test_key_only_to_own_provider(store: SecretStore):
    for name in ("openai", "anthropic", "azure-openai", "gemini", "groq"):
        result, hl, ql = run(h.provider(name), [("Authorization", "Bearer sk-dummy")], store)
        assert result.outcome is Outcome.INJECTED
        everything = repr(hl.fields) + repr(ql.fields)
        for other, value in OWN.items():
            assert (value in everything) == (other == name), (name, other)


def test_allow_entry_never_gets_a_key(store: SecretStore):
    token = h.rand(48)  # the gateway's own token for its telemetry collector
    result, hl, _ = run(
        h.allow_endpoint(), [("Authorization", f"Bearer {token}"), ("x-api-key", "dummy")], store
    )
    assert result.outcome is Outcome.NOT_APPLICABLE and result.reason is None
    assert hl.get_all("authorization") == [f"Bearer {token}"]  # left alone
    for value in OWN.values():
        assert value not in repr(hl.fields)


def test_provider_key_towards_allow_entry_refused(store: SecretStore):
    result, _, _ = run(h.allow_endpoint(), [("x-api-key", h.anthropic_key())], store)
    assert result.outcome is Outcome.GATEWAY_HOLDS_CREDENTIAL


def test_sidecar_key_replayed_to_allow_entry_refused(store: SecretStore):
    result, hl, _ = run(h.allow_endpoint(), [("x-token", OWN["azure-openai"])], store)
    assert result.outcome is Outcome.GATEWAY_HOLDS_CREDENTIAL
    assert OWN["azure-openai"] not in repr(hl.fields)


def test_provider_without_spec_keeps_gateway_auth(store: SecretStore):
    """A Bedrock entry without a credential: the gateway signs with its own role
    (SigV4). Nothing stripped or added."""
    sig = (
        f"AWS4-HMAC-SHA256 Credential=ASIA{h.rand(16, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567')}"
        "/20261122/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, "
        f"Signature={h.hexs(64)}"
    )
    headers = [("Authorization", sig), ("x-amz-security-token", h.rand(300))]
    keyless = dataclasses.replace(h.provider("bedrock"), cloud_credential=None)
    result, hl, _ = run(keyless, headers, store)
    assert result.outcome is Outcome.NOT_APPLICABLE
    assert hl.fields == headers


def test_endpoint_without_provider_but_with_spec_gets_nothing(store: SecretStore):
    weird = dataclasses.replace(h.provider("openai"), provider=None)
    result, hl, _ = run(weird, [("Authorization", "Bearer sk-dummy")], store)
    assert result.outcome is Outcome.NOT_APPLICABLE
    assert OWN["openai"] not in repr(hl.fields)


# -- virtual keys ---------------------------------------------------------------------

VK_A, VK_B, VK_OLD, VK_REVOKED_TENANT = (generate_virtual_key() for _ in range(4))


def vkeys() -> VirtualKeys:
    return parse_virtual_keys(
        f"""
version: 1
tenants:
  team-a:
    keys: ["{hash_virtual_key(VK_A)}", {{hash: "{hash_virtual_key(VK_OLD)}", revoked: true}}]
    providers: [openai]
  team-b:
    keys: ["{hash_virtual_key(VK_B)}"]
    providers:
      openai: {{}}
      anthropic: {{secret: anthropic-team-b}}
  team-gone:
    revoked: true
    keys: ["{hash_virtual_key(VK_REVOKED_TENANT)}"]
    providers: [openai]
"""
    )


VK_CASES = [
    # (case, provider, headers, query, outcome, tenant, secret name)
    (
        "tenant_uses_default_secret",
        "openai",
        [("Authorization", f"Bearer {VK_A}")],
        [],
        Outcome.INJECTED,
        "team-a",
        "openai",
    ),
    (
        "tenant_uses_own_secret",
        "anthropic",
        [("x-api-key", VK_B)],
        [],
        Outcome.INJECTED,
        "team-b",
        "anthropic-team-b",
    ),
    ("virtual_key_in_query", "openai", [], [("key", VK_B)], Outcome.INJECTED, "team-b", "openai"),
    (
        "virtual_key_in_websocket_protocol",
        "openai",
        [("Sec-WebSocket-Protocol", f"realtime, openai-insecure-api-key.{VK_A}")],
        [],
        Outcome.INJECTED,
        "team-a",
        "openai",
    ),
    (
        "unknown_virtual_key",
        "openai",
        [("Authorization", f"Bearer {generate_virtual_key()}")],
        [],
        Outcome.UNKNOWN_VIRTUAL_KEY,
        None,
        None,
    ),
    (
        "revoked_virtual_key",
        "openai",
        [("Authorization", f"Bearer {VK_OLD}")],
        [],
        Outcome.UNKNOWN_VIRTUAL_KEY,
        None,
        None,
    ),
    (
        "revoked_tenant",
        "openai",
        [("Authorization", f"Bearer {VK_REVOKED_TENANT}")],
        [],
        Outcome.UNKNOWN_VIRTUAL_KEY,
        None,
        None,
    ),
    (
        "tenant_not_granted_provider",
        "anthropic",
        [("x-api-key", VK_A)],
        [],
        Outcome.TENANT_NOT_ALLOWED,
        "team-a",
        None,
    ),
    (
        "two_virtual_keys",
        "openai",
        [("Authorization", f"Bearer {VK_A}"), ("x-api-key", VK_B)],
        [],
        Outcome.UNKNOWN_VIRTUAL_KEY,
        None,
        None,
    ),
    (
        "real_key_beats_virtual_key",
        "openai",
        [("Authorization", f"Bearer {VK_A}"), ("x-api-key", h.openai_project_key())],
        [],
        Outcome.GATEWAY_HOLDS_CREDENTIAL,
        None,
        None,
    ),
]


@pytest.mark.parametrize(
    ("provider_name", "headers", "query", "outcome", "tenant", "secret_name"),
    [c[1:] for c in VK_CASES],
    ids=[c[0] for c in VK_CASES],
)
def test_virtual_keys(
    store: SecretStore,
    provider_name: str,
    headers: list[tuple[str, str]],
    query: list[tuple[str, str]],
    outcome: Outcome,
    tenant: str | None,
    secret_name: str | None,
):
    result, hl, ql = run(
        h.provider(provider_name),
        headers,
        store,
        query,
        virtual_keys=vkeys(),
        require_virtual_key=True,
    )
    assert result.outcome is outcome, result.detail
    assert result.tenant == tenant
    everything = repr(hl.fields) + repr(ql.fields)
    for vk in (VK_A, VK_B, VK_OLD, VK_REVOKED_TENANT):
        assert vk not in everything  # virtual keys never leave the pod
        assert vk not in result.detail and vk not in repr(result)
    if outcome is Outcome.INJECTED:
        assert result.secret_name == secret_name
        assert OWN[secret_name] in everything  # type: ignore[index]
    else:
        assert result.reason is not None and result.secret is None
        for value in OWN.values():
            assert value not in everything
    if outcome is Outcome.UNKNOWN_VIRTUAL_KEY:
        assert (result.reason, result.http_status) == (Reason.UNKNOWN_VIRTUAL_KEY, 401)
    if outcome is Outcome.TENANT_NOT_ALLOWED:
        assert (result.reason, result.http_status) == (Reason.TENANT_NOT_ALLOWED, 403)


def test_virtual_key_required_but_absent(store: SecretStore):
    result, _, _ = run(
        h.provider("openai"),
        [("Authorization", "Bearer sk-dummy")],
        store,
        virtual_keys=vkeys(),
        require_virtual_key=True,
    )
    assert result.outcome is Outcome.UNKNOWN_VIRTUAL_KEY and result.http_status == 401
    result, _, _ = run(
        h.provider("openai"),
        [("Authorization", "Bearer sk-dummy")],
        store,
        virtual_keys=vkeys(),
        require_virtual_key=False,
    )
    assert result.outcome is Outcome.INJECTED and result.tenant is None


def test_virtual_key_never_sent_to_allow_entry(store: SecretStore):
    result, hl, ql = run(
        h.allow_endpoint(),
        [("Authorization", f"Bearer {VK_A}")],
        store,
        [("key", VK_A)],
        virtual_keys=vkeys(),
    )
    assert result.outcome is Outcome.NOT_APPLICABLE
    assert hl.fields == [] and ql.fields == []


def test_mitmproxy_headers_and_query_fit_the_protocol(store: SecretStore):
    """The adapter can pass mitmproxy's own objects unchanged."""
    from mitmproxy.test import tutils

    req = tutils.treq(
        host="api.openai.com",
        path=b"/v1/chat/completions?key=dummy&alt=sse",
        headers=(
            (b"authorization", b"Bearer sk-dummy"),
            (b"Cookie", b"a=b"),
            (b"content-type", b"application/json"),
        ),
    )
    result = prepare_request(h.provider("openai"), req.headers, req.query, store)
    assert result.outcome is Outcome.INJECTED
    assert req.headers.get_all("authorization") == [f"Bearer {OWN['openai']}"]
    assert "cookie" not in req.headers
    assert req.path == "/v1/chat/completions?alt=sse"
