"""S2 / S4: one spelling of a host name, IP literals in every spelling.

Each row is an attack or an edge case; the id names it. `REFUSED` means the text must
raise `HostError` (the engine turns that into `invalid_host`, enforced in audit mode).
"""

from __future__ import annotations

import ipaddress

import pytest

from sidecar.hostnames import (
    Host,
    HostError,
    normalize_name,
    normalize_policy_host,
    parse_host,
    parse_ipv4_literal,
    split_host_port,
    wildcard_parents,
)

REFUSED = object()


def name(text: str) -> Host:
    return Host(name=text)


def addr(text: str) -> Host:
    return Host(address=ipaddress.ip_address(text))


NAME_253 = ".".join(["a" * 63] * 3 + ["b" * 61])

PARSE_HOST_CASES: list[tuple[str, str, object]] = [
    # --- spellings of one name (S2) ---
    ("plain", "api.openai.com", name("api.openai.com")),
    ("upper-case", "API.OpenAI.COM", name("api.openai.com")),
    ("trailing-dot", "api.openai.com.", name("api.openai.com")),
    ("upper-case-and-trailing-dot", "API.OPENAI.COM.", name("api.openai.com")),
    ("two-trailing-dots", "api.openai.com..", REFUSED),
    ("only-a-dot", ".", REFUSED),
    ("empty", "", REFUSED),
    ("leading-space", " api.openai.com", REFUSED),
    ("trailing-space", "api.openai.com ", REFUSED),
    ("trailing-newline", "api.openai.com\n", REFUSED),
    ("newline-inside-label", "api\n.openai.com", REFUSED),  # "$" matched before "\n"
    ("cr-lf-inside", "api.openai.com\r\nx.evil.com", REFUSED),
    ("space-inside", "api openai.com", REFUSED),
    ("tab-inside", "api\t.openai.com", REFUSED),
    ("nul-inside", "api.openai.com\x00.evil.com", REFUSED),
    ("slash-inside", "api.openai.com/evil", REFUSED),
    ("at-sign-userinfo", "evil.com@api.openai.com", REFUSED),
    ("host-with-port", "api.openai.com:443", REFUSED),
    ("bracketed-name", "[api.openai.com]", REFUSED),
    ("unbalanced-bracket-open", "[::1", REFUSED),
    ("unbalanced-bracket-close", "::1]", REFUSED),
    ("empty-brackets", "[]", REFUSED),
    ("empty-label-middle", "api..openai.com", REFUSED),
    ("empty-label-leading", ".api.openai.com", REFUSED),
    ("leading-hyphen-label", "-api.openai.com", REFUSED),
    ("trailing-hyphen-label", "api-.openai.com", REFUSED),
    ("underscore-label-ok", "_dmarc.example.com", name("_dmarc.example.com")),
    ("label-63-ok", "a" * 63 + ".com", name("a" * 63 + ".com")),
    ("label-64", "a" * 64 + ".com", REFUSED),
    ("name-253-ok", NAME_253, name(NAME_253)),
    ("name-254", NAME_253 + "b", REFUSED),
    ("name-253-plus-trailing-dot-ok", NAME_253 + ".", name(NAME_253)),
    ("numeric-tld", "example.123", REFUSED),
    ("hex-tld", "example.0x1f", REFUSED),
    ("numeric-first-label-ok", "1.example.com", name("1.example.com")),
    ("single-label", "localhost", name("localhost")),
    # --- look-alikes: different names, never the allowed one ---
    ("suffix-attack", "api.openai.com.evil.com", name("api.openai.com.evil.com")),
    ("prefix-glued", "evilopenai.com", name("evilopenai.com")),
    ("cyrillic-a-lookalike", "\u0430pi.openai.com", name("xn--pi-6kc.openai.com")),
    ("cyrillic-a-in-sld", "api.open\u0430i.com", name("api.xn--openi-7ve.com")),
    ("cyrillic-o-in-sld", "api.\u043epenai.com", name("api.xn--penai-iye.com")),
    ("punycode-passes-through", "xn--pi-6kc.openai.com", name("xn--pi-6kc.openai.com")),
    ("punycode-upper-case", "XN--PI-6KC.OpenAI.com", name("xn--pi-6kc.openai.com")),
    # --- UTS 46 mapping: these ARE the same name (and resolve as it) ---
    ("fullwidth-letters-folded", "\uff21\uff30\uff29.openai.com", name("api.openai.com")),
    ("fullwidth-dot-folded", "api\uff0eopenai\uff0ecom", name("api.openai.com")),
    ("ideographic-dot-folded", "api\u3002openai\u3002com", name("api.openai.com")),
    ("zero-width-space-dropped", "api.openai.com\u200b", name("api.openai.com")),
    ("latin-upper-umlaut", "\u00c4.com", name("xn--4ca.com")),
    ("sharp-s-nontransitional", "fa\u00df.de", name("xn--fa-hia.de")),
    ("disallowed-codepoint", "api.openai.com\u2024", REFUSED),
    ("unicode-trailing-ideographic-dot", "api.openai.com\u3002", REFUSED),  # fail closed
    ("fullwidth-ipv4-digits", "\uff11\uff12\uff17.\uff10.\uff10.\uff11", REFUSED),
    ("fullwidth-hex-ipv4", "\uff10\uff58\uff17\uff46\uff10\uff10\uff10\uff10\uff10\uff11", REFUSED),
    # --- IPv4 literals in every spelling resolvers accept (S4) ---
    ("dotted-quad", "127.0.0.1", addr("127.0.0.1")),
    ("decimal-integer", "2130706433", addr("127.0.0.1")),
    ("hex-integer", "0x7f000001", addr("127.0.0.1")),
    ("hex-upper", "0X7F000001", addr("127.0.0.1")),
    ("hex-two-part", "0x7f.1", addr("127.0.0.1")),
    ("octal-first-octet", "0177.0.0.1", addr("127.0.0.1")),
    ("short-two-part", "127.1", addr("127.0.0.1")),
    ("short-three-part", "127.0.1", addr("127.0.0.1")),
    ("mixed-bases", "0xa.0.010.1", addr("10.0.8.1")),
    ("metadata-decimal", "2852039166", addr("169.254.169.254")),
    ("metadata-hex", "0xa9fea9fe", addr("169.254.169.254")),
    ("metadata-trailing-dot", "169.254.169.254.", addr("169.254.169.254")),
    ("zero", "0", addr("0.0.0.0")),
    ("bare-0x", "0x", addr("0.0.0.0")),
    ("max-integer", "4294967295", addr("255.255.255.255")),
    ("integer-overflow", "4294967296", REFUSED),
    ("five-parts", "1.2.3.4.5", REFUSED),
    ("octet-999", "999.1.1.1", REFUSED),
    ("octet-256-last", "1.1.1.256", REFUSED),
    ("bad-octal-digit", "08.0.0.1", REFUSED),
    ("hex-octet-too-big", "0x100.0.0.1", REFUSED),
    ("two-part-overflow", "1.16777216", REFUSED),
    ("newline-in-number", "127\n.0.0.1", REFUSED),
    ("empty-part", "127..1", REFUSED),
    # --- IPv6 literals ---
    ("bracketed-loopback", "[::1]", addr("::1")),
    ("bare-loopback", "::1", addr("::1")),
    ("bracketed-upper-hex", "[FD00:EC2::254]", addr("fd00:ec2::254")),
    ("bracketed-v4-mapped", "[::ffff:127.0.0.1]", addr("::ffff:7f00:1")),
    ("zone-id-bare", "fe80::1%eth0", REFUSED),
    ("zone-id-bracketed", "[fe80::1%eth0]", REFUSED),
    ("zone-id-encoded", "[fe80::1%25eth0]", REFUSED),
    ("bracketed-ipv4", "[127.0.0.1]", REFUSED),
    ("bad-ipv6", "[::g]", REFUSED),
    ("ipv6-with-port-unbracketed", "::1:443:", REFUSED),
]


@pytest.mark.parametrize(
    ("raw", "expected"), [c[1:] for c in PARSE_HOST_CASES], ids=[c[0] for c in PARSE_HOST_CASES]
)
def test_parse_host(raw: str, expected: object) -> None:
    if expected is REFUSED:
        with pytest.raises(HostError):
            parse_host(raw)
    else:
        assert parse_host(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [c[1] for c in PARSE_HOST_CASES if c[2] is not REFUSED],
    ids=[c[0] for c in PARSE_HOST_CASES if c[2] is not REFUSED],
)
def test_parse_host_is_idempotent(raw: str) -> None:
    once = parse_host(raw)
    assert parse_host(once.text) == once


def test_host_error_is_a_value_error() -> None:
    # Callers catch HostError; it must also be a ValueError for generic handlers.
    assert issubclass(HostError, ValueError)


def test_parse_ipv4_literal_leaves_names_alone() -> None:
    assert parse_ipv4_literal("api.openai.com") is None
    assert parse_ipv4_literal("1.example.com") is None
    assert parse_ipv4_literal("0x7f.example") is None


def test_normalize_name_strips_one_trailing_dot_only() -> None:
    assert normalize_name("Example.COM.") == "example.com"
    with pytest.raises(HostError):
        normalize_name("example.com..")


SPLIT_CASES: list[tuple[str, str, int | None, object]] = [
    ("name-and-port", "api.openai.com:443", None, ("api.openai.com", 443)),
    ("name-default-port", "api.openai.com", 443, ("api.openai.com", 443)),
    ("name-no-port-no-default", "api.openai.com", None, REFUSED),
    ("bracketed-v6-port", "[::1]:8443", None, ("[::1]", 8443)),
    ("bracketed-v6-default", "[::1]", 443, ("[::1]", 443)),
    ("bare-v6-refused", "::1:443", None, REFUSED),
    ("junk-after-bracket", "[::1]x:443", None, REFUSED),
    ("unbalanced-bracket", "[::1:443", None, REFUSED),
    ("port-zero", "a.com:0", None, REFUSED),
    ("port-65535", "a.com:65535", None, ("a.com", 65535)),
    ("port-65536", "a.com:65536", None, REFUSED),
    ("port-negative", "a.com:-1", None, REFUSED),
    ("port-plus", "a.com:+443", None, REFUSED),
    ("port-space", "a.com: 443", None, REFUSED),
    ("port-hex", "a.com:0x1bb", None, REFUSED),
    ("port-superscript-digit", "a.com:\u00b2", None, REFUSED),  # isdigit() but not int()
    ("port-arabic-indic-digits", "a.com:\u0664\u0664\u0663", None, REFUSED),
    ("port-fullwidth-digits", "a.com:\uff14\uff14\uff13", None, REFUSED),
]


@pytest.mark.parametrize(
    ("authority", "default", "expected"),
    [c[1:] for c in SPLIT_CASES],
    ids=[c[0] for c in SPLIT_CASES],
)
def test_split_host_port(authority: str, default: int | None, expected: object) -> None:
    if expected is REFUSED:
        # HostError specifically: the adapter catches HostError, not ValueError.
        with pytest.raises(HostError):
            split_host_port(authority, default)
    else:
        assert split_host_port(authority, default) == expected


def test_split_host_port_allow_zero() -> None:
    assert split_host_port("127.0.0.1:0", allow_zero=True) == ("127.0.0.1", 0)


POLICY_HOST_CASES: list[tuple[str, str, object]] = [
    ("exact", "api.openai.com", "api.openai.com"),
    ("wildcard-two-labels-ok", "*.example.com", "*.example.com"),
    ("wildcard-three-labels-ok", "*.openai.azure.com", "*.openai.azure.com"),
    ("wildcard-idn-suffix", "*.b\u00fccher.de", "*.xn--bcher-kva.de"),
    ("star-alone", "*", REFUSED),
    ("star-dot-alone", "*.", REFUSED),
    ("wildcard-tld", "*.com", REFUSED),
    ("wildcard-tld-trailing-dot", "*.com.", REFUSED),
    ("wildcard-middle", "api.*.com", REFUSED),
    ("wildcard-glued", "*foo.com", REFUSED),
    ("wildcard-double-star", "**.example.com", REFUSED),
    ("wildcard-twice", "*.*.example.com", REFUSED),
    ("wildcard-suffix", "api.example.*", REFUSED),
    ("wildcard-inside-label", "us-*-aiplatform.googleapis.com", REFUSED),
    ("wildcard-numeric-suffix", "*.1.2.3.4", REFUSED),
    ("wildcard-hex-suffix", "*.1.2.3.0x4", REFUSED),
    ("ipv4-literal", "10.0.0.1", REFUSED),
    ("ipv4-decimal-literal", "2130706433", REFUSED),
    ("ipv4-hex-literal", "0x7f.1", REFUSED),
    ("ipv6-bracketed", "[::1]", REFUSED),
    ("ipv6-bare", "fd00:ec2::254", REFUSED),
    ("two-trailing-dots", "api.openai.com..", REFUSED),
    ("empty", "", REFUSED),
]


@pytest.mark.parametrize(
    ("raw", "expected"), [c[1:] for c in POLICY_HOST_CASES], ids=[c[0] for c in POLICY_HOST_CASES]
)
def test_normalize_policy_host(raw: str, expected: object) -> None:
    if expected is REFUSED:
        with pytest.raises(HostError):
            normalize_policy_host(raw)
    else:
        assert normalize_policy_host(raw) == expected


def test_wildcard_parents_most_specific_first() -> None:
    assert wildcard_parents("a.b.example.com") == ["b.example.com", "example.com", "com"]
    assert wildcard_parents("example.com") == ["com"]
    assert wildcard_parents("localhost") == []
