"""Helpers of the usage-limit tests (issue 15): tenants with virtual keys, a policy
with a `usage_limits:` section, the openai SDK through the sidecar, the `keys` CLI."""

from __future__ import annotations

import os
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai

from sidecar.credentials import generate_virtual_key, hash_virtual_key
from tests.support.fakes import FakeProvider
from tests.support.keys import key_policy
from tests.support.sidecar import BIN, SidecarProcess

TENANTS = ("team-a", "team-b", "team-c")


def virtual_keys(directory: Path) -> tuple[Path, dict[str, str]]:
    """A virtual keys file granting openai to each tenant; tenant -> its key."""
    keys = {tenant: generate_virtual_key() for tenant in TENANTS}
    lines = ["version: 1", "tenants:"]
    for tenant, key in keys.items():
        lines += [f"  {tenant}:", f"    keys: [{hash_virtual_key(key)}]", "    providers: [openai]"]
    path = directory / "virtual-keys.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path, keys


def usage_policy(port: int, section: str) -> str:
    return key_policy(port) + "usage_limits:\n" + section


def sdk(
    sidecar: SidecarProcess, provider: FakeProvider, key: str, retries: int = 0
) -> openai.OpenAI:
    http = httpx.Client(
        proxy=sidecar.proxy_url,
        verify=ssl.create_default_context(cafile=sidecar.ca_cert),
        timeout=20,
    )
    return openai.OpenAI(
        api_key=key,
        base_url=f"https://api.openai.com:{provider.port}/v1",
        http_client=http,
        max_retries=retries,
    )


def chat(client: openai.OpenAI) -> object:
    return client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )


def keys_cli(
    sidecar: SidecarProcess, state_dir: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN, "keys", *args, "--admin", sidecar.listening["admin"], "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("EGRESS_SIDECAR_")},
    )


def wait_until[T](probe: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
