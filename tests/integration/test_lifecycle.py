"""Start-up, readiness, reload (S8 policy part): as the README says to run it."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from sidecar import cpus
from tests.conftest import provider_policy
from tests.integration.test_explicit_proxy import connect_status
from tests.support.sidecar import BIN, SidecarProcess
from tests.support.workers import worker_pids

pytestmark = pytest.mark.integration


def test_bare_run_starts_on_bundled_default_and_says_where(tmp_path):
    """`egress-sidecar run` with no options: the README's first command. Its workers are
    `--workers auto`'s, and its `workers` event says how many and why (on this machine,
    a cgroup without a CPU quota: one process, "no CPU limit")."""
    env = {"XDG_STATE_HOME": str(tmp_path)}
    sidecar = SidecarProcess([], env=env, workers=None).start()
    try:
        expected = cpus.auto()  # this process's cgroup is the sidecar's
        said = sidecar.wait_for_event("workers")
        assert (said["workers"], said["reason"]) == (expected.n, expected.reason)
        assert "--workers" not in sidecar.args
        assert len(worker_pids(sidecar)) == (0 if expected.n == 1 else expected.n)
        assert sidecar.listening["listeners"]["explicit"] == ["127.0.0.1:15080"]
        assert sidecar.listening["admin"] == "127.0.0.1:15020"
        loaded = sidecar.wait_for_event("policy_loaded")
        assert loaded["files"][0].endswith("policies/default.yaml")
        assert Path(sidecar.ca_cert).is_file()  # CA created where configured
        assert Path(sidecar.ca_cert).parent == tmp_path / "egress-sidecar" / "ca"
        ready = httpx.get(sidecar.admin_url + "/readyz", timeout=5)
        assert ready.status_code == 200 and ready.json()["ready"] is True
        assert httpx.get(sidecar.admin_url + "/healthz", timeout=5).text == "ok\n"
        status, _ = connect_status(sidecar, "models.litellm.cloud:443")
        assert status == 403
    finally:
        assert sidecar.stop() == 0  # SIGTERM: clean shutdown


def test_env_variables_configure_run(tmp_path, provider, dns_server, test_ca_file):
    policy = tmp_path / "p.yaml"
    policy.write_text(provider_policy(provider.port))
    env = {
        "EGRESS_SIDECAR_POLICY": str(policy),
        "EGRESS_SIDECAR_LISTEN": "127.0.0.1:0",
        "EGRESS_SIDECAR_ADMIN": "127.0.0.1:0",
        "EGRESS_SIDECAR_CA_DIR": str(tmp_path / "ca"),
        "EGRESS_SIDECAR_RESOLVER": f"127.0.0.1:{dns_server.port}",
        "EGRESS_SIDECAR_UPSTREAM_CA": test_ca_file,
    }
    sidecar = SidecarProcess([], env=env).start()
    try:
        assert sidecar.listening["resolver"] == [f"127.0.0.1:{dns_server.port}"]
        assert (tmp_path / "ca" / "mitmproxy-ca-cert.pem").is_file()
        status, _ = connect_status(sidecar, f"api.openai.com:{provider.port}")
        assert status == 200
    finally:
        sidecar.stop()


@pytest.mark.parametrize(
    ("case", "text", "expected"),
    [
        ("bad_wildcard", "version: 1\nproviders:\n  x:\n    hosts: ['*.com']\n", ":4:"),
        ("unknown_key", "version: 1\nprovider: {}\n", ":2:"),
    ],
)
def test_bad_policy_stops_start(tmp_path, case, text, expected):
    policy = tmp_path / "bad.yaml"
    policy.write_text(text)
    result = subprocess.run(
        [BIN, "run", "--policy", str(policy), "--ca-dir", str(tmp_path / "ca")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, case
    assert f"{policy}{expected}" in result.stderr
    assert "not starting" in result.stderr


def test_reload_applies_valid_change_and_keeps_last_good(start_sidecar, provider, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(provider_policy(provider.port))
    sidecar = start_sidecar(policy_path=policy)
    status, _ = connect_status(sidecar, "unlisted.example.com:443")
    assert status == 403

    # A valid change: the unlisted host becomes allowed (towards loopback, like the fakes).
    events = len(sidecar.events)
    policy.write_text(
        provider_policy(
            provider.port,
            extra=(
                "allow:\n  - host: unlisted.example.com\n    ports: [443]\n"
                "    addresses: [127.0.0.0/8]\n"
            ),
        )
    )
    loaded = sidecar.wait_for_event("policy_loaded", after=events)
    assert loaded["endpoints"] == 5
    status, _ = connect_status(sidecar, "unlisted.example.com:443")
    assert status == 200

    # A broken change: refused, logged, metric set, the last good policy stays.
    events = len(sidecar.events)
    policy.write_text("version: 1\nproviders:\n  openai:\n    hosts: ['*']\n")
    rejected = sidecar.wait_for_event("policy_reload_rejected", after=events)
    assert "hosts[0]" in rejected["error"]
    assert rejected["kept"] == loaded["digest"]
    metrics = sidecar.metrics()
    assert "egress_sidecar_policy_last_reload_success 0.0" in metrics
    assert 'egress_sidecar_policy_reload_total{result="failure"} 1.0' in metrics
    status, _ = connect_status(sidecar, "unlisted.example.com:443")
    assert status == 200

    # Kubernetes-style replacement (new inode via rename) of a fixed file applies again.
    events = len(sidecar.events)
    staged = tmp_path / ".staged.yaml"
    staged.write_text(provider_policy(provider.port))
    os.replace(staged, policy)
    sidecar.wait_for_event("policy_loaded", after=events)
    status, _ = connect_status(sidecar, "unlisted.example.com:443")
    assert status == 403
    assert "egress_sidecar_policy_last_reload_success 1.0" in sidecar.metrics()


def test_configmap_symlink_swap_is_detected(start_sidecar, provider, tmp_path):
    """A mounted ConfigMap: policy.yaml -> ..data/policy.yaml, ..data -> ..2026_x."""
    mount = tmp_path / "mount"
    mount.mkdir()
    first = mount / "..2026_01"
    first.mkdir()
    (first / "policy.yaml").write_text(provider_policy(provider.port))
    (mount / "..data").symlink_to(first.name)
    (mount / "policy.yaml").symlink_to("..data/policy.yaml")
    sidecar = start_sidecar(policy_path=mount)
    assert connect_status(sidecar, "unlisted.example.com:443")[0] == 403

    second = mount / "..2026_02"
    second.mkdir()
    (second / "policy.yaml").write_text(
        provider_policy(
            provider.port,
            extra=(
                "allow:\n  - host: unlisted.example.com\n    ports: [443]\n"
                "    addresses: [127.0.0.0/8]\n"
            ),
        )
    )
    events = len(sidecar.events)
    tmp_link = mount / "..data_tmp"
    tmp_link.symlink_to(second.name)
    os.replace(tmp_link, mount / "..data")  # the atomic swap the kubelet does
    sidecar.wait_for_event("policy_loaded", after=events)
    deadline = time.monotonic() + 5
    while connect_status(sidecar, "unlisted.example.com:443")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_listener_that_cannot_bind_stops_the_start(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                BIN,
                "run",
                "--listen",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
                "--admin",
                "127.0.0.1:0",
                "--ca-dir",
                str(tmp_path / "ca"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert "address already in use" in result.stderr


def test_admin_port_held_by_another_process_stops_the_start_with_a_clear_error(tmp_path):
    """After a restart, an impostor holding the admin port: a config_error, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                BIN,
                "run",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
                "--ca-dir",
                str(tmp_path / "ca"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 64, result.stderr
    assert f"--admin 127.0.0.1:{port}: cannot listen" in result.stderr
    assert "another process holds this port" in result.stderr
    assert "Traceback" not in result.stderr


def _run_briefly(ca_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`run` on a CA directory, for a start that is expected to stop by itself."""
    args = [BIN, "run", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--workers", "1"]
    return subprocess.run(
        [*args, "--ca-dir", str(ca_dir), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _new_ca(directory: Path) -> bytes:
    from mitmproxy import certs

    certs.CertStore.create_store(directory, "mitmproxy", 2048)
    return (directory / "mitmproxy-ca.pem").read_bytes()


def _pem_blocks(raw: bytes) -> list[bytes]:
    end = b"-----\n"
    blocks, rest = [], raw
    while b"-----BEGIN" in rest:
        start = rest.index(b"-----BEGIN")
        stop = rest.index(b"-----END", start)
        stop = rest.index(end, stop) + len(end)
        blocks.append(rest[start:stop])
        rest = rest[stop:]
    return blocks


@pytest.mark.parametrize("case", ["truncated key", "key of another ca", "not pem"])
def test_tampered_interception_ca_stops_the_start_naming_the_file_without_quoting_it(
    tmp_path, case
):
    """A CA file that is cut short, whose key belongs to another CA, or is not PEM: a
    config_error that names the file and the fix (exit 64), no traceback, and none of
    the file's bytes (it holds a private key) in what the sidecar prints."""
    ca_dir = tmp_path / "ca"
    raw = _new_ca(ca_dir)
    key, certificate = _pem_blocks(raw)
    if case == "truncated key":
        tampered = key[: len(key) // 2] + b"\n" + certificate
    elif case == "key of another ca":
        tampered = _pem_blocks(_new_ca(tmp_path / "other"))[0] + certificate
    else:
        tampered = b"MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" * 8
    (ca_dir / "mitmproxy-ca.pem").write_bytes(tampered)
    result = _run_briefly(ca_dir)
    assert result.returncode == 64, result.stderr
    assert f"--ca-dir '{ca_dir}': mitmproxy-ca.pem: " in result.stderr
    assert "point --ca-dir at a directory holding mitmproxy-ca.pem" in result.stderr
    assert "Traceback" not in result.stderr
    body_lines = [line for line in tampered.split(b"\n") if len(line) > 20 and b"---" not in line]
    for line in body_lines:
        assert line.decode() not in result.stderr + result.stdout


def test_an_existing_interception_ca_is_served_as_is(tmp_path, dns_server, test_ca_file):
    """The start-up check never rewrites a CA the pod was given (a Secret's file)."""
    ca_dir = tmp_path / "ca"
    raw = _new_ca(ca_dir)
    before = (ca_dir / "mitmproxy-ca.pem").stat().st_mtime_ns
    sidecar = SidecarProcess(
        ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--ca-dir", str(ca_dir)]
    ).start()
    try:
        assert (ca_dir / "mitmproxy-ca.pem").read_bytes() == raw
        assert (ca_dir / "mitmproxy-ca.pem").stat().st_mtime_ns == before
    finally:
        sidecar.stop()
