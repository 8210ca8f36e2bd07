"""Red-team harness: fake DNS + hostile raw TLS upstream + the real egress-sidecar process.

Usage (from the repo root): .venv/bin/python -m redteam.proxy.<script>
"""
from __future__ import annotations

import json
import os
import random
import socket
import ssl
import string
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trustme  # noqa: E402

from tests.support.fakes import BackgroundLoop, FakeDNS  # noqa: E402
from tests.support.raw_upstream import RawUpstream, keyed  # noqa: E402,F401
from tests.support.sidecar import SidecarProcess  # noqa: E402

rng = random.Random(1337)
KEY = "sk-proj-" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(48))


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def policy(port: int, mode: str = "enforce", extra: str = "") -> str:
    return (
        f"version: 1\nmode: {mode}\nproviders:\n"
        f"  openai:\n    hosts: [api.openai.com]\n    ports: [{port}]\n"
        f"    paths: ['/v1/*']\n    methods: [GET, POST]\n"
        f"    addresses: [127.0.0.0/8]\n"
        f'    credential: {{header: authorization, format: "Bearer {{secret}}", secret: openai}}\n'
        f"allow:\n  - host: other.example.com\n    ports: [{port}]\n    addresses: [127.0.0.0/8]\n"
        + extra
    )


class Lab:
    def __init__(self, respond=None, mode="enforce", reverse=False, extra_args=(), extra_policy="",
                 alerts=None, names=("api.openai.com", "other.example.com", "evil.example.com")):
        self.tmp = Path(tempfile.mkdtemp(prefix="redteam-"))
        self.bg = BackgroundLoop()
        self.ca = trustme.CA()
        self.ca_file = self.tmp / "upstream-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.dns = FakeDNS(self.bg).start()
        for n in names:
            self.dns.records[n] = ["127.0.0.1"]
        self.up = RawUpstream(self.bg, self.ca, list(names),
                              respond or (lambda head: b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"))
        self.up.start()
        sec = self.tmp / "secrets"
        sec.mkdir()
        (sec / "openai").write_text(KEY)
        os.chmod(sec / "openai", 0o600)
        self.policy_path = self.tmp / "policy.yaml"
        self.policy_path.write_text(policy(self.up.port, mode, extra_policy))
        self.listen = free_port()
        self.admin = free_port()
        args = ["--policy", str(self.policy_path), "--listen", f"127.0.0.1:{self.listen}",
                "--admin", f"127.0.0.1:{self.admin}", "--ca-dir", str(self.tmp / "ca"),
                "--resolver", f"127.0.0.1:{self.dns.port}", "--upstream-ca", str(self.ca_file),
                "--secrets-dir", str(sec), "--reload-interval", "0.2"]
        self.reverse_port = None
        if reverse:
            self.reverse_port = free_port()
            args += ["--reverse", f"openai@127.0.0.1:{self.reverse_port}"]
        if alerts:
            p = self.tmp / "alerts.yaml"
            p.write_text(alerts)
            args += ["--alerts-config", str(p), "--alert-spool", str(self.tmp / "spool")]
        self.sc = SidecarProcess([*args, *extra_args]).start()
        self.sidecar_ca = self.tmp / "ca" / "mitmproxy-ca-cert.pem"

    @property
    def pid(self) -> int:
        return self.sc.proc.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return -1

    def client_ctx(self) -> ssl.SSLContext:
        c = ssl.create_default_context(cafile=str(self.sidecar_ca))
        return c

    def connect_tunnel(self, authority: str, sni: str | None = None, timeout=5.0):
        s = socket.create_connection(("127.0.0.1", self.listen), timeout=timeout)
        s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        resp = recv_head(s)
        if not resp.startswith(b"HTTP/1.1 200"):
            return s, resp
        ctx = self.client_ctx()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        t = ctx.wrap_socket(s, server_hostname=sni or authority.rsplit(":", 1)[0])
        return t, resp

    def outputs(self) -> str:
        return "".join(self.sc.stdout_lines) + "".join(self.sc.stderr_lines)

    def metrics(self) -> str:
        import httpx
        return httpx.get(f"http://127.0.0.1:{self.admin}/metrics", timeout=5).text

    def decisions_since(self, mark: int):
        return self.sc.decisions[mark:]

    def close(self):
        try:
            self.sc.stop()
        finally:
            self.up_stop()
            self.dns.stop()
            self.bg.close()

    def up_stop(self):
        try:
            self.up.stop()  # type: ignore[attr-defined]
        except Exception:
            pass


def recv_head(s, limit=65536) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf and len(buf) < limit:
        try:
            d = s.recv(4096)
        except (socket.timeout, TimeoutError):
            break
        if not d:
            break
        buf += d
    return buf


def recv_all(s, timeout=3.0, limit=10_000_000) -> bytes:
    s.settimeout(timeout)
    buf = b""
    while len(buf) < limit:
        try:
            d = s.recv(65536)
        except (socket.timeout, TimeoutError, ssl.SSLError, ConnectionError):
            break
        if not d:
            break
        buf += d
    return buf


def show(label, data):
    if isinstance(data, bytes):
        data = data.decode("latin-1")
    print(f"--- {label} ---")
    print(data.replace(KEY, "<<KEY>>"))


def key_in(data) -> bool:
    if isinstance(data, bytes):
        return KEY.encode() in data
    return KEY in data
