"""Is --max-response-header-bytes applied in each mode? 200 kB of response headers.

Run: .venv/bin/python -m redteam.proxy.resp_header_limit_modes
"""
from __future__ import annotations

import socket
import ssl
import time

from redteam.proxy.harness import Lab, recv_all

HEAD = (b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-%d: %s\r\n" % (i, b"a" * 990) for i in range(200))
        + b"content-length: 2\r\n\r\nok")


def main():
    lab = Lab(respond=lambda h: HEAD, reverse=True)
    port = lab.up.port
    try:
        runs = {}
        # 1. CONNECT tunnel
        s, _ = lab.connect_tunnel(f"api.openai.com:{port}")
        s.sendall(f"GET /v1/x HTTP/1.1\r\nHost: api.openai.com:{port}\r\nConnection: close\r\n\r\n".encode())
        runs["explicit CONNECT"] = recv_all(s, 5, limit=10**8)
        s.close()
        # 2. absolute-form https through the explicit proxy
        s = socket.create_connection(("127.0.0.1", lab.listen))
        s.sendall(f"GET https://api.openai.com:{port}/v1/x HTTP/1.1\r\nHost: api.openai.com:{port}\r\nConnection: close\r\n\r\n".encode())
        runs["explicit absolute-form"] = recv_all(s, 5, limit=10**8)
        s.close()
        # 3. reverse listener
        s = socket.create_connection(("127.0.0.1", lab.reverse_port))
        s.sendall(b"GET /v1/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        runs["reverse"] = recv_all(s, 5, limit=10**8)
        s.close()
        time.sleep(0.5)
        for k, v in runs.items():
            print(f"{k:25s}: gateway got {len(v):7d} bytes, status {v[:15]!r} (head is {len(HEAD)} bytes, limit 65536)")
        for d in lab.sc.decisions:
            print("  DECISION", d["mode"], d["decision"], d["reason"], d.get("detail"))
    finally:
        lab.close()


if __name__ == "__main__":
    main()
