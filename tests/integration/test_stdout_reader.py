"""Decision lines on stdout never hold the proxy hostage (`egress-sidecar run | head -1`).

The attack (or accident): whatever reads the sidecar's stdout stops reading (a stuck
log shipper) or goes away (`| head -1`). Before, a full pipe blocked the event loop in
`write`: every connection stalled and SIGTERM was never handled (the process had to be
killed). Now lines that cannot be written are counted
(`egress_sidecar_decision_lines_lost_total`) and the proxy keeps working and stops on
SIGTERM.
"""

from __future__ import annotations

import fcntl
import json
import re
import socket
import time

import httpx
import pytest

from tests.support.sidecar import SidecarProcess, loopback_args

pytestmark = pytest.mark.integration

F_SETPIPE_SZ = 1031  # Linux
LONG_PATH = "/" + "x" * 3000  # logged in the decision line: a few requests fill a pipe


class StalledStdoutReader(SidecarProcess):
    """Reads nothing from stdout; the pipe stays open and fills up."""

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fcntl.fcntl(self.proc.stdout.fileno(), F_SETPIPE_SZ, 4096)


class GoneStdoutReader(SidecarProcess):
    """Closes its end of the stdout pipe at once, as `| head -1` does after a line."""

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        self.proc.stdout.close()


class GoneStderrReader(SidecarProcess):
    """Reads stderr up to the `listening` event, then closes its end (`2>&1 | head`)."""

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)
            if '"event":"listening"' in line:
                self._listening.put(json.loads(line))
                break
        self.proc.stderr.close()


def _refused_request(sidecar: SidecarProcess, n: int) -> bytes:
    host, port = sidecar.listener("explicit").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            f"GET http://evil{n}.example.com{LONG_PATH} HTTP/1.1\r\n"
            f"Host: evil{n}.example.com\r\nConnection: close\r\n\r\n".encode()
        )
        return conn.recv(64)


def _lost(sidecar: SidecarProcess) -> float:
    text = httpx.get(sidecar.admin_url + "/metrics", timeout=10).text
    found = re.search(r"^egress_sidecar_decision_lines_lost_total (\S+)$", text, re.M)
    assert found, "the lost-lines counter is exported"
    return float(found.group(1))


def _sigterm_exits(sidecar: SidecarProcess) -> int:
    assert sidecar.proc is not None
    sidecar.proc.terminate()
    try:
        return sidecar.proc.wait(20)
    except Exception:
        sidecar.proc.kill()
        sidecar.proc.wait(5)
        raise AssertionError("the sidecar hung after SIGTERM") from None


# A stalled reader's lines wait in a bounded queue (8 MiB: none lost here); a gone
# reader's are counted as lost.
@pytest.mark.parametrize(
    ("reader", "lost"), [(StalledStdoutReader, False), (GoneStdoutReader, True)]
)
def test_stdout_reader_that_stops_reading_neither_blocks_traffic_nor_sigterm(
    reader, lost, tmp_path, dns_server, test_ca_file
):
    sidecar = reader(
        loopback_args(_policy(tmp_path), tmp_path / "ca", dns_server.port, upstream_ca=test_ca_file)
    ).start()
    try:
        for n in range(60):  # far more than a 4 KiB pipe holds
            assert _refused_request(sidecar, n).startswith(b"HTTP/1.1 403")
        deadline = time.monotonic() + 20
        while lost and _lost(sidecar) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (_lost(sidecar) > 0) is lost
        assert _sigterm_exits(sidecar) == 0
    finally:
        sidecar.stop()


def _policy(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nallow:\n  - {host: api.example.com, ports: [443]}\n")
    return path


def test_sidecar_whose_stderr_reader_is_gone_still_stops_on_sigterm(
    tmp_path, dns_server, test_ca_file
):
    """The SIGTERM handler writes a `signal` event to stderr before it shuts down; with
    stderr's reader gone that write raised, the shutdown never ran and the process had
    to be killed (58 sidecars outlived one busy test run this way)."""
    sidecar = GoneStderrReader(
        loopback_args(_policy(tmp_path), tmp_path / "ca", dns_server.port, upstream_ca=test_ca_file)
    ).start()
    try:
        assert _refused_request(sidecar, 0).startswith(b"HTTP/1.1 403")
        assert _sigterm_exits(sidecar) == 0
    finally:
        sidecar.stop()
