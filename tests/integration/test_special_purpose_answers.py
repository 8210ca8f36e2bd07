"""DNS rebinding into the special-purpose ranges added in issue 11 (item 7), through the
real process: an allowed name whose answer lies in documentation, benchmarking, SRv6
or unallocated IPv6 space is refused before any byte goes upstream (S3)."""

from __future__ import annotations

import pytest

from tests.conftest import provider_policy
from tests.integration.test_explicit_proxy import connect_status

pytestmark = pytest.mark.integration

ANSWERS = {
    "doc3fff.special.example.com": "3fff::1",  # RFC 9637
    "bench.special.example.com": "2001:2::1",  # RFC 5180
    "srv6.special.example.com": "5f00::1",  # RFC 9602
    "unalloc.special.example.com": "4000::1",  # outside 2000::/3
    "relay.special.example.com": "192.88.99.1",  # RFC 7526
}


@pytest.fixture(scope="module")
def special_sidecar(start_sidecar, provider, dns_server):
    dns_server.records.update({name: [answer] for name, answer in ANSWERS.items()})
    extra = 'allow:\n  - host: "*.special.example.com"\n    ports: [443]\n'
    yield start_sidecar(provider_policy(provider.port, extra=extra))
    for name in ANSWERS:
        dns_server.records.pop(name, None)


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_rebinding_allowed_name_to_special_purpose_range_is_refused(special_sidecar, name):
    status, _ = connect_status(special_sidecar, f"{name}:443")
    assert status == 403
    decision = special_sidecar.wait_for_decision(host=name)
    assert decision["reason"] == "private_address"
    assert decision["decision"] == "block"
