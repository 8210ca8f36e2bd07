"""End to end with a real Alertmanager (Debian's binary) on loopback, whose webhook
receiver is run by the test: one refusal -> exactly one notification with the right
labels; 1,000 refusals of one kind -> one grouped notification; GET /api/v2/alerts
shows the alert active, then resolved.

Skipped only when the binary is missing and CI is unset; under CI a missing binary fails.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alerts_helpers import FakeReceiver, free_port, pipeline, refusal, run, write_config

from sidecar.decision import Reason
from tests.support.alertmanager import Alertmanager


@pytest.fixture
def receiver_port() -> int:
    return free_port()


@pytest.fixture
def alertmanager(tmp_path: Path, receiver_port: int) -> Iterator[Alertmanager]:
    am = Alertmanager(tmp_path, receiver_port)
    try:
        yield am
    finally:
        am.stop()


def am_pipeline_config(tmp_path: Path, am: Alertmanager, resolve: str = "2s") -> str:
    return write_config(
        tmp_path,
        f"""
sinks:
  - name: am
    type: alertmanager
    url: {am.url}
""",
        resend="1s",
        resolve=resolve,
    )


def notifications(rx: FakeReceiver, status: str | None = None) -> list[dict[str, Any]]:
    out = [r.json() for r in rx.requests if r.path == "/am"]
    return [n for n in out if status is None or n["status"] == status]


async def wait_for(pred: Any, timeout: float, what: str, am: Alertmanager) -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n" + am.logfile.read_text()[-3000:])
        await asyncio.sleep(0.05)


def test_one_refusal_one_notification_active_then_resolved(
    tmp_path: Path, alertmanager: Alertmanager, receiver_port: int
) -> None:
    am = alertmanager

    async def main() -> None:
        rx = await FakeReceiver(default=200).start(receiver_port)
        await am.ready()
        p = pipeline(am_pipeline_config(tmp_path, am), tmp_path / "spool")
        await p.start()
        try:
            p.submit(
                refusal(
                    Reason.METADATA_ADDRESS,
                    host="169.254.169.254",
                    rule="netguard",
                    port=80,
                    path="/latest/meta-data/iam/security-credentials/",
                    method="GET",
                    mode="transparent",
                )
            )

            async def active() -> bool:
                return any(a["status"]["state"] == "active" for a in await am.alerts())

            await wait_for(active, 10, "alert active in Alertmanager", am)
            listed = await am.alerts()
            assert len(listed) == 1
            labels = listed[0]["labels"]
            assert labels["alertname"] == "EgressSidecarRefusal"
            assert labels["severity"] == "critical"
            assert labels["reason"] == "metadata_address"
            assert labels["destination"] == "ip:v4"
            assert labels["namespace"] == "llm" and labels["pod"] == "gw-7d9f"
            assert labels["audit"] == "false"
            assert listed[0]["annotations"]["host"] == "169.254.169.254"
            assert listed[0]["annotations"]["path"] == "/latest/meta-data/iam/security-credentials/"

            async def notified() -> bool:
                return len(notifications(rx, "firing")) >= 1

            await wait_for(notified, 10, "a firing notification", am)
            await asyncio.sleep(1.5)  # > group_interval + our resends: no second page
            firing = notifications(rx, "firing")
            assert len(firing) == 1, firing
            assert len(firing[0]["alerts"]) == 1
            assert firing[0]["alerts"][0]["labels"]["reason"] == "metadata_address"
            assert firing[0]["commonLabels"]["pod"] == "gw-7d9f"

            async def resolved() -> bool:
                return len(notifications(rx, "resolved")) >= 1 and not any(
                    a["status"]["state"] == "active" for a in await am.alerts()
                )

            await wait_for(resolved, 15, "resolution (notification and API)", am)
            done = notifications(rx, "resolved")
            assert len(done) == 1
            assert (
                done[0]["alerts"][0]["labels"]["egress_fingerprint"]
                == (firing[0]["alerts"][0]["labels"]["egress_fingerprint"])
            )
            assert len(notifications(rx, "firing")) == 1
        finally:
            await p.stop()
            await rx.stop()

    run(main(), 60)


def test_flood_of_1000_is_one_grouped_notification(
    tmp_path: Path, alertmanager: Alertmanager, receiver_port: int
) -> None:
    am = alertmanager

    async def main() -> None:
        rx = await FakeReceiver(default=200).start(receiver_port)
        await am.ready()
        p = pipeline(am_pipeline_config(tmp_path, am, resolve="30s"), tmp_path / "spool")
        await p.start()
        try:
            for i in range(1000):
                p.submit(
                    refusal(
                        Reason.HOST_NOT_ALLOWED,
                        host=f"x{i}.models.litellm.cloud",
                        path=f"/exfil/{i}",
                        method="POST",
                    )
                )
                if i % 100 == 0:
                    await asyncio.sleep(0.01)  # spread over a few flusher ticks

            async def notified() -> bool:
                return len(notifications(rx, "firing")) >= 1

            await wait_for(notified, 10, "a firing notification", am)
            await asyncio.sleep(2.0)
            firing = notifications(rx, "firing")
            assert len(firing) == 1, firing
            assert len(firing[0]["alerts"]) == 1
            alert = firing[0]["alerts"][0]
            assert alert["labels"]["destination"] == "litellm.cloud"
            assert alert["labels"]["severity"] == "warning"
            listed = await am.alerts()
            assert len(listed) == 1
            assert listed[0]["annotations"]["count"] == "1000"  # updated by the resends
        finally:
            await p.stop()
            await rx.stop()

    run(main(), 60)
