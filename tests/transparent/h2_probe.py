"""An HTTP/2 client for the pod namespace (run by the venv's python as root, since it
needs the h2 library; root's traffic is redirected like the gateway's).

    h2_probe.py HOST PORT SNI AUTHORITY HOST_HEADER|-

TLS with ALPN h2 (no certificate check: the attacker's view), one GET /v1/models with
`:authority` AUTHORITY and, unless "-", a `host` field HOST_HEADER. h2's outbound
checks are off, so it sends what a well-behaved client would not. Prints one JSON
object: the local port, whether a response came, and whether the connection ended.
"""

import json
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events


def main(host: str, port: str, sni: str, authority: str, host_header: str) -> dict:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection((host, int(port)), timeout=5)
    local = raw.getsockname()[1]
    tls = context.wrap_socket(raw, server_hostname=sni)
    config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    headers = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", authority),
        (":path", "/v1/models"),
    ]
    if host_header != "-":
        headers.append(("host", host_header))
    conn.send_headers(1, headers, end_stream=True)
    tls.sendall(conn.data_to_send())
    result = {
        "local_port": local,
        "alpn": tls.selected_alpn_protocol(),
        "status": None,
        "terminated": False,
    }
    for _ in range(200):  # bounded
        try:
            data = tls.recv(65536)
        except (OSError, ssl.SSLError):
            data = b""
        if not data:
            result["terminated"] = True
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                result["status"] = dict(event.headers).get(b":status", b"").decode()
            if isinstance(event, h2.events.ConnectionTerminated):
                result["terminated"] = True
        tls.sendall(conn.data_to_send())
        if result["status"] or result["terminated"]:
            break
    tls.close()
    return result


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:6])))
