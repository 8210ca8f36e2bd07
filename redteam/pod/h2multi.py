"""h2 client: one TLS connection (SNI argv[3]), several streams with the given authorities.
usage: h2multi.py HOST PORT SNI AUTH1[|host] AUTH2[|host] ...   ('-' authority = omit)"""
import json, socket, ssl, sys
import h2.config, h2.connection, h2.events

host, port, sni, *auths = sys.argv[1:]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
raw = socket.create_connection((host, int(port)), timeout=5)
tls = ctx.wrap_socket(raw, server_hostname=None if sni == "-" else sni)
conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False))
conn.initiate_connection(); tls.sendall(conn.data_to_send())
res = {"alpn": tls.selected_alpn_protocol(), "streams": {}}
sid = 1
for spec in auths:
    a, _, h = spec.partition("|")
    hdrs = [(":method", "GET"), (":scheme", "https")]
    if a != "-": hdrs.append((":authority", a))
    hdrs.append((":path", "/v1/models"))
    if h: hdrs.append(("host", h))
    conn.send_headers(sid, hdrs, end_stream=True); tls.sendall(conn.data_to_send())
    st = res["streams"][spec] = {"status": None, "body": b""}
    for _ in range(100):
        try: data = tls.recv(65536)
        except (OSError, ssl.SSLError) as e: data = b""
        if not data: res["terminated"] = True; break
        done = False
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                st["status"] = dict(ev.headers).get(b":status", b"").decode()
                st["reason"] = dict(ev.headers).get(b"x-egress-sidecar-reason", b"").decode()
            if isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                st["body"] += ev.data; conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            if isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)) and ev.stream_id == sid: done = True
            if isinstance(ev, h2.events.ConnectionTerminated): res["terminated"] = True; done = True
        tls.sendall(conn.data_to_send())
        if done: break
    st["body"] = st["body"][:300].decode("latin-1")
    if res.get("terminated"): break
    sid += 2
print(json.dumps(res))
