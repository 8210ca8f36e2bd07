"""One pass over the headers instead of one `get_all` per name (issue 17): the same
values as mitmproxy's own look-ups, Kelvin-sign twins and odd case included."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from mitmproxy.http import Headers

from sidecar.addons.enforcer import _is_h2c_upgrade
from sidecar.credentials.decoding import header_codings, parse_codings
from sidecar.credentials.fields import values_of
from sidecar.credentials.inject import HeaderList

KELVIN = "\u212a"
NAMES = [
    "Content-Encoding", "content-encoding", "TRANSFER-ENCODING", "transfer-encoding",
    "Upgrade", "upgrade", "HTTP2-Settings", "http2-settings", f"upgrade-{KELVIN}",
    f"{KELVIN}ey", "key", "x-other", "Host",
]  # fmt: skip
VALUES = ["", "gzip", "GZIP, br", " identity ", "chunked", "h2c", "H2C, websocket", "ü", "x"]
ASKED = ("content-encoding", "transfer-encoding", "upgrade", "http2-settings", "key")

fields = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=12)


def _headers(pairs: list[tuple[str, str]]) -> Headers:
    return Headers([(n.encode(), v.encode()) for n, v in pairs])


@given(fields, st.lists(st.sampled_from(ASKED), min_size=1, max_size=4, unique=True))
def test_values_of_gives_what_get_all_gives_for_each_name(pairs, names):
    headers = _headers(pairs)
    assert values_of(headers, tuple(names)) == tuple(headers.get_all(n) for n in names)
    for name, values in zip(names, values_of(headers, tuple(names)), strict=True):
        assert ", ".join(values) == headers.get(name, "")  # what the hooks read as `get`
        assert bool(values) is (name in headers)
    listed = HeaderList(pairs)
    assert values_of(listed, tuple(names)) == tuple(listed.get_all(n) for n in names)


@given(fields)
def test_header_codings_are_the_codings_of_each_header(pairs):
    headers = _headers(pairs)
    assert header_codings(headers) == (
        parse_codings(headers.get_all("content-encoding")),
        parse_codings(headers.get_all("transfer-encoding")),
    )


@given(fields)
def test_h2c_upgrade_is_seen_as_the_folded_upgrade_header_and_settings_showed_it(pairs):
    headers = _headers(pairs)
    before = "h2c" in headers.get("upgrade", "").lower() or "http2-settings" in headers
    assert _is_h2c_upgrade(headers) is before


def test_an_h2c_upgrade_is_seen_in_any_upgrade_field_or_by_its_settings_alone():
    assert _is_h2c_upgrade(_headers([("Upgrade", "websocket"), ("upgrade", "H2C")]))
    assert _is_h2c_upgrade(_headers([("HTTP2-Settings", "")]))
    assert not _is_h2c_upgrade(_headers([("Upgrade", "websocket"), (f"upgrade-{KELVIN}", "h2c")]))
