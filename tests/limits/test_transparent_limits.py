"""Issue 10 in the pod: the gateway (UID 1000) in the pod's network namespace, its TCP
redirected to the transparent listener by the real `egress-sidecar init` rules. The
same guarded HTTP layer bounds what it can send there."""

from __future__ import annotations

from tests.transparent.test_pod_netns import (  # noqa: F401 - the pod fixture
    ATTACKER_V4,
    World,
    pytestmark,
    world,
)


def test_transparent_header_bomb_is_refused(world: World) -> None:  # noqa: F811
    """A 100 KB header line in a redirected plain-HTTP connection: 431, decided,
    counted and alerted; the attacker's server sees nothing."""
    mark = world.mark()
    got = world.probe(
        "tcp", ATTACKER_V4, "80", "GET /collect HTTP/1.1\\r\\nHost: x\\r\\nX-Bomb: " + "a" * 100_000
    )
    assert got.get("reply", "").startswith("HTTP/1.1 431"), got
    world.assert_refused_and_alerted(
        mark, "request_headers_too_large", host=ATTACKER_V4, port=80, mode="transparent"
    )
    world.assert_attacker_saw_nothing(mark)
