"""A real Alertmanager (Debian's binary) on loopback, for alert tests.

Under CI=true a missing binary fails the test instead of skipping it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.ports import free_port
from tests.support.process import terminate

BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def _require_binary() -> str:
    if BINARY:
        return BINARY
    message = (
        "Alertmanager binary not found: apt-get install -y prometheus-alertmanager "
        "(/usr/bin/prometheus-alertmanager)"
    )
    if os.environ.get("CI"):
        pytest.fail(message + " -- required under CI")
    pytest.skip(message)


AM_CONFIG = """
route:
  receiver: test
  group_by: [alertname, reason, destination]
  group_wait: 300ms
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: test
    webhook_configs:
      - url: http://127.0.0.1:{port}/am
        send_resolved: true
"""


class Alertmanager:
    def __init__(self, tmp: Path, receiver_port: int) -> None:
        binary = _require_binary()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "alertmanager.yml"
        config.write_text(AM_CONFIG.format(port=receiver_port))
        (tmp / "am-data").mkdir()
        self.log = open(tmp / "alertmanager.log", "wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.path={tmp / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
                "--log.level=info",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.logfile = tmp / "alertmanager.log"

    async def ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError("alertmanager exited:\n" + self.logfile.read_text())
                try:
                    async with session.get(self.url + "/-/ready") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError("alertmanager not ready:\n" + self.logfile.read_text())
                await asyncio.sleep(0.05)

    async def alerts(self) -> list[dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.url + "/api/v2/alerts") as resp,
        ):
            assert resp.status == 200
            data: list[dict[str, Any]] = await resp.json()
            return data

    def stop(self) -> None:
        terminate(self.proc)
        self.log.close()
