"""S7 confinement rule (issue 11): a key only for an allowed request to its provider's
vetted destination, over TLS, on a listed port. One row per way a key could leak."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sidecar.credentials.confinement import key_withheld_because
from sidecar.credentials.inject import HeaderList, Outcome, prepare_request
from sidecar.credentials.secret_store import SecretStore
from sidecar.decision import Decision, Reason, Verdict
from tests.credentials import helpers as h

OPENAI = h.provider("openai")
KEY = h.openai_project_key()


def _allowed(**changes: object) -> Decision:
    base = Decision(
        verdict=Verdict.ALLOW,
        reason=Reason.ALLOWED,
        rule=OPENAI.rule,
        host="api.openai.com",
        port=443,
        provider="openai",
        address="162.159.140.245",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_control_allowed_tls_request_to_listed_port_may_get_the_key() -> None:
    assert key_withheld_because(_allowed(), OPENAI, "https") is None


@pytest.mark.parametrize(
    ("attack", "decision", "scheme"),
    [
        ("audit_port_not_allowed", _allowed(verdict=Verdict.WOULD_BLOCK,
                                            reason=Reason.PORT_NOT_ALLOWED, port=8080), "http"),
        ("audit_tls_required", _allowed(verdict=Verdict.WOULD_BLOCK,
                                        reason=Reason.TLS_REQUIRED), "http"),
        ("audit_path_not_allowed", _allowed(verdict=Verdict.WOULD_BLOCK,
                                            reason=Reason.PATH_NOT_ALLOWED), "https"),
        ("audit_method_not_allowed", _allowed(verdict=Verdict.WOULD_BLOCK,
                                              reason=Reason.METHOD_NOT_ALLOWED), "https"),
        ("audit_invalid_path", _allowed(verdict=Verdict.WOULD_BLOCK,
                                        reason=Reason.INVALID_PATH), "https"),
        ("audit_host_not_allowed", _allowed(verdict=Verdict.WOULD_BLOCK,
                                            reason=Reason.HOST_NOT_ALLOWED), "https"),
        ("cleartext_upstream", _allowed(), "http"),
        ("unknown_scheme", _allowed(), None),
        ("unlisted_port", _allowed(port=8443), "https"),
        ("destination_not_vetted", _allowed(address=None), "https"),
        ("decision_for_another_entry", _allowed(rule="providers.anthropic",
                                                provider="anthropic"), "https"),
    ],
)  # fmt: skip
def test_key_withheld(attack: str, decision: Decision, scheme: str | None) -> None:
    assert key_withheld_because(decision, OPENAI, scheme), attack


def test_key_withheld_for_entries_without_a_credential() -> None:
    assert key_withheld_because(_allowed(), h.allow_endpoint(), "https")
    assert key_withheld_because(_allowed(), None, "https")


@pytest.fixture
def store(tmp_path: Path) -> SecretStore:
    h.k8s_write(tmp_path / "secrets", {"openai": KEY + "\n"})
    return SecretStore(tmp_path / "secrets")


def test_withheld_request_is_stripped_but_gets_no_key(store: SecretStore) -> None:
    headers = HeaderList([("Authorization", "Bearer sk-dummy"), ("x-api-key", "dummy")])
    result = prepare_request(OPENAI, headers, HeaderList([]), store, add_key=False)
    assert result.outcome is Outcome.WITHHELD and result.reason is None
    assert headers.get("authorization") is None and headers.get("x-api-key") is None
    assert KEY not in repr(headers.fields)


def test_withheld_request_still_refuses_a_gateway_held_key(store: SecretStore) -> None:
    leaked = h.openai_project_key()
    headers = HeaderList([("Authorization", f"Bearer {leaked}")])
    result = prepare_request(OPENAI, headers, HeaderList([]), store, add_key=False)
    assert result.outcome is Outcome.GATEWAY_HOLDS_CREDENTIAL and result.reason is not None
    assert leaked not in repr(headers.fields)


def test_control_the_same_request_allowed_gets_the_key(store: SecretStore) -> None:
    headers = HeaderList([("Authorization", "Bearer sk-dummy")])
    result = prepare_request(OPENAI, headers, HeaderList([]), store)
    assert result.outcome is Outcome.INJECTED
    assert headers.get("authorization") == f"Bearer {KEY}"
