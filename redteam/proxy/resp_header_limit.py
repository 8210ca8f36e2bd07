"""Upstream sends response headers far beyond --max-response-header-bytes (64k default).

Run: .venv/bin/python -m redteam.proxy.resp_header_limit
"""
from __future__ import annotations

import json
import sys
import time

from redteam.proxy.harness import Lab, recv_all

SIZES = [int(a) for a in sys.argv[1:]] or [100_000, 1_000_000, 8_000_000]


def main():
    lab = Lab()
    try:
        for total in SIZES:
            n = max(1, total // 1000)
            head = (b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-%d: %s\r\n" % (i, b"a" * 990) for i in range(n))
                    + b"content-length: 2\r\n\r\nok")
            lab.up.respond = lambda h, head=head: head
            mark = len(lab.sc.decisions)
            before = lab.rss_kib()
            s, _ = lab.connect_tunnel(f"api.openai.com:{lab.up.port}")
            s.sendall(f"GET /v1/x HTTP/1.1\r\nHost: api.openai.com:{lab.up.port}\r\nConnection: close\r\n\r\n".encode())
            raw = recv_all(s, 10, limit=50_000_000)
            s.close()
            time.sleep(0.5)
            print(f"head={len(head)} bytes: gateway got {len(raw)} bytes, status={raw[:40]!r}, "
                  f"rss {before}->{lab.rss_kib()} KiB")
            for d in lab.decisions_since(mark):
                print("  DECISION", d["decision"], d["reason"], d.get("detail"))
    finally:
        lab.close()


if __name__ == "__main__":
    main()
