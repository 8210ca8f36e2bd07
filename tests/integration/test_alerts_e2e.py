"""S9 end to end: refusals through the real sidecar reach a real Alertmanager, whose
webhook receiver (run by the test) sees exactly one grouped notification, then the
resolution; and a dead alert sink does not slow refusals down."""

from __future__ import annotations

import json
import ssl
import time
from pathlib import Path

import pytest

from tests.alerts.alerts_helpers import FakeReceiver, write_config
from tests.integration.test_explicit_proxy import connect_status
from tests.support.alertmanager import Alertmanager
from tests.support.ports import free_port

pytestmark = pytest.mark.integration


def _firing(rx: FakeReceiver, status: str) -> list[dict]:
    return [r.json() for r in rx.requests if r.path == "/am" and r.json()["status"] == status]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_flood_of_refusals_through_sidecar_is_one_alertmanager_notification(
    start_sidecar, bg, tmp_path: Path
):
    receiver_port = free_port()
    rx = bg.run(FakeReceiver(default=200).start(receiver_port))
    am = Alertmanager(tmp_path, receiver_port)
    try:
        bg.run(am.ready())
        config = write_config(
            tmp_path,
            f"sinks:\n  - name: am\n    type: alertmanager\n    url: {am.url}\n",
            # An alert is resolved `resolve` after our last resend: on a loaded machine a
            # resend came >3 s late, the alert resolved and re-fired (a second page).
            resend="1s",
            resolve="8s",
        )
        sidecar = start_sidecar(
            extra_args=("--alerts-config", config, "--alert-spool", str(tmp_path / "spool")),
            env={"POD_NAME": "litellm-0", "POD_NAMESPACE": "llm"},
        )
        for _ in range(1000):  # a compromised gateway hammering the metadata service
            status, _ = connect_status(sidecar, "169.254.169.254:80")
            assert status == 403

        def active() -> list[dict]:
            return [a for a in bg.run(am.alerts()) if a["status"]["state"] == "active"]

        _wait(lambda: active(), 15, "the alert in Alertmanager")
        (alert,) = active()
        assert alert["labels"]["reason"] == "metadata_address"
        assert alert["labels"]["severity"] == "critical"
        assert alert["labels"]["pod"] == "litellm-0"
        assert alert["labels"]["namespace"] == "llm"
        _wait(lambda: _firing(rx, "firing"), 15, "a notification at the receiver")
        time.sleep(2.0)  # resends while active must not page again
        firing = _firing(rx, "firing")
        assert len(firing) == 1, json.dumps(firing)[:2000]
        assert int(firing[0]["alerts"][0]["annotations"]["count"]) >= 1

        _wait(lambda: _firing(rx, "resolved") and not active(), 30, "the resolution")
        assert len(_firing(rx, "firing")) == 1
        assert 'egress_sidecar_alerts_sent_total{sink="am"}' in sidecar.metrics()
    finally:
        am.stop()
        bg.run(rx.stop())


def test_dead_alert_sink_does_not_hold_up_refusals(start_sidecar, tmp_path: Path):
    """Delivery is off the request path: with a sink that never answers, every refusal
    is still answered (each CONNECT has a 5 s socket timeout; a blocking sink would hang
    them), logged and counted, while the alert waits for delivery. How fast refusals go
    with a dead sink is the benchmark's business, not a test's."""
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = write_config(
        tmp_path, f"sinks:\n  - name: dead\n    type: alertmanager\n    url: {dead}\n"
    )
    sidecar = start_sidecar(extra_args=("--alerts-config", config))
    mark = len(sidecar.decisions)
    for i in range(50):
        assert connect_status(sidecar, f"flood-{i}.attacker.example:443")[0] == 403
    deadline = time.monotonic() + 10
    while len(sidecar.decisions) - mark < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(sidecar.decisions) - mark == 50
    samples = {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in sidecar.metrics().splitlines())
        if name and not name.startswith("#")
    }
    assert samples['egress_sidecar_alerts_refusals_total{severity="warning"}'] >= 50
    assert samples.get('egress_sidecar_alerts_sent_total{sink="dead"}', 0.0) == 0.0


def test_alert_payloads_carry_no_key_or_body(start_sidecar, bg, tmp_path: Path, provider):
    from tests.support.keys import KEYS

    rx = bg.run(FakeReceiver(default=202).start(0))
    try:
        config = write_config(
            tmp_path,
            f"sinks:\n  - name: hook\n    type: webhook\n    url: {rx.url}/hook\n"
            "    hmac_key_file: " + str(tmp_path / "hmac") + "\n",
            secrets={"hmac": "x" * 32},
        )
        sidecar = start_sidecar(extra_args=("--alerts-config", config))
        import httpx

        context = ssl.create_default_context(cafile=sidecar.ca_cert)
        with httpx.Client(proxy=sidecar.proxy_url, verify=context, timeout=10) as c:
            c.post(
                f"https://api.openai.com:{provider.port}/{KEYS['openai']}/x?key={KEYS['gemini']}",
                headers={"authorization": f"Bearer {KEYS['anthropic']}"},
                content=b"secret prompt body " + KEYS["azure"].encode(),
            )
        _wait(lambda: rx.requests, 15, "a webhook delivery")
        payloads = b"".join(r.body for r in rx.requests)
        assert b"gateway_holds_credential" in payloads or b"path_not_allowed" in payloads
        for value in KEYS.values():
            assert value.encode() not in payloads
        assert b"secret prompt body" not in payloads
    finally:
        bg.run(rx.stop())
