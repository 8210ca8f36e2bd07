"""PagerDuty, webhook and Slack sinks against local fake receivers: retries, no retry on
400, Retry-After, HMAC verification with the recipe from docs/alerts.md."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest
from alerts_helpers import (
    FakeReceiver,
    metric,
    pipeline,
    refusal,
    run,
    wait_until,
    write_config,
)

from sidecar.alerts.sinks import parse_retry_after, slack_escape
from sidecar.decision import Reason

ROUTING_KEY = "R0UT1NGKEY0000000000000000000000"
HMAC_KEY = "hmac-test-key-0123456789"


def sink_yaml(kind: str, url: str) -> str:
    if kind == "pagerduty":
        return f"""
sinks:
  - name: pd
    type: pagerduty
    url: {url}
    routing_key_file: pd.key
"""
    if kind == "webhook":
        return """
sinks:
  - name: hook
    type: webhook
    url_file: hook.url
    hmac_key_file: hook.key
"""
    return """
sinks:
  - name: chat
    type: slack
    url_file: hook.url
"""


def config(tmp_path: Path, kind: str, url: str, **kw: str) -> str:
    return write_config(
        tmp_path,
        sink_yaml(kind, url),
        secrets={
            "pd.key": ROUTING_KEY,
            "hook.url": url + "/hooks/T0K3N-in-url",
            "hook.key": HMAC_KEY,
        },
        **kw,
    )


SINK = {"pagerduty": "pd", "webhook": "hook"}


def verify_documented(headers: dict[str, str], body: bytes, key: str) -> bool:
    """The receiver-side recipe exactly as docs/alerts.md states it."""
    ts = headers["X-Egress-Sidecar-Timestamp"]
    sig = headers["X-Egress-Sidecar-Signature"]
    if abs(time.time() - int(ts)) > 300:
        return False
    expected = "v1=" + hmac.new(key.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, sig)


@pytest.mark.parametrize("kind", ["pagerduty", "webhook"])
def test_202_delivers_once(tmp_path: Path, kind: str) -> None:
    async def main() -> None:
        rx = await FakeReceiver(default=202).start()
        p = pipeline(config(tmp_path, kind, rx.url), tmp_path / "spool")
        await p.start()
        try:
            p.submit(refusal(Reason.METADATA_ADDRESS, host="169.254.169.254", rule="netguard"))
            await rx.wait_for(1)
            await asyncio.sleep(0.2)
            assert len(rx.requests) == 1
            req = rx.requests[0]
            body = req.json()
            if kind == "pagerduty":
                assert req.path == "/v2/enqueue"
                assert body["routing_key"] == ROUTING_KEY
                assert body["event_action"] == "trigger"
                assert body["payload"]["severity"] == "critical"
                assert body["payload"]["class"] == "metadata_address"
                assert body["payload"]["custom_details"]["evidence"]["host"] == "169.254.169.254"
                assert body["dedup_key"] == req.headers["X-Egress-Sidecar-Dedup-Key"]
            else:
                assert req.path == "/hooks/T0K3N-in-url"
                assert verify_documented(req.headers, req.body, HMAC_KEY)
                assert not verify_documented(req.headers, req.body + b" ", HMAC_KEY)
                assert not verify_documented(req.headers, req.body, "wrong-key")
                assert body["kind"] == "trigger" and body["status"] == "firing"
                assert body["alert"]["severity"] == "critical"
            await wait_until(
                lambda: metric(p, "egress_sidecar_alerts_sent_total", sink=SINK[kind]) == 1,
                2,
                "sent metric",
            )
            assert metric(p, "egress_sidecar_alerts_queue_depth", sink=SINK[kind]) == 0
        finally:
            await p.stop()
            await rx.stop()

    run(main(), 20)


@pytest.mark.parametrize("kind", ["pagerduty", "webhook"])
def test_429_honours_retry_after(tmp_path: Path, kind: str) -> None:
    async def main() -> None:
        rx = await FakeReceiver([(429, {"Retry-After": "1"})], default=202).start()
        p = pipeline(config(tmp_path, kind, rx.url), tmp_path / "spool")
        await p.start()
        try:
            p.submit(refusal())
            await rx.wait_for(2, timeout=10)
            gap = rx.requests[1].at - rx.requests[0].at
            assert gap >= 0.95, gap  # waited what the receiver asked, not the 20 ms backoff
            assert [r.status for r in rx.requests] == [429, 202]
            assert rx.requests[0].body == rx.requests[1].body or kind == "webhook"
            assert metric(p, "egress_sidecar_alerts_retried_total", sink=SINK[kind]) == 1
            await wait_until(
                lambda: metric(p, "egress_sidecar_alerts_sent_total", sink=SINK[kind]) == 1,
                2,
                "sent",
            )
        finally:
            await p.stop()
            await rx.stop()

    run(main(), 20)


@pytest.mark.parametrize("kind", ["pagerduty", "webhook"])
def test_500_then_202_retries_with_backoff(tmp_path: Path, kind: str) -> None:
    async def main() -> None:
        rx = await FakeReceiver([(500, {}), (503, {})], default=202).start()
        p = pipeline(config(tmp_path, kind, rx.url), tmp_path / "spool")
        await p.start()
        try:
            p.submit(refusal())
            await rx.wait_for(3, timeout=10)
            await asyncio.sleep(0.3)
            assert [r.status for r in rx.requests] == [500, 503, 202]
            bodies = {json.loads(r.body).get("dedup_key") for r in rx.requests}
            assert len(bodies) == 1  # same dedup key on every attempt
            assert metric(p, "egress_sidecar_alerts_retried_total", sink=SINK[kind]) == 2
            assert metric(p, "egress_sidecar_alerts_sent_total", sink=SINK[kind]) == 1
        finally:
            await p.stop()
            await rx.stop()

    run(main(), 20)


@pytest.mark.parametrize("kind", ["pagerduty", "webhook"])
@pytest.mark.parametrize("status", [400, 401, 404, 413, 301])
def test_client_error_is_never_retried(tmp_path: Path, kind: str, status: int) -> None:
    async def main() -> None:
        rx = await FakeReceiver(default=status).start()
        p = pipeline(config(tmp_path, kind, rx.url), tmp_path / "spool")
        await p.start()
        try:
            p.submit(refusal())
            await rx.wait_for(1)
            await asyncio.sleep(0.5)  # 25 backoff periods: a retry would have happened
            assert len(rx.requests) == 1
            assert (
                metric(p, "egress_sidecar_alerts_dropped_total", sink=SINK[kind], reason="rejected")
                == 1
            )
            assert metric(p, "egress_sidecar_alerts_retried_total", sink=SINK[kind]) == 0
            assert metric(p, "egress_sidecar_alerts_queue_depth", sink=SINK[kind]) == 0
            assert list((tmp_path / "spool" / SINK[kind]).iterdir()) == []
        finally:
            await p.stop()
            await rx.stop()

    run(main(), 20)


def test_pagerduty_trigger_then_resolve_with_one_dedup_key(tmp_path: Path) -> None:
    async def main() -> None:
        rx = await FakeReceiver(default=202).start()
        p = pipeline(
            config(tmp_path, "pagerduty", rx.url, resolve="300ms", resend="100ms"),
            tmp_path / "spool",
        )
        await p.start()
        try:
            for _ in range(50):
                p.submit(
                    refusal(
                        Reason.DNS_TUNNEL_SUSPECTED, host="abc.t.evil.example", rule="default_deny"
                    )
                )
            await rx.wait_for(2, timeout=5)
            await asyncio.sleep(0.3)
            bodies = [r.json() for r in rx.requests]
            # PagerDuty gets trigger and resolve only (updates would only add log entries)
            assert [b["event_action"] for b in bodies] == ["trigger", "resolve"]
            assert bodies[0]["dedup_key"] == bodies[1]["dedup_key"]
            assert bodies[1]["routing_key"] == ROUTING_KEY
        finally:
            await p.stop()
            await rx.stop()

    run(main(), 20)


def test_slack_message_is_escaped(tmp_path: Path) -> None:
    async def main() -> None:
        rx = await FakeReceiver(default=200).start()
        p = pipeline(config(tmp_path, "slack", rx.url), tmp_path / "spool")
        await p.start()
        try:
            p.submit(
                refusal(host="evil.example", path="/<!channel> `x` <http://a|b>", detail="<!here>")
            )
            await rx.wait_for(1)
            text = rx.requests[0].json()["text"]
            assert "<!channel>" not in text and "<http" not in text
            assert "&lt;!channel&gt;" in text
        finally:
            await p.stop()
            await rx.stop()

    run(main(), 20)


def test_retry_after_parsing() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert parse_retry_after(date, now=1445412480 - 10) == pytest.approx(10.0)
    assert slack_escape("a<b>&`") == "a&lt;b&gt;&amp;'"
