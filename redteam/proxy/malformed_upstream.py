"""Hostile upstream answers with malformed HTTP quoting the injected key: where does it go?

Run: .venv/bin/python -m redteam.proxy.malformed_upstream
"""
from __future__ import annotations

import json
import time

from redteam.proxy.harness import KEY, Lab, key_in, recv_all, show
from tests.support.raw_upstream import keyed

VARIANTS = {
    "bad_status_line": lambda k: b"XTTP/1.1 200 " + k.encode() + b"\r\n\r\n",
    "bad_header_line": lambda k: b"HTTP/1.1 200 OK\r\n" + k.encode() + b"\r\ncontent-length: 0\r\n\r\n",
    "bad_header_name": lambda k: b"HTTP/1.1 200 OK\r\nx(" + k.encode() + b"): 1\r\ncontent-length: 0\r\n\r\n",
    "bad_content_length": lambda k: b"HTTP/1.1 200 OK\r\ncontent-length: " + k.encode() + b"\r\n\r\n",
    "bad_chunk_size": lambda k: b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + k.encode() + b"\r\n",
    "bad_trailer": lambda k: (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
                              + k.encode() + b"\r\n\r\n"),
    "obs_fold": lambda k: b"HTTP/1.1 200 OK\r\nx-a: 1\r\n " + k.encode() + b"\r\ncontent-length: 0\r\n\r\n",
    "bad_status_code": lambda k: b"HTTP/1.1 " + k.encode() + b" OK\r\ncontent-length: 0\r\n\r\n",
    "http_version": lambda k: k.encode() + b" 200 OK\r\ncontent-length: 0\r\n\r\n",
    "huge_headers": lambda k: b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-%d: %s\r\n" % (i, k.encode() * 20) for i in range(100)) + b"content-length: 0\r\n\r\n",
    "te_unknown": lambda k: b"HTTP/1.1 200 OK\r\ntransfer-encoding: " + k.encode() + b"\r\n\r\n",
    "ce_unknown": lambda k: b"HTTP/1.1 200 OK\r\ncontent-encoding: " + k.encode() + b"\r\ncontent-length: 3\r\n\r\nabc",
}


def main():
    lab = Lab()
    try:
        for name, fn in VARIANTS.items():
            lab.up.respond = keyed(lambda k, fn=fn: fn(k))
            mark = len(lab.sc.decisions)
            emark = len(lab.sc.stderr_lines)
            s, resp = lab.connect_tunnel(f"api.openai.com:{lab.up.port}")
            s.sendall(f"GET /v1/x HTTP/1.1\r\nHost: api.openai.com:{lab.up.port}\r\n"
                      "Authorization: Bearer sk-dummy\r\nConnection: close\r\n\r\n".encode())
            raw = recv_all(s, 3)
            s.close()
            time.sleep(0.4)
            err = "".join(lab.sc.stderr_lines[emark:])
            decs = lab.decisions_since(mark)
            print(f"\n===== {name}: key_in_gateway_bytes={key_in(raw)} key_in_stderr={key_in(err)} "
                  f"key_in_decisions={key_in(json.dumps(decs))}")
            show("gateway received", raw[:500])
            show("stderr", err[:1500])
            for d in decs:
                print("DECISION", json.dumps(d).replace(KEY, "<<KEY>>"))
        m = lab.metrics()
        print("\nkey in metrics:", key_in(m))
    finally:
        lab.close()


if __name__ == "__main__":
    main()
