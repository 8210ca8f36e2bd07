"""`run --workers 2` and usage limits (issues 15, 17): a tenant's limit and its
suspension are the pod's, not each worker's. The attacker is a gateway tenant that
spreads its requests over connections (and so over workers) to get N times its budget,
or keeps using a suspended key on the worker that did not suspend it."""

from __future__ import annotations

import http.client
import json
import re
import ssl
import time
from pathlib import Path

import pytest

from tests.support.sidecar import SidecarProcess
from tests.support.usage import keys_cli, usage_policy, virtual_keys, wait_until
from tests.support.workers import one_connection_per_worker, wait_for

pytestmark = pytest.mark.integration

CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


def _tunnel(sidecar: SidecarProcess, port: int) -> http.client.HTTPSConnection:
    """A CONNECT tunnel to the fake OpenAI, TLS done (so a worker accepted it), no
    request sent: finding a connection on each worker spends none of the budget."""
    host, proxy_port = sidecar.proxy_url.removeprefix("http://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=sidecar.ca_cert)
    conn = http.client.HTTPSConnection(host, int(proxy_port), timeout=20, context=context)
    conn.set_tunnel("api.openai.com", port)
    conn.connect()
    return conn


def _chat(conn: http.client.HTTPSConnection, key: str) -> tuple[int, dict]:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    conn.request("POST", "/v1/chat/completions", body=CHAT, headers=headers)
    response = conn.getresponse()
    body = response.read()
    return response.status, json.loads(body or b"{}")


def _tokens(sidecar: SidecarProcess, direction: str) -> float:
    pattern = rf'^egress_sidecar_tokens_total\{{[^}}]*direction="{direction}"[^}}]*\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, sidecar.metrics(), re.MULTILINE))


def _start(start_sidecar, provider, secrets, tmp_path: Path, tenants: Path, section: str):
    args = ("--secrets-dir", str(secrets.root), "--virtual-keys", str(tenants))
    args += ("--state-dir", str(tmp_path / "state"), "--workers", "2")
    return start_sidecar(usage_policy(provider.port, section), extra_args=args)


def test_tenant_spreading_requests_over_workers_gets_its_limit_once_not_twice(
    start_sidecar, provider, secrets, tmp_path
):
    path, keys = virtual_keys(tmp_path)
    limit = 10
    sidecar = _start(start_sidecar, provider, secrets, tmp_path, path,
                     f"  tenants:\n    team-a: {{requests_per_minute: {limit}}}\n")  # fmt: skip
    key = keys["team-a"]
    # Not across a minute boundary: the last minute's count would start to fade.
    wait_until(lambda: time.time() % 60 < 40, 25, "the first 40 s of a minute")
    held = one_connection_per_worker(sidecar, 2, lambda: _tunnel(sidecar, provider.port))
    before = len(_chats(provider))  # the fake provider is shared by the whole session
    statuses: dict[int, list[int]] = {pid: [] for pid in held}
    for _ in range(limit):  # twice the limit in all, alternating workers
        for pid, conn in held.items():
            statuses[pid].append(_chat(conn, key)[0])
    allowed = sum(s.count(200) for s in statuses.values())
    assert allowed == limit, statuses  # the pod's budget, not each worker's
    for pid, seen in statuses.items():
        assert seen[-1] == 429, (pid, seen)  # each worker refuses once it is spent
    assert len(_chats(provider)) - before == limit
    # Tokens of the allowed chats, summed over the workers (3 input tokens per chat).
    wait_for(lambda: _tokens(sidecar, "input") == 3 * limit, 10, "tokens summed once")


def _chats(provider) -> list:
    return [r for r in provider.received if r.path == "/v1/chat/completions"]


def test_admin_suspension_holds_on_every_worker_until_resumed(
    start_sidecar, provider, secrets, tmp_path
):
    path, keys = virtual_keys(tmp_path)
    sidecar = _start(start_sidecar, provider, secrets, tmp_path, path,
                     "  tenants:\n    team-a: {requests_per_minute: 1000}\n")  # fmt: skip
    key = keys["team-a"]
    held = one_connection_per_worker(sidecar, 2, lambda: _tunnel(sidecar, provider.port))
    for conn in held.values():
        assert _chat(conn, key)[0] == 200
    suspended = keys_cli(sidecar, tmp_path / "state", "suspend", "team-a")
    assert suspended.returncode == 0, suspended.stderr
    for conn in held.values():  # the supervisor wrote it; each worker reads the same store
        status, body = _chat(conn, key)
        assert status == 403 and body["error"]["code"] == "key_suspended", (status, body)
    counted = re.search(
        r'^egress_sidecar_key_suspensions_total\{by="admin"\} (\S+)$',
        sidecar.metrics(),
        re.MULTILINE,
    )
    assert counted is not None and float(counted.group(1)) == 1.0
    resumed = keys_cli(sidecar, tmp_path / "state", "resume", "team-a")
    assert resumed.returncode == 0, resumed.stderr
    for conn in held.values():
        assert _chat(conn, key)[0] == 200
