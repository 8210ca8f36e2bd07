"""A request mitmproxy itself rejects (400, Transfer-Encoding + Content-Length) is logged as
`allow`: the decision line says allowed, the gateway got 400, nothing went upstream.

Run: .venv/bin/python -m redteam.proxy.te_cl_allow_line
"""
from __future__ import annotations

import socket
import time

from redteam.proxy.harness import Lab, recv_all


def main():
    lab = Lab()
    try:
        p = lab.up.port
        for label, req in (
            ("absolute-form", f"POST https://api.openai.com:{p}/v1/x HTTP/1.1\r\nHost: api.openai.com:{p}\r\n"
                              "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ):
            mark, up_before = len(lab.sc.decisions), len(lab.up.requests)
            s = socket.create_connection(("127.0.0.1", lab.listen), timeout=5)
            s.sendall(req.encode())
            raw = recv_all(s, 2)
            s.close()
            time.sleep(0.5)
            print(f"{label}: gateway got {raw.split(b'\r\n', 1)[0]!r} body={raw.split(b'\r\n\r\n', 1)[-1]!r}")
            print(f"  upstream requests received: {len(lab.up.requests) - up_before}")
            for d in lab.decisions_since(mark):
                print("  DECISION", d["decision"], d["reason"], d["method"], d["path"], d.get("detail"))
        print("metrics:", [l for l in lab.metrics().splitlines() if l.startswith("egress_sidecar_decisions_total")])
    finally:
        lab.close()


if __name__ == "__main__":
    main()
