"""Header names that `str.lower()` folds together but mitmproxy's `Headers` keeps apart
(issue 17's one-pass `by_name`). mitmproxy compares names by their lower-cased *bytes*:
only ASCII letters fold. `str.lower()` also folds the Kelvin sign U+212A to "k", so a
hostile upstream could name one header after the injected key with "K" (U+212A) for
its "k", and a second after the key itself: grouped as one name, only the first was
checked and dropped, and the key as a header name reached the gateway."""

from __future__ import annotations

from pathlib import Path

from mitmproxy.http import Headers
from mitmproxy.test import tutils

from sidecar.credentials.fields import by_name
from sidecar.credentials.inject import HeaderList, Outcome, prepare_request
from sidecar.credentials.reflection import HEADER_NAME_HIT, ReflectionGuard
from sidecar.credentials.secret_store import SecretStore
from tests.credentials import helpers as h

KELVIN = "\u212a"  # KELVIN SIGN: str.lower() gives "k"; its UTF-8 bytes do not fold


def _store(tmp_path: Path, key: str) -> SecretStore:
    h.k8s_write(tmp_path / "secrets", {"openai": key + "\n"})
    return SecretStore(tmp_path / "secrets")


def test_key_as_response_header_name_behind_a_kelvin_sign_twin_is_dropped(tmp_path: Path):
    key = h.openai_project_key()
    assert "k" in key
    twin = key.replace("k", KELVIN)  # "s\u212a-proj-...": no needle, same str.lower()
    assert twin.lower() == key.lower()
    headers = Headers(
        [(twin.encode(), b"1"), (key.encode(), b"2"), (b"content-type", b"application/json")]
    )
    guard = ReflectionGuard(_store(tmp_path, key))
    assert guard.redact_headers(headers) == [HEADER_NAME_HIT]
    raw = b"\n".join(name for name, _ in headers.fields)
    assert key.encode().lower() not in raw.lower()
    assert headers.get_all("content-type") == ["application/json"]


def test_by_name_groups_header_names_as_mitmproxy_does():
    headers = Headers(
        [(b"X-A", b"1"), (f"x-{KELVIN}".encode(), b"2"), (b"x-a", b"3"), (b"x-k", b"4")]
    )
    assert by_name(headers) == [(n, headers.get_all(n)) for n in headers]
    listed = HeaderList([(k.decode(), v.decode()) for k, v in headers.fields])
    assert by_name(listed) == [(n, listed.get_all(n)) for n in listed]


def test_credential_header_behind_a_kelvin_sign_twin_is_stripped(tmp_path: Path):
    """The gateway sends `x-api-Key` (Kelvin sign) first, then `x-api-key`: both are
    credential headers to OpenAI, so both go; only the injected Authorization leaves."""
    store = _store(tmp_path, h.openai_project_key())
    req = tutils.treq(
        host="api.openai.com",
        path=b"/v1/chat/completions",
        headers=(
            (f"x-api-{KELVIN}ey".encode(), b"vk-not-for-the-provider"),
            (b"x-api-key", b"not-for-the-provider-either"),
            (b"authorization", b"Bearer sk-dummy"),
        ),
    )
    result = prepare_request(h.provider("openai"), req.headers, None, store)
    assert result.outcome is Outcome.INJECTED
    assert req.headers.get_all("x-api-key") == []
    assert [name for name, _ in req.headers.fields] == [b"authorization", b"accept-encoding"]
