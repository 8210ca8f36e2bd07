"""S3 / S4: address classification, smokescreen `classifyAddr` style.

One row per address: the id names the range edge or the trick (embedded IPv4 forms
must classify as the IPv4 address they carry).
"""

from __future__ import annotations

import ipaddress

import pytest

from sidecar.decision import Reason
from sidecar.netguard import METADATA_ADDRESSES, AddressClass, classify_address, embedded_ipv4

A = AddressClass
PUBLIC, METADATA, LOOPBACK, PRIVATE = A.PUBLIC, A.METADATA, A.LOOPBACK, A.PRIVATE
LINK_LOCAL, CGNAT, MULTICAST, UNSPECIFIED, RESERVED = (
    A.LINK_LOCAL,
    A.CGNAT,
    A.MULTICAST,
    A.UNSPECIFIED,
    A.RESERVED,
)


def teredo(server: str, client: str, port: int = 0x63BF, flags: int = 0x8000) -> str:
    """RFC 4380 address: client address and port are stored inverted."""
    s = int(ipaddress.IPv4Address(server))
    c = int(ipaddress.IPv4Address(client)) ^ 0xFFFFFFFF
    value = (0x20010000 << 96) | (s << 64) | (flags << 48) | (port << 32) | c
    return str(ipaddress.IPv6Address(value))


CASES: list[tuple[str, str, AddressClass]] = [
    # cloud metadata
    ("aws-gcp-azure-imds", "169.254.169.254", METADATA),
    ("ecs-task-credentials", "169.254.170.2", METADATA),
    ("eks-pod-identity", "169.254.170.23", METADATA),
    ("aws-imds-ipv6", "fd00:ec2::254", METADATA),
    ("eks-pod-identity-ipv6", "fd00:ec2::23", METADATA),
    ("gcp-metadata-ipv6", "fd20:ce::254", METADATA),
    ("alibaba-metadata", "100.100.100.200", METADATA),
    ("oracle-metadata", "192.0.0.192", METADATA),
    ("link-local-next-to-imds", "169.254.169.253", LINK_LOCAL),
    # RFC 1918 edges
    ("10/8-first", "10.0.0.0", PRIVATE),
    ("10/8-last", "10.255.255.255", PRIVATE),
    ("below-10/8", "9.255.255.255", PUBLIC),
    ("above-10/8", "11.0.0.0", PUBLIC),
    ("172.16/12-first", "172.16.0.0", PRIVATE),
    ("172.16/12-last", "172.31.255.255", PRIVATE),
    ("below-172.16/12", "172.15.255.255", PUBLIC),
    ("above-172.16/12", "172.32.0.0", PUBLIC),
    ("192.168/16-first", "192.168.0.0", PRIVATE),
    ("192.168/16-last", "192.168.255.255", PRIVATE),
    ("above-192.168/16", "192.169.0.0", PUBLIC),
    # CGNAT edges
    ("100.64/10-first", "100.64.0.0", CGNAT),
    ("100.64/10-last", "100.127.255.255", CGNAT),
    ("below-100.64/10", "100.63.255.255", PUBLIC),
    ("above-100.64/10", "100.128.0.0", PUBLIC),
    # loopback, link-local, unspecified
    ("127/8-first", "127.0.0.0", LOOPBACK),
    ("127/8-usual", "127.0.0.1", LOOPBACK),
    ("127/8-last", "127.255.255.255", LOOPBACK),
    ("ipv6-loopback", "::1", LOOPBACK),
    ("169.254/16-first", "169.254.0.0", LINK_LOCAL),
    ("fe80/10-first", "fe80::1", LINK_LOCAL),
    ("fe80/10-last", "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", LINK_LOCAL),
    ("ipv4-unspecified", "0.0.0.0", UNSPECIFIED),
    ("this-network", "0.1.2.3", UNSPECIFIED),
    ("ipv6-unspecified", "::", UNSPECIFIED),
    # ULA fc00::/7
    ("ula-fc00", "fc00::1", PRIVATE),
    ("ula-fd-last", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", PRIVATE),
    ("below-ula-unallocated", "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", RESERVED),
    ("site-local-deprecated", "fec0::1", PRIVATE),
    # multicast, broadcast, reserved
    ("ipv4-multicast", "224.0.0.1", MULTICAST),
    ("ipv4-multicast-last", "239.255.255.255", MULTICAST),
    ("ipv6-multicast", "ff02::1", MULTICAST),
    ("broadcast", "255.255.255.255", RESERVED),
    ("class-e", "240.0.0.1", RESERVED),
    ("test-net-1", "192.0.2.1", RESERVED),
    ("test-net-3", "203.0.113.9", RESERVED),
    ("benchmarking", "198.18.0.1", RESERVED),
    ("ipv6-documentation", "2001:db8::1", RESERVED),
    ("ipv6-discard", "100::1", RESERVED),
    # IANA special-purpose registries (issue 11): ranges that were missing, with edges
    ("ipv6-documentation-3fff-first", "3fff::", RESERVED),  # RFC 9637
    ("ipv6-documentation-3fff-last", "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", RESERVED),
    ("above-3fff/20", "3fff:1000::", PUBLIC),
    ("below-3fff/20", "3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", PUBLIC),
    ("ipv6-benchmarking-first", "2001:2::", RESERVED),  # RFC 5180
    ("ipv6-benchmarking-last", "2001:2:0:ffff:ffff:ffff:ffff:ffff", RESERVED),
    ("srv6-sid-first", "5f00::", RESERVED),  # RFC 9602
    ("srv6-sid-last", "5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", RESERVED),
    ("ipv6-dummy-prefix", "100:0:0:1::1", RESERVED),  # RFC 9780
    ("drip-entity-tag", "2001:30::1", RESERVED),  # RFC 9374
    ("orchid-v2", "2001:20::1", RESERVED),  # RFC 7343
    ("ietf-protocol-assignments", "2001:1::1", RESERVED),  # RFC 2928 (PCP anycast)
    ("ietf-protocol-assignments-last", "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", RESERVED),
    ("first-rir-allocation", "2001:200::1", PUBLIC),
    ("6to4-relay-anycast", "192.88.99.1", RESERVED),  # RFC 7526
    ("below-6to4-relay", "192.88.98.255", PUBLIC),
    ("above-6to4-relay", "192.88.100.0", PUBLIC),
    ("ds-lite", "192.0.0.1", RESERVED),  # RFC 7335, inside 192.0.0.0/24
    ("nat64-discovery", "192.0.0.170", RESERVED),  # RFC 8880
    # outside 2000::/3 nothing is allocated as global unicast (RFC 4291 2.4)
    ("ipv6-unallocated-4000", "4000::1", RESERVED),
    ("ipv6-unallocated-1fff", "1fff:ffff::1", RESERVED),
    ("ipv6-unallocated-e000", "e000::1", RESERVED),
    ("global-unicast-first", "2000::1", PUBLIC),
    ("global-unicast-last", "3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", PUBLIC),
    # embedded IPv4: classified as the address carried
    ("v4-mapped-private", "::ffff:10.0.0.1", PRIVATE),
    ("v4-mapped-metadata", "::ffff:169.254.169.254", METADATA),
    ("v4-mapped-loopback-hex", "::ffff:7f00:1", LOOPBACK),
    ("v4-mapped-public", "::ffff:8.8.8.8", PUBLIC),
    ("v4-translated-private", "::ffff:0:a00:1", PRIVATE),  # SIIT, RFC 2765
    ("v4-compatible-private", "::10.0.0.1", PRIVATE),
    ("v4-compatible-metadata", "::169.254.169.254", METADATA),
    ("nat64-private", "64:ff9b::a00:1", PRIVATE),
    ("nat64-metadata", "64:ff9b::a9fe:a9fe", METADATA),
    ("nat64-loopback", "64:ff9b::7f00:1", LOOPBACK),
    ("nat64-public", "64:ff9b::808:808", PUBLIC),
    ("nat64-local-use-private", "64:ff9b:1::a00:1", PRIVATE),
    ("6to4-private", "2002:a00:1::", PRIVATE),
    ("6to4-metadata", "2002:a9fe:a9fe::1", METADATA),
    ("6to4-cgnat", "2002:6440:1::", CGNAT),
    ("6to4-public", "2002:808:808::", PUBLIC),
    ("teredo-client-private", teredo("65.54.227.120", "10.0.0.1"), PRIVATE),
    ("teredo-client-metadata", teredo("65.54.227.120", "169.254.169.254"), METADATA),
    ("teredo-client-public", teredo("65.54.227.120", "8.8.8.8"), PUBLIC),
    # public
    ("google-dns", "8.8.8.8", PUBLIC),
    ("cloudflare-dns", "1.1.1.1", PUBLIC),
    ("cloudflare-ipv6", "2606:4700::1111", PUBLIC),
    ("google-ipv6", "2001:4860:4860::8888", PUBLIC),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classify_address(text: str, expected: AddressClass) -> None:
    assert classify_address(ipaddress.ip_address(text)) is expected


OWN = frozenset({ipaddress.ip_address("10.9.8.7"), ipaddress.ip_address("2001:db8:5::7")})
OWN_CASES: list[tuple[str, str, AddressClass]] = [
    ("own-ipv4", "10.9.8.7", A.OWN),
    ("own-ipv6", "2001:db8:5::7", A.OWN),
    ("own-ipv4-mapped", "::ffff:10.9.8.7", A.OWN),
    ("own-nat64", "64:ff9b::a09:807", A.OWN),
    ("neighbour-of-own", "10.9.8.8", PRIVATE),
    ("public-unaffected", "8.8.8.8", PUBLIC),
    ("metadata-beats-own", "169.254.169.254", METADATA),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in OWN_CASES], ids=[c[0] for c in OWN_CASES]
)
def test_classify_own_addresses(text: str, expected: AddressClass) -> None:
    assert classify_address(ipaddress.ip_address(text), OWN) is expected


def test_public_own_address_is_own() -> None:
    own = ipaddress.ip_address("8.8.4.4")
    assert classify_address(own, frozenset({own})) is A.OWN


def test_metadata_never_owned() -> None:
    meta = ipaddress.ip_address("169.254.169.254")
    assert classify_address(meta, frozenset({meta})) is METADATA


@pytest.mark.parametrize(
    ("text", "inner"),
    [
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("64:ff9b::102:304", "1.2.3.4"),
        ("2002:102:304::", "1.2.3.4"),
        ("::1.2.3.4", "1.2.3.4"),
        ("::1", None),
        ("::", None),
        ("2606:4700::1111", None),
    ],
    ids=["mapped", "nat64", "6to4", "compatible", "loopback-not-compat", "unspecified", "plain"],
)
def test_embedded_ipv4(text: str, inner: str | None) -> None:
    address = ipaddress.IPv6Address(text)
    expected = None if inner is None else ipaddress.IPv4Address(inner)
    assert embedded_ipv4(address) == expected


def test_every_metadata_address_classifies_as_metadata() -> None:
    for address in METADATA_ADDRESSES:
        assert classify_address(address) is METADATA, address


@pytest.mark.parametrize(
    "answer",
    ["3fff::1", "2001:2::1", "5f00::1", "192.88.99.1", "4000::1", "2001:30::1"],
    ids=[
        "doc-3fff",
        "benchmarking-2001:2",
        "srv6-5f00",
        "6to4-relay",
        "unallocated-4000",
        "drip-det",
    ],
)
def test_rebinding_provider_name_to_special_purpose_range_is_refused(engine, answer) -> None:
    """A provider name whose DNS answer lies in a special-purpose range is refused (S3)."""
    vetting = engine.vet_answers(
        [ipaddress.ip_address(answer)], engine.endpoint("providers.openai")
    )
    assert vetting.address is None
    assert vetting.reason is Reason.PRIVATE_ADDRESS
    assert "reserved" in vetting.detail
