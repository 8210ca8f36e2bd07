"""Address classification (S3, S4): may the sidecar connect to this address?

Every address the sidecar would connect to passes through `classify_address` after
resolution, and the sidecar then dials exactly that address. Embedded IPv4 forms
(IPv4-mapped, IPv4-translated, IPv4-compatible, NAT64, 6to4, Teredo) are unwrapped
and classified as the IPv4 address they carry, so `::ffff:169.254.169.254` is
metadata, not "IPv6".
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum

from sidecar.hostnames import IPAddress

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address
net = ipaddress.ip_network


class AddressClass(StrEnum):
    PUBLIC = "public"
    METADATA = "metadata"
    LOOPBACK = "loopback"
    PRIVATE = "private"  # RFC 1918, ULA
    LINK_LOCAL = "link_local"
    CGNAT = "cgnat"
    MULTICAST = "multicast"
    UNSPECIFIED = "unspecified"
    RESERVED = "reserved"  # documentation, benchmarking, broadcast, "this network", ...
    OWN = "own"  # one of the sidecar's own addresses


# Cloud instance metadata and credential endpoints. Never allowed, not even by policy.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    {
        IPv4("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        IPv4("169.254.170.2"),  # AWS ECS task credentials
        IPv4("169.254.170.23"),  # AWS EKS pod identity agent
        IPv4("100.100.100.200"),  # Alibaba Cloud
        IPv4("192.0.0.192"),  # Oracle Cloud
        IPv6("fd00:ec2::254"),  # AWS IMDS over IPv6
        IPv6("fd00:ec2::23"),  # AWS EKS pod identity agent over IPv6
        IPv6("fd20:ce::254"),  # GCP metadata over IPv6
    }
)

# The metadata addresses as networks, with the IPv6 forms a resolver or NAT may
# translate to them: a policy CIDR that touches any of these is refused (they hand
# out cloud credentials, and nothing in a gateway pod needs them).


def _metadata_networks() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for address in sorted(METADATA_ADDRESSES, key=lambda a: (a.version, int(a))):
        nets.append(ipaddress.ip_network(address))
        if isinstance(address, ipaddress.IPv4Address):
            n = int(address)
            nets.append(ipaddress.IPv6Network(f"::ffff:{address}/128"))  # IPv4-mapped
            nets.append(ipaddress.IPv6Network(f"::{address}/128"))  # IPv4-compatible
            nets.append(ipaddress.IPv6Network(f"64:ff9b::{address}/128"))  # NAT64
            nets.append(ipaddress.IPv6Network(((0x2002 << 112) | (n << 80), 48)))  # 6to4
    return tuple(nets)


METADATA_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = _metadata_networks()


def metadata_text(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """A metadata network as a reader knows it: the address alone when it is one."""
    return str(network.network_address) if network.num_addresses == 1 else str(network)


# Ordered: the first matching range names the class. Checked against the IANA IPv4 and
# IPv6 Special-Purpose Address Registries (RFC 6890); registry entries that are globally
# reachable and could never be an LLM provider anyway (AS112, AMT, the PCP/TURN
# anycasts) are left public, everything else is listed. Embedded-IPv4 forms (NAT64,
# SIIT, 6to4, Teredo, mapped) are unwrapped before this table is consulted.
_RANGES: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, AddressClass], ...] = (
    (net("0.0.0.0/8"), AddressClass.UNSPECIFIED),  # "this network", RFC 791
    (net("127.0.0.0/8"), AddressClass.LOOPBACK),  # RFC 1122
    (net("10.0.0.0/8"), AddressClass.PRIVATE),  # RFC 1918
    (net("172.16.0.0/12"), AddressClass.PRIVATE),  # RFC 1918
    (net("192.168.0.0/16"), AddressClass.PRIVATE),  # RFC 1918
    (net("100.64.0.0/10"), AddressClass.CGNAT),  # shared address space, RFC 6598
    (net("169.254.0.0/16"), AddressClass.LINK_LOCAL),  # RFC 3927
    # IETF protocol assignments, RFC 6890 (DS-Lite RFC 7335, dummy RFC 7600, PCP
    # RFC 7723, TURN RFC 8155, NAT64 discovery RFC 8880)
    (net("192.0.0.0/24"), AddressClass.RESERVED),
    (net("192.0.2.0/24"), AddressClass.RESERVED),  # TEST-NET-1, RFC 5737
    (net("192.88.99.0/24"), AddressClass.RESERVED),  # 6to4 relay anycast, RFC 7526
    (net("198.18.0.0/15"), AddressClass.RESERVED),  # benchmarking, RFC 2544
    (net("198.51.100.0/24"), AddressClass.RESERVED),  # TEST-NET-2, RFC 5737
    (net("203.0.113.0/24"), AddressClass.RESERVED),  # TEST-NET-3, RFC 5737
    (net("224.0.0.0/4"), AddressClass.MULTICAST),  # RFC 5771
    # reserved, RFC 1112; includes limited broadcast 255.255.255.255, RFC 919/8190
    (net("240.0.0.0/4"), AddressClass.RESERVED),
    (net("::/128"), AddressClass.UNSPECIFIED),  # RFC 4291
    (net("::1/128"), AddressClass.LOOPBACK),  # RFC 4291
    (net("fc00::/7"), AddressClass.PRIVATE),  # unique local, RFC 4193
    (net("fe80::/10"), AddressClass.LINK_LOCAL),  # RFC 4291
    (net("fec0::/10"), AddressClass.PRIVATE),  # deprecated site-local, RFC 3879
    (net("ff00::/8"), AddressClass.MULTICAST),  # RFC 4291
    (net("100::/64"), AddressClass.RESERVED),  # discard-only, RFC 6666
    (net("100:0:0:1::/64"), AddressClass.RESERVED),  # dummy IPv6 prefix, RFC 9780
    (net("2001:2::/48"), AddressClass.RESERVED),  # benchmarking, RFC 5180
    (net("2001:10::/28"), AddressClass.RESERVED),  # ORCHID (deprecated), RFC 4843
    (net("2001:20::/28"), AddressClass.RESERVED),  # ORCHIDv2, RFC 7343: identifiers
    (net("2001:30::/28"), AddressClass.RESERVED),  # DRIP entity tags, RFC 9374: ditto
    # The rest of the IETF protocol assignments block, RFC 2928 (Teredo, 2001::/32, is
    # unwrapped before; RIR allocations start at 2001:200::).
    (net("2001::/23"), AddressClass.RESERVED),
    (net("2001:db8::/32"), AddressClass.RESERVED),  # documentation, RFC 3849
    (net("3fff::/20"), AddressClass.RESERVED),  # documentation, RFC 9637
    (net("5f00::/16"), AddressClass.RESERVED),  # SRv6 SIDs, RFC 9602
    (net("::/96"), AddressClass.RESERVED),  # IPv4-compatible (deprecated) after unwrapping fails
    # Only 2000::/3 is allocated as global unicast (RFC 4291 section 2.4, IANA IPv6
    # Address Space); everything outside it is reserved by the IETF.
    (net("::/3"), AddressClass.RESERVED),
    (net("4000::/2"), AddressClass.RESERVED),
    (net("8000::/1"), AddressClass.RESERVED),
)

_NAT64 = (net("64:ff9b::/96"), net("64:ff9b:1::/48"))
_IPV4_TRANSLATED = net("::ffff:0:0:0/96")  # SIIT (RFC 2765): ::ffff:0:a.b.c.d
_6TO4 = net("2002::/16")
_TEREDO = net("2001::/32")


def embedded_ipv4(address: IPv6) -> IPv4 | None:
    """The IPv4 address an IPv6 address carries, for the forms routers translate."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    packed = address.packed
    for prefix in (*_NAT64, _IPV4_TRANSLATED):
        if address in prefix:
            return IPv4(packed[-4:])
    if address in _6TO4:
        return address.sixtofour
    if address in _TEREDO and address.teredo is not None:
        return address.teredo[1]  # the client's address
    # IPv4-compatible ::a.b.c.d (deprecated, still routed by some stacks).
    if packed[:12] == bytes(12) and int(address) > 1:
        return IPv4(packed[-4:])
    return None


def classify_address(
    address: IPAddress, own_addresses: frozenset[IPAddress] = frozenset()
) -> AddressClass:
    if isinstance(address, IPv6):
        inner = embedded_ipv4(address)
        if inner is not None:
            inner_class = classify_address(inner, own_addresses)
            # An embedded public address still goes through a translator: treat the
            # IPv6 form as public only when the carried IPv4 address is.
            return inner_class
    if address in METADATA_ADDRESSES:
        return AddressClass.METADATA
    if address in own_addresses:
        return AddressClass.OWN
    for network, cls in _RANGES:
        if address.version == network.version and address in network:
            return cls
    return AddressClass.PUBLIC


def is_metadata(address: IPAddress) -> bool:
    if isinstance(address, IPv6):
        inner = embedded_ipv4(address)
        if inner is not None:
            return inner in METADATA_ADDRESSES
    return address in METADATA_ADDRESSES


def classes_within(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> set[AddressClass]:
    """The non-public classes a range of addresses touches (for reviewing policy ranges)."""
    found = {
        cls
        for special, cls in _RANGES
        if special.version == network.version and special.overlaps(network)
    }
    if any(a.version == network.version and a in network for a in METADATA_ADDRESSES):
        found.add(AddressClass.METADATA)
    return found
