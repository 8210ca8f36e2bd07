"""Probes the "gateway" (and the sidecar UID) run inside the pod namespace.

Run by the system python3 (the venv's interpreter is not reachable for other UIDs),
so standard library only and Python 3.9+ syntax. Every probe prints one JSON object
and exits 0; every network wait is bounded by a few seconds.

    probes.py dns SERVER NAME TYPE [udp|tcp]
    probes.py udp HOST PORT [WAIT]
    probes.py icmp HOST
    probes.py tcp HOST PORT PAYLOAD
    probes.py tls HOST PORT SNI|- PAYLOAD|-   (no certificate check: the attacker's view)
"""

import json
import random
import socket
import ssl
import struct
import sys

WAIT = 3.0
TYPES = {"A": 1, "AAAA": 28, "TXT": 16, "NULL": 10, "CNAME": 5}


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def error(exc):
    return {"error": type(exc).__name__, "errno": getattr(exc, "errno", None)}


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("closed")
        data += chunk
    return data


def read_name(msg, pos):
    while True:
        length = msg[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + length


def dns(server, name, qtype, proto="udp"):
    qid = random.randrange(65536)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0"
    query += struct.pack("!HH", TYPES[qtype], 1)
    try:
        if proto == "udp":
            sock = socket.socket(family(server), socket.SOCK_DGRAM)
            sock.settimeout(WAIT)
            sock.sendto(query, (server, 53))
            msg, peer = sock.recvfrom(4096)
        else:
            sock = socket.create_connection((server, 53), timeout=WAIT)
            sock.sendall(struct.pack("!H", len(query)) + query)
            (length,) = struct.unpack("!H", recv_exact(sock, 2))
            msg, peer = recv_exact(sock, length), sock.getpeername()
    except OSError as exc:
        return error(exc)
    rid, flags, qd, an = struct.unpack_from("!HHHH", msg)
    pos = 12
    for _ in range(qd):
        pos = read_name(msg, pos) + 4
    answers = []
    for _ in range(an):
        pos = read_name(msg, pos)
        rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", msg, pos)
        pos += 10
        rdata = msg[pos : pos + rdlen]
        pos += rdlen
        if rtype == 1:
            answers.append(socket.inet_ntop(socket.AF_INET, rdata))
        elif rtype == 28:
            answers.append(socket.inet_ntop(socket.AF_INET6, rdata))
        else:
            answers.append(f"type{rtype}")
    rcodes = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}
    return {
        "rcode": rcodes.get(flags & 0xF, str(flags & 0xF)),
        "id_ok": rid == qid,
        "answers": answers,
        "peer": [peer[0], peer[1]],
    }


def udp(host, port, wait=WAIT):
    sock = socket.socket(family(host), socket.SOCK_DGRAM)
    sock.settimeout(float(wait))
    try:
        sock.sendto(b"\xc0\x00\x00\x00\x01quic-initial-lookalike", (host, int(port)))
        data, _ = sock.recvfrom(2048)
        return {"reply": data.decode("latin-1")}
    except OSError as exc:
        return error(exc)


def icmp(host):
    v6 = ":" in host
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    echo = b"\x80" if v6 else b"\x08"
    try:
        sock = socket.socket(family(host), socket.SOCK_DGRAM, proto)
        sock.settimeout(WAIT)
        sock.sendto(echo + b"\x00\x00\x00\x12\x34\x00\x01hello", (host, 0))
        sock.recvfrom(200)
        return {"reply": "echo"}
    except OSError as exc:
        return error(exc)


def tcp(host, port, payload):
    try:
        sock = socket.create_connection((host, int(port)), timeout=WAIT)
    except OSError as exc:
        return {"connected": False, **error(exc)}
    sock.settimeout(WAIT)
    data = b""
    try:
        sock.sendall(payload.encode().decode("unicode_escape").encode("latin-1"))
        while len(data) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        return {"connected": True, "reply": data.decode("latin-1"), **error(exc)}
    return {"connected": True, "reply": data.decode("latin-1")}


def tls(host, port, sni, payload):
    """TLS with the given SNI ("-": none), then PAYLOAD ("-": close at once)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        raw = socket.create_connection((host, int(port)), timeout=WAIT)
    except OSError as exc:
        return {"connected": False, **error(exc)}
    local = raw.getsockname()[1]
    raw.settimeout(WAIT)
    try:
        sock = context.wrap_socket(raw, server_hostname=None if sni == "-" else sni)
    except (OSError, ssl.SSLError) as exc:
        raw.close()
        return {"connected": True, "handshake": False, "local_port": local, **error(exc)}
    data = b""
    try:
        if payload != "-":
            sock.sendall(payload.encode().decode("unicode_escape").encode("latin-1"))
            while len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except (OSError, ssl.SSLError) as exc:
        return {
            "connected": True,
            "handshake": True,
            "local_port": local,
            "reply": data.decode("latin-1"),
            **error(exc),
        }
    finally:
        sock.close()
    return {
        "connected": True,
        "handshake": True,
        "local_port": local,
        "reply": data.decode("latin-1"),
    }


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    result = {"dns": dns, "udp": udp, "icmp": icmp, "tcp": tcp, "tls": tls}[command](*args)
    print(json.dumps(result))
