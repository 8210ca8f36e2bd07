"""The enforcer's per-connection state (sidecar/client_connections.py), attack by attack."""

from __future__ import annotations

from sidecar.client_connections import ClientConnections
from sidecar.decision import Decision, Reason, Verdict


def test_second_host_sharing_a_pinned_cdn_address_is_reported() -> None:
    # S5/S7: a second name resolving to the address pinned for the first must not ride
    # the TLS session verified for the first one (with our key in it).
    state = ClientConnections().of("c1")
    state.pin("198.51.100.7", 443, "api.openai.com")
    assert state.other_host_pinned("198.51.100.7", 443, "api.openai.com") is None
    assert state.other_host_pinned("198.51.100.7", 443, "evil.example") == "api.openai.com"
    # Another port is another upstream connection.
    assert state.other_host_pinned("198.51.100.7", 8443, "evil.example") is None
    assert state.pinned_host("198.51.100.7", 443) == "api.openai.com"


def test_lookups_of_unknown_connections_leave_no_state_behind() -> None:
    # A flood of connections that never reach a writing hook must not grow the table.
    connections = ClientConnections()
    for index in range(1000):
        assert connections.peek(f"c{index}") is None
    assert len(connections) == 0


def test_closing_forgets_the_connection_and_returns_its_last_state() -> None:
    connections = ClientConnections()
    state = connections.of("c1")
    state.tunnel = ("api.openai.com", 443)
    state.spoke_http = True
    closed = connections.close("c1")
    assert closed.tunnel == ("api.openai.com", 443) and closed.spoke_http
    assert connections.peek("c1") is None and len(connections) == 0
    # A connection no hook wrote about closes with an empty state, not an error.
    empty = connections.close("never-seen")
    assert empty.tunnel is None and not empty.spoke_http and empty.refused_tunnel is None


def test_refused_tunnel_is_kept_for_the_requests_inside_it() -> None:
    refusal = Decision(
        verdict=Verdict.BLOCK, reason=Reason.HOST_NOT_ALLOWED, rule="default_deny",
        host="models.litellm.cloud", port=443,
    )  # fmt: skip
    connections = ClientConnections()
    connections.of("c1").refused_tunnel = refusal
    state = connections.peek("c1")
    assert state is not None and state.refused_tunnel is refusal


def test_upstream_tls_failure_texts_are_bounded_per_connection() -> None:
    # A hostile upstream (or gateway retrying through it) cannot grow the state.
    state = ClientConnections().of("c1")
    for index in range(100):
        state.note_tls_failure(f"certificate verify failed #{index} " + "x" * 1000)
    assert len(state.tls_failures) == 16
    assert all(len(text) <= 200 for text in state.tls_failures.values())
    state.note_tls_failure("")
    assert "" not in state.tls_failures
