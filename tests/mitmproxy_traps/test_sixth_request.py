"""Canary on mitmproxy itself: the trap docs/mitmproxy-traps.md describes still exists.

If this fails after a mitmproxy upgrade, the upstream-connection limit or the
connection-reuse rule changed: re-read the section "The sixth request stalls" and
decide whether the routing workaround in sidecar/addons/enforcer.py is still needed.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.mitmproxy_traps.sixth_request import reproduce

pytestmark = pytest.mark.integration  # runs mitmproxy and a server on loopback


def test_plain_mitmproxy_reuses_one_connection_without_address_pinning():
    outcome = asyncio.run(reproduce(pin=False, requests=8, wait=20.0))
    assert outcome.answered == 8
    assert outcome.upstream_connections == 1


def test_plain_mitmproxy_stalls_sixth_request_when_server_connect_pins_the_address():
    outcome = asyncio.run(reproduce(pin=True, requests=8, wait=5.0))
    # A new upstream connection per request, and only five at a time per client
    # connection and address: the sixth waits for a slot ...
    assert outcome.answered == 5
    # ... which an idle connection closing frees (not a deadlock: a connection slot).
    assert outcome.released_by_idle_close is True
    assert outcome.upstream_connections == 6
