"""Where cloud credentials come from (issue 16): the secret store's JSON documents, STS
web identity, and Google tokens, against the fake STS and token endpoint on loopback.
A settable clock stands in for time passing towards expiry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.credentials.cloud_signing import CloudCredentialError
from sidecar.credentials.cloud_sources import FAILURE_BACKOFF, REFRESH_MARGIN, CloudCredentialSource
from sidecar.credentials.secret_store import SecretStore
from sidecar.policy.cloud_credentials import AwsWebIdentity, CloudCredential, CloudKind
from tests.support.cloud_fakes import (
    FakeGoogleToken,
    FakeSts,
    fake_endpoints,
    new_aws_credentials,
)
from tests.support.fakes import BackgroundLoop
from tests.support.keys import SecretMount

ROLE = "arn:aws:iam::123456789012:role/r"


class Clock:
    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def bg() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def sts(bg) -> Iterator[FakeSts]:
    fake = FakeSts(bg).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def google(bg) -> Iterator[FakeGoogleToken]:
    fake = FakeGoogleToken(bg).start()
    yield fake
    fake.stop()


def identity(tmp_path: Path, session: str = "s") -> CloudCredential:
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln")
    return CloudCredential(CloudKind.AWS_SIGV4, None, AwsWebIdentity(ROLE, str(token), session))


def run(coro):
    return asyncio.run(coro)


# --- the secret store: JSON documents and derived values ---------------------------------


def test_multi_line_json_is_a_document_never_a_header_value(tmp_path: Path) -> None:
    document = json.dumps({"AccessKeyId": "AKIAAAAAAAAAAAAAAAAA", "SecretAccessKey": "s"}, indent=2)
    (tmp_path / "bedrock").write_text(document)
    (tmp_path / "broken").write_text("line one\nline two\n")
    store = SecretStore(tmp_path)
    assert store.get("bedrock") is None  # never written into a header as it is
    found = store.get_document("bedrock")
    assert found is not None and found.reveal() == document
    assert store.get_document("broken") is None
    assert "broken" in store.problems() and "line" not in store.problems()["broken"].split("'")[0]
    assert store.missing({"bedrock", "broken"}) == {"broken"}


def test_remembered_values_are_redacted_and_counted_as_ours(tmp_path: Path) -> None:
    from sidecar.credentials.secret_store import Secret

    store = SecretStore(tmp_path)
    generation = store.generation
    store.remember(Secret("vertex", "ya29.minted-token-value-0123456789"))
    assert store.generation == generation + 1
    assert "ya29.minted-token-value-0123456789" in {s.reveal() for s in store.redaction_values()}
    store.remember(Secret("vertex", "ya29.minted-token-value-0123456789"))
    assert store.generation == generation + 1  # the same value again: nothing new


def test_rotated_document_is_seen_by_refresh(tmp_path: Path) -> None:
    first, second = new_aws_credentials(), new_aws_credentials()
    mount = SecretMount(tmp_path / "m", {"bedrock": first.document()})
    store = SecretStore(mount.root)
    source = CloudCredentialSource(store)
    credential = CloudCredential(CloudKind.AWS_SIGV4, "bedrock")
    assert run(source.aws_keys(credential)).access_key_id == first.access_key_id
    mount.swap({"bedrock": second.document()})
    assert store.refresh() == {"bedrock"}
    keys = run(source.aws_keys(credential))
    assert keys.access_key_id == second.access_key_id
    redacted = {s.reveal() for s in store.redaction_values()}
    assert {first.secret_access_key, second.secret_access_key} <= redacted


# --- STS web identity ---------------------------------------------------------------------


def test_web_identity_is_cached_until_the_refresh_margin(tmp_path, sts) -> None:
    clock = Clock()
    source = CloudCredentialSource(
        SecretStore(tmp_path), clock=clock, environ=fake_endpoints(sts.url)
    )
    credential = identity(tmp_path, "cached")

    async def scenario() -> None:
        calls = len(sts.calls)
        keys = await source.aws_keys(credential)
        assert keys == await source.aws_keys(credential)
        assert len(sts.calls) == calls + 1
        assert sts.calls[-1]["WebIdentityToken"] == "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
        assert sts.calls[-1]["RoleArn"] == ROLE
        assert keys.access_key_id == sts.issued[-1].access_key_id
        # Within the margin: the current keys are used while a refresh runs.
        assert keys.expires_at is not None
        clock.now = keys.expires_at - REFRESH_MARGIN + 1
        assert await source.aws_keys(credential) == keys
        for _ in range(200):
            if len(sts.calls) == calls + 2 and (await source.aws_keys(credential)) != keys:
                break
            await asyncio.sleep(0.05)
        assert len(sts.calls) == calls + 2
        assert (await source.aws_keys(credential)).access_key_id == sts.issued[-1].access_key_id

    run(scenario())


def test_expired_web_identity_waits_for_fresh_keys(tmp_path, sts) -> None:
    clock = Clock()
    source = CloudCredentialSource(
        SecretStore(tmp_path), clock=clock, environ=fake_endpoints(sts.url)
    )
    credential = identity(tmp_path, "expired")

    async def scenario() -> None:
        first = await source.aws_keys(credential)
        assert first.expires_at is not None
        clock.now = first.expires_at + 1  # expired: never used again
        fresh = await source.aws_keys(credential)
        assert fresh.access_key_id != first.access_key_id

    run(scenario())


def test_sts_refusal_is_a_safe_error_and_is_not_retried_at_once(tmp_path, sts) -> None:
    clock = Clock()
    store = SecretStore(tmp_path)
    source = CloudCredentialSource(store, clock=clock, environ=fake_endpoints(sts.url))
    credential = identity(tmp_path, "refused")
    sts.refuse = True
    try:

        async def scenario() -> None:
            calls = len(sts.calls)
            with pytest.raises(CloudCredentialError, match="InvalidIdentityToken"):
                await source.aws_keys(credential)
            with pytest.raises(CloudCredentialError):
                await source.aws_keys(credential)
            assert len(sts.calls) == calls + 1  # the second request did not call STS
            clock.now += FAILURE_BACKOFF + 0.1
            sts.refuse = False
            assert (await source.aws_keys(credential)).access_key_id == sts.issued[-1].access_key_id

        run(scenario())
    finally:
        sts.refuse = False


def test_unreadable_token_file_is_named(tmp_path) -> None:
    source = CloudCredentialSource(SecretStore(tmp_path), environ={})
    missing = CloudCredential(
        CloudKind.AWS_SIGV4, None, AwsWebIdentity(ROLE, str(tmp_path / "nope"))
    )
    with pytest.raises(CloudCredentialError, match=r"token file .*nope unreadable"):
        run(source.aws_keys(missing))


# --- Google ---------------------------------------------------------------------------------


def test_service_account_token_minted_cached_and_remembered(tmp_path, google) -> None:
    (tmp_path / "vertex").write_text(google.service_account())
    store = SecretStore(tmp_path)
    source = CloudCredentialSource(store, environ=fake_endpoints(None, google.url))
    credential = CloudCredential(CloudKind.GOOGLE_OAUTH, "vertex")

    async def scenario() -> None:
        minted = len(google.issued)
        token = await source.google_token(credential)
        assert token.reveal() == google.issued[-1]
        assert (await source.google_token(credential)) is token
        assert len(google.issued) == minted + 1
        assert token.reveal() not in repr(token)

    run(scenario())
    values = {s.reveal() for s in store.redaction_values()}
    assert google.issued[-1] in values
    pem_lines = json.loads((tmp_path / "vertex").read_text())["private_key"].splitlines()[1:-1]
    assert set(pem_lines) <= values


def test_concurrent_requests_share_one_mint(tmp_path, google) -> None:
    (tmp_path / "vertex").write_text(google.service_account())
    source = CloudCredentialSource(SecretStore(tmp_path), environ=fake_endpoints(None, google.url))
    credential = CloudCredential(CloudKind.GOOGLE_OAUTH, "vertex")

    async def scenario() -> None:
        minted = len(google.issued)
        tokens = await asyncio.gather(*(source.google_token(credential) for _ in range(8)))
        assert len({t.reveal() for t in tokens}) == 1
        assert len(google.issued) == minted + 1

    run(scenario())


def test_rejected_key_is_a_safe_error(tmp_path, google) -> None:
    key = json.loads(google.service_account())
    google.service_account()  # a newer key: the fake now accepts only that one
    (tmp_path / "vertex").write_text(json.dumps(key, indent=2))
    source = CloudCredentialSource(SecretStore(tmp_path), environ=fake_endpoints(None, google.url))
    with pytest.raises(CloudCredentialError, match="invalid_grant") as info:
        run(source.google_token(CloudCredential(CloudKind.GOOGLE_OAUTH, "vertex")))
    assert key["private_key"].splitlines()[1] not in str(info.value)


@pytest.mark.parametrize(
    ("info", "fragment"),
    [
        ({"type": "authorized_user", "refresh_token": "x"}, "not a service-account key"),
        (
            {"type": "external_account", "credential_source": {"url": "http://169.254.169.254/"}},
            "only a file credential_source",
        ),
        (
            {"type": "external_account", "credential_source": {"environment_id": "aws1"}},
            "only a file credential_source",
        ),
    ],
)
def test_google_configs_that_would_reach_elsewhere_are_refused(tmp_path, info, fragment) -> None:
    (tmp_path / "vertex").write_text(json.dumps(info, indent=2))
    source = CloudCredentialSource(SecretStore(tmp_path))
    with pytest.raises(CloudCredentialError, match=fragment):
        run(source.google_token(CloudCredential(CloudKind.GOOGLE_OAUTH, "vertex")))
