"""Request bodies as DLP sees them: every JSON string after unescaping, locations,
redaction that keeps the rest of the body byte for byte, content codings; and the
properties (hypothesis): no exception on any input, a secret anywhere in any JSON
string is found and redacted, bounded work per byte."""

from __future__ import annotations

import base64
import gzip
import json
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.dlp.detectors import Detector, own_key_patterns
from sidecar.dlp.document import read_egress_document, scan_body
from sidecar.dlp.kinds import SecretKind
from tests.support import harvest
from tests.support.work import WorkCounter

DETECTOR = Detector(own_key_patterns(["sk-ant-api03-" + "Zy9Xw8Vu" * 6]))
SECRET = harvest.GITHUB_TOKEN


def found(body: bytes, **kwargs: Any) -> set[str]:
    return {f.describe() for f in scan_body(body, DETECTOR, **kwargs).findings}


def test_every_string_is_scanned_with_its_json_path() -> None:
    body = json.dumps(
        {
            "model": "gpt-4o",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": f"x {SECRET} y"}]},
                {"role": "tool", "content": harvest.AWS_CREDENTIALS},
            ],
            "metadata": {"note": harvest.OPENAI_KEY},
        }
    ).encode()
    assert found(body) >= {
        "github_token at $.messages[0].content[0].text",
        "aws_secret_access_key at $.messages[1].content",
        "provider_api_key at $.metadata.note",
    }


def test_unicode_escapes_cannot_hide_a_key() -> None:
    escaped = "".join(f"\\u{ord(c):04x}" for c in SECRET)
    assert found(b'{"input": "' + escaped.encode() + b'"}') == {"github_token at $.input"}


def test_object_keys_are_scanned_and_never_written_into_the_location() -> None:
    result = scan_body(json.dumps({SECRET: 1, "ok": {SECRET: "x"}}).encode(), DETECTOR)
    locations = {f.location for f in result.findings}
    assert locations == {"$[?] (key)", "$.ok[?] (key)"}
    assert all(SECRET not in f.location for f in result.findings)


def test_duplicate_keys_are_all_scanned() -> None:
    body = b'{"content": "harmless", "content": "' + SECRET.encode() + b'"}'
    assert found(body) == {"github_token at $.content"}


def test_non_json_bodies_are_scanned_as_text() -> None:
    assert found(b"not json " + SECRET.encode()) == {"github_token at body"}
    assert found(b'{"broken": ' + SECRET.encode()) == {"github_token at body"}
    assert found(b"\xff\xfe binary " + SECRET.encode()) == {"github_token at body (as utf-8)"}


def test_nan_and_deep_nesting_are_not_json_here_and_still_scanned() -> None:
    assert read_egress_document(b'{"a": NaN}') is None
    deep = b"[" * 100_000 + b'"' + SECRET.encode() + b'"' + b"]" * 100_000
    assert read_egress_document(deep) is None
    assert found(deep) == {"github_token at body"}


def test_gzip_body_is_decoded_then_scanned_and_redacted_decoded() -> None:
    raw = json.dumps({"input": SECRET}).encode()
    result = scan_body(gzip.compress(raw), DETECTOR, content_encoding=["gzip"])
    assert {f.describe() for f in result.findings} == {"github_token at $.input"}
    assert result.decoded
    assert json.loads(result.redacted(frozenset({SecretKind.GITHUB_TOKEN})) or b"") == {
        "input": "[REDACTED:github_token]"
    }


def test_a_callers_document_of_the_content_decoded_body_is_scanned_not_parsed_again() -> None:
    """Request inspection parses the body after its content codings and hands the
    document on: DLP scans it (and redacts in the decoded body) without a second parse;
    a transfer coding it did not undo means the document is of other bytes."""
    raw = json.dumps({"input": SECRET}).encode()
    document = json.loads(raw)
    plain = scan_body(raw, DETECTOR, document=document)
    packed = scan_body(gzip.compress(raw), DETECTOR, content_encoding=["gzip"], document=document)
    for result in (plain, packed):
        assert not result.parsed
        assert {f.describe() for f in result.findings} == {"github_token at $.input"}
        assert json.loads(result.redacted(frozenset({SecretKind.GITHUB_TOKEN})) or b"") == {
            "input": "[REDACTED:github_token]"
        }
    # A document that does not match the bytes is dropped when a transfer coding was
    # undone here (not by request inspection): the body is parsed again, and scanned.
    other = {"input": "nothing to see"}
    transfer = scan_body(gzip.compress(raw), DETECTOR, transfer_encoding=["gzip"], document=other)
    assert transfer.parsed
    assert {f.describe() for f in transfer.findings} == {"github_token at $.input"}
    assert scan_body(raw, DETECTOR).parsed


def test_undecodable_and_bomb_bodies_are_unscannable() -> None:
    assert found(b"xx", content_encoding=["x-custom"]) == {"unscannable_body at body"}
    assert found(b"not gzip", content_encoding=["gzip"]) == {"unscannable_body at body"}
    bomb = gzip.compress(b"\0" * (2 * 1024 * 1024))
    assert found(bomb, content_encoding=["gzip"], decode_limit=1024 * 1024) == {
        "unscannable_body at body"
    }


def test_redaction_rewrites_only_the_affected_strings() -> None:
    body = (
        b'{\n  "model" : "m",\n  "n": 1.50e+00,\n  "messages": [{"content": "key '
        + SECRET.encode()
        + b' end \\u00e9"}],\n  "z": "\\u0041"\n}'
    )
    result = scan_body(body, DETECTOR)
    out = result.redacted(frozenset({SecretKind.GITHUB_TOKEN}))
    assert out is not None
    assert out.startswith(b'{\n  "model" : "m",\n  "n": 1.50e+00,\n  "messages": [{"content": ')
    assert out.endswith(b'}],\n  "z": "\\u0041"\n}')
    assert json.loads(out)["messages"][0]["content"] == "key [REDACTED:github_token] end \u00e9"


def test_redaction_of_kinds_not_chosen_leaves_the_body_alone() -> None:
    body = json.dumps({"a": SECRET}).encode()
    assert scan_body(body, DETECTOR).redacted(frozenset({SecretKind.JWT})) == body


def test_allow_check_drops_hits() -> None:
    body = json.dumps({"a": SECRET, "b": harvest.OPENAI_KEY}).encode()
    result = scan_body(body, DETECTOR, allowed=lambda kind, value, where: value == SECRET)
    assert {f.describe() for f in result.findings} == {"provider_api_key at $.b"}


# --- properties ----------------------------------------------------------------------

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@SETTINGS
@given(st.binary(max_size=4000), st.sampled_from([[], ["gzip"], ["br"], ["x-y"]]))
def test_no_exception_on_any_bytes(body: bytes, codings: list[str]) -> None:
    result = scan_body(body, DETECTOR, content_encoding=codings)
    result.redacted(result.kinds)


@SETTINGS
@given(st.text(max_size=3000), st.none() | st.text(max_size=30))
def test_no_exception_on_any_text(text: str, key: str | None) -> None:
    for hit in DETECTOR.scan(text, key):
        assert 0 <= hit.start < hit.end <= len(text)


@SETTINGS
@given(json_values, st.booleans())
def test_no_exception_on_any_json(value: Any, ascii_only: bool) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    result = scan_body(body, DETECTOR)
    out = result.redacted(result.kinds)
    assert out is not None
    json.loads(out)


SECRETS = [
    (SECRET, SecretKind.GITHUB_TOKEN),
    (harvest.OPENAI_KEY, SecretKind.PROVIDER_API_KEY),
    (harvest.KUBERNETES_TOKEN, SecretKind.KUBERNETES_TOKEN),
    (harvest.OPENSSH_PRIVATE_KEY, SecretKind.SSH_PRIVATE_KEY),
    ("sk-ant-api03-" + "Zy9Xw8Vu" * 6, SecretKind.SIDECAR_KEY),
    (base64.b64encode(harvest.AWS_CREDENTIALS.encode()).decode(), SecretKind.AWS_SECRET_ACCESS_KEY),
]


def _strings_in(value: Any) -> int:
    if isinstance(value, str):
        return 1
    if isinstance(value, list):
        return sum(_strings_in(v) for v in value)
    if isinstance(value, dict):
        return sum(_strings_in(v) for v in value.values())
    return 0


def _embed(value: Any, target: int, secret: str, at: int) -> tuple[Any, int]:
    """`value` with `secret` inserted into its `target`-th string value, at `at`."""
    if isinstance(value, str):
        if target == 0:
            cut = at % (len(value) + 1)
            return value[:cut] + " " + secret + " " + value[cut:], -1
        return value, target - 1
    if isinstance(value, list):
        out = []
        for item in value:
            item, target = _embed(item, target, secret, at)
            out.append(item)
        return out, target
    if isinstance(value, dict):
        new = {}
        for k, item in value.items():
            new[k], target = _embed(item, target, secret, at)
        return new, target
    return value, target


@SETTINGS
@given(json_values, st.data(), st.sampled_from(SECRETS), st.booleans())
def test_a_secret_anywhere_in_any_json_string_is_found_and_redacted(
    value: Any, data: st.DataObject, secret_kind: tuple[str, SecretKind], ascii_only: bool
) -> None:
    secret, kind = secret_kind
    if not isinstance(value, (dict, list)):
        # Only an object or array is read as JSON (provider APIs take objects); a
        # top-level scalar is text, redacted as text (the quotes may go with the key).
        value = {"value": value}
    count = _strings_in(value)
    if count == 0:
        value, count = {"appended": value, "text": ""}, _strings_in(value) + 1
    target = data.draw(st.integers(0, count - 1))
    embedded, _ = _embed(value, target, secret, data.draw(st.integers(0, 50)))
    body = json.dumps(embedded, ensure_ascii=ascii_only).encode()
    result = scan_body(body, DETECTOR)
    assert kind in result.kinds
    out = result.redacted(result.kinds)
    assert out is not None
    assert secret not in out.decode() and secret not in json.dumps(json.loads(out))


# Work per byte: Python-level steps (deterministic), on adversarial bodies.
PER_BYTE, PER_CALL = 6, 3000
PIECES = [
    "eyJ",
    "AKIA",
    "AKIAZZZZ1234567890AB ",
    "-----BEGIN PRIVATE KEY-----",
    "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "A" * 70 + "\n",
    "PuTTY-User-Key-File-2: x\n",
    '"type": "service_account", ',
    '"private_key": "',
    "aws_secret_access_key = ",
    "A=b\n",
    "SECRET_TOKEN=Q7fK2pLx9RtV4mZs8NwY\n",
    "clusters users apiVersion\ntoken: abcdefgh12\n",
    "sk-proj-",
    "ghp_",
    "%41",
    "QUtJQVpaWlox" * 8,
    "\\n",
    " ",
    "x" * 50,
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=400), st.booleans())
def test_scan_work_is_bounded_per_byte(pieces: list[str], as_json: bool) -> None:
    text = "".join(pieces)
    body = json.dumps({"input": text}).encode() if as_json else text.encode()
    with WorkCounter() as work:
        result = scan_body(body, DETECTOR)
        result.redacted(result.kinds)
    assert work.steps <= PER_CALL + PER_BYTE * len(body), (
        f"{work.steps} steps for {len(body)} bytes"
    )


def test_regex_work_stays_linear_on_large_adversarial_bodies() -> None:
    """The regex engines run in C, out of WorkCounter's sight: 2 MB of each repeated
    trigger must take seconds at most (a quadratic pattern would take hours)."""
    for piece in PIECES:
        text = piece * (2_000_000 // len(piece))
        started = time.monotonic()
        scan_body(text.encode(), DETECTOR)
        assert time.monotonic() - started < 30, repr(piece[:20])


def test_json_inside_a_string_is_unescaped_and_scanned_too() -> None:
    twice = json.dumps({"x": SECRET}).replace(
        SECRET[1:], "".join(f"\\u{ord(c):04x}" for c in SECRET[1:])
    )
    body = json.dumps({"messages": [{"tool_calls": [{"function": {"arguments": twice}}]}]}).encode()
    result = scan_body(body, DETECTOR)
    assert {f.describe() for f in result.findings} == {
        "github_token at $.messages[0].tool_calls[0].function.arguments (json in a string)"
    }
    assert SECRET[1:] not in (result.redacted(result.kinds) or b"").decode()


def test_invisible_characters_inside_a_key_do_not_hide_it() -> None:
    salted = SECRET[:2] + "\u200b" + SECRET[2:10] + "\u2060" + SECRET[10:]
    assert found(json.dumps({"content": "x " + salted}).encode()) == {
        "github_token at $.content (invisible characters)"
    }
    emoji = "family \U0001f468\u200d\U0001f469\u200d\U0001f467 " + SECRET
    assert found(json.dumps({"content": emoji}).encode()) == {"github_token at $.content"}


def test_utf16_and_utf32_bodies_are_decoded_like_json_decoders_do() -> None:
    """Python's json (and servers built on it) read UTF-16/32 JSON: so does the scan."""
    for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-32"):
        body = json.dumps({"input": "x " + SECRET}).encode(encoding)
        result = scan_body(body, DETECTOR)
        assert {f.describe() for f in result.findings} == {"github_token at $.input"}, encoding
        out = result.redacted(result.kinds) or b""
        assert json.loads(out.decode(encoding)) == {"input": "x [REDACTED:github_token]"}
    text = ("notes " + SECRET).encode("utf-16-le")
    assert found(text) == {"github_token at body (as utf-16-le)"}  # refused, not redacted
