"""S9: connections / refusals that end without a decision line.

Run: .venv/bin/python -m redteam.proxy.s9_probe
"""
from __future__ import annotations

import socket
import time

from redteam.proxy.harness import Lab, recv_all

PORT = "{port}"
CASES = {
    "junk bytes": b"\x16\x03\x01\x00\x05hello\r\n\r\n",
    "bad request line": b"GARBAGE\r\n\r\n",
    "absolute-form bad host": b"GET http://exa mple.com/ HTTP/1.1\r\nHost: x\r\n\r\n",
    "origin-form no host (explicit)": b"GET /v1/x HTTP/1.1\r\n\r\n",
    "origin-form host provider": b"GET /v1/x HTTP/1.1\r\nHost: api.openai.com:{port}\r\n\r\n",
    "CONNECT bad authority": b"CONNECT api.openai.com HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
    "CONNECT port 0": b"CONNECT api.openai.com:0 HTTP/1.1\r\n\r\n",
    "CONNECT port 99999": b"CONNECT api.openai.com:99999 HTTP/1.1\r\n\r\n",
    "h2 prior knowledge": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    "bad content-length": b"POST http://api.openai.com:{port}/v1/x HTTP/1.1\r\nHost: api.openai.com:{port}\r\nContent-Length: abc\r\n\r\n",
    "TE+CL": b"POST https://api.openai.com:{port}/v1/x HTTP/1.1\r\nHost: api.openai.com:{port}\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "http/1.0 absolute unlisted": b"GET http://evil.example.com/ HTTP/1.0\r\n\r\n",
    "upgrade websocket bogus": b"GET https://api.openai.com:{port}/v1/x HTTP/1.1\r\nHost: api.openai.com:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    "OPTIONS *": b"OPTIONS * HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
    "nothing": b"",
}


def main():
    lab = Lab()
    try:
        for name, data in CASES.items():
            data = data.replace(b"{port}", str(lab.up.port).encode())
            mark = len(lab.sc.decisions)
            s = socket.create_connection(("127.0.0.1", lab.listen), timeout=5)
            if data:
                s.sendall(data)
            raw = recv_all(s, 2)
            s.close()
            time.sleep(0.4)
            decs = lab.decisions_since(mark)
            first = raw.split(b"\r\n", 1)[0]
            body = raw.split(b"\r\n\r\n", 1)[-1][:140]
            flag = "  <-- NO DECISION LINE" if not decs else ""
            print(f"{name:32s} -> {first!r} {body!r} lines={[(d['decision'], d['reason']) for d in decs]}{flag}")
    finally:
        lab.close()


if __name__ == "__main__":
    main()
