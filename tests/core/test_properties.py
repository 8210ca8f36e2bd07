"""Hypothesis properties of the decision core (S2, S3, S4): matcher, parser, classifier."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sidecar.decision import Reason
from sidecar.engine import Attempt, PolicyEngine, normalize_request_path
from sidecar.hostnames import HostError, normalize_policy_host, parse_host, split_host_port
from sidecar.netguard import classify_address

from .conftest import MakeEngine

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

EXACT = "api.openai.com"
SUFFIX = "example.com"  # policy: "*.example.com"
CIDR = ipaddress.ip_network("10.1.0.0/16")

POLICY = f"""\
version: 1
providers:
  openai:
    hosts: [{EXACT}]
  wide:
    hosts: ["*.{SUFFIX}"]
allow:
  - name: lan
    cidrs: [{CIDR}, 192.0.2.0/24, 2001:db8:1::/48]
    ports: [443]
"""


@pytest.fixture(scope="module")
def engine(make_engine: MakeEngine) -> PolicyEngine:
    return make_engine(POLICY)


# Labels near the policy's names: pieces of them, look-alikes, digits, hyphens.
label = st.one_of(
    st.sampled_from(["api", "openai", "com", "example", "evil", "x", "www", "xn--pi-6kc"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12).filter(
        lambda s: s[0] != "-" and s[-1] != "-"
    ),
)
# A numeric-looking last label ("123", "0x1f") is an address attempt, not a name.
dns_name = (
    st.lists(label, min_size=1, max_size=5)
    .map(".".join)
    .filter(lambda n: not re.fullmatch(r"0x[0-9a-f]*|[0-9]+", n.rsplit(".", 1)[-1]))
)


def spellings(name: str) -> st.SearchStrategy[str]:
    """Other spellings of one name: case changes and one trailing dot."""
    return st.tuples(
        st.lists(st.booleans(), min_size=len(name), max_size=len(name)), st.booleans()
    ).map(
        lambda t: (
            "".join(c.upper() if up else c for c, up in zip(name, t[0], strict=True))
            + ("." if t[1] else "")
        )
    )


def decide(engine: PolicyEngine, host: str) -> tuple[Reason, str]:
    d = engine.decide(Attempt(host=host, port=443, mode="explicit"))
    return d.reason, d.rule


@SETTINGS
@given(dns_name)
@example("api.openai.com")
@example("api.openai.com.evil.com")
@example("evilapi.openai.com")
@example("openai.com")
def test_exact_host_matches_only_itself(engine: PolicyEngine, name: str) -> None:
    normalized = parse_host(name).name
    assert normalized is not None
    matched = engine.match_name(normalized)
    if normalized == EXACT:
        assert matched is not None and matched.rule == "providers.openai"
    else:
        assert matched is None or matched.rule != "providers.openai"


@SETTINGS
@given(dns_name)
@example("example.com")
@example("a.example.com")
@example("a.b.example.com")
@example("evilexample.com")
@example("example.com.evil")
def test_wildcard_matches_iff_strictly_below_suffix(engine: PolicyEngine, name: str) -> None:
    normalized = parse_host(name).name
    assert normalized is not None
    matched = engine.match_name(normalized)
    below = normalized.endswith("." + SUFFIX)
    assert (matched is not None and matched.rule == "providers.wide") is below


@SETTINGS
@given(dns_name.flatmap(lambda n: st.tuples(st.just(n), spellings(n))))
@example(("api.openai.com", "API.OPENAI.COM."))
@example(("a.example.com", "A.Example.Com"))
def test_case_and_trailing_dot_do_not_change_the_decision(
    engine: PolicyEngine, pair: tuple[str, str]
) -> None:
    name, variant = pair
    assert decide(engine, variant) == decide(engine, name)
    assert parse_host(variant) == parse_host(name)


host_text = st.one_of(
    st.text(
        alphabet=st.sampled_from(
            [*"aAx0179.-:[]%_ ", "\uff41", "\uff10", "\uff58", "\u3002", "\u0430", "\n"]
        ),
        max_size=24,
    ),
    dns_name,
    st.ip_addresses().map(str),
)


@SETTINGS
@given(host_text)
@example("\uff10\uff58\uff17\uff46\uff10\uff10\uff10\uff10\uff10\uff11")
@example("api\n.openai.com")
def test_parse_host_is_idempotent(text: str) -> None:
    try:
        once = parse_host(text)
    except HostError:
        return
    assert parse_host(once.text) == once
    if once.name is not None:
        assert once.name == once.name.lower() and once.name.isascii()
        assert not once.name.endswith(".") and "\n" not in once.name


@SETTINGS
@given(st.ip_addresses(v=4))
def test_ipv4_spellings_parse_to_the_same_address(address: ipaddress.IPv4Address) -> None:
    value = int(address)
    octets = address.packed
    for spelling in (
        str(value),
        hex(value),
        ".".join(f"0{b:o}" for b in octets),
        ".".join(hex(b) for b in octets),
        f"{octets[0]}.{value & 0xFFFFFF}",
        f"{octets[0]}.{octets[1]}.{value & 0xFFFF}",
        str(address) + ".",
    ):
        assert parse_host(spelling).address == address, spelling


@SETTINGS
@given(st.ip_addresses(v=4))
def test_embedded_forms_classify_as_the_ipv4_address(address: ipaddress.IPv4Address) -> None:
    expected = classify_address(address)
    n = int(address)
    for wrapped in (
        ipaddress.IPv6Address(f"::ffff:{address}"),
        ipaddress.IPv6Address(f"64:ff9b::{address}"),
        ipaddress.IPv6Address((0x2002 << 112) | (n << 80)),
    ):
        assert classify_address(wrapped) is expected, wrapped


@SETTINGS
@given(st.ip_addresses(v=4), st.booleans())
def test_literal_decisions_follow_classification(
    engine: PolicyEngine, address: ipaddress.IPv4Address, mapped: bool
) -> None:
    """S4: a literal passes only through a CIDR entry, metadata never."""
    host = f"[::ffff:{address}]" if mapped else str(address)
    reason, rule = decide(engine, host)
    cls = classify_address(address)
    if cls.value == "metadata":
        assert reason is Reason.METADATA_ADDRESS
    elif not mapped and address in CIDR:
        assert (reason, rule) == (Reason.ALLOWED, "allow.lan")
    elif address in ipaddress.ip_network("192.0.2.0/24") and not mapped:
        assert reason is Reason.ALLOWED
    else:
        expected = Reason.IP_LITERAL if cls.value == "public" else Reason.PRIVATE_ADDRESS
        assert reason is expected


@SETTINGS
@given(st.ip_addresses())
def test_match_address_agrees_with_a_linear_scan(
    engine: PolicyEngine, address: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> None:
    found = engine.match_address(address)
    scan = [
        e
        for e in engine.policy.endpoints
        for net in e.cidrs
        if net.version == address.version and address in net
    ]
    assert (found is None) is (not scan)
    if found is not None:
        assert found in scan


path_text = st.lists(
    st.sampled_from(
        [
            "/",
            ".",
            "..",
            "v1",
            "x",
            "%2e",
            "%2E",
            "%2f",
            "%5c",
            "%25",
            "%",
            "2e",
            "%32",
            "%65",
            "\\",
            "?",
            "#",
            ";",
            "%00",
            "%c0%ae",
            "%e2%80%ae",
            "%20",
            "a%",
            "%zz",
            "//",
        ]
    ),
    max_size=12,
).map(lambda parts: "/" + "".join(parts))


@SETTINGS
@given(path_text)
@example("/v1/%%32%65%%32%65/admin")
@example("/v1/%2%65%2%65/x")
def test_normalized_path_without_problem_is_unambiguous(raw: str) -> None:
    path, problem = normalize_request_path(raw)
    if problem:
        return
    segments = path.split("/")[1:]
    assert "." not in segments and ".." not in segments
    assert "//" not in path and "\\" not in path and "\x00" not in path
    assert "%" not in path  # nothing left for a second decoding to turn into "." or "/"
    assert path.startswith("/")


@SETTINGS
@given(st.one_of(st.text(max_size=30), host_text))
@example("a.com:\u00b2")
@example("\ud800.com")
def test_parsers_raise_only_host_error(text: str) -> None:
    """Adapters catch HostError; any other exception would escape the refusal path."""
    for parse in (
        parse_host,
        normalize_policy_host,
        lambda t: split_host_port(t, 443),
    ):
        try:
            parse(text)
        except HostError:
            pass
