"""h2 memory probe: N connections x S streams, each POST with B bytes of body, never ended."""
import socket, ssl, sys, threading, time
import h2.config, h2.connection, h2.settings
n, streams, body, hold = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname=False; ctx.verify_mode=ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
held, sent, errs = [], [0], []
def one():
    try:
        raw = socket.create_connection(("10.77.0.2", 443), timeout=10)
        t = ctx.wrap_socket(raw, server_hostname="api.openai.com")
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        c.initiate_connection(); t.sendall(c.data_to_send())
        t.settimeout(0.5)
        try:
            for ev in c.receive_data(t.recv(65536)): pass
        except Exception: pass
        t.settimeout(20)
        t.sendall(c.data_to_send())
        for i in range(streams):
            sid = 1 + 2 * i
            c.send_headers(sid, [(":method", "POST"), (":scheme", "https"), (":authority", "api.openai.com"),
                                 (":path", "/v1/chat/completions"), ("content-type", "application/json")])
            w = min(body, c.local_flow_control_window(sid))
            while w > 0:
                k = min(w, c.max_outbound_frame_size)
                c.send_data(sid, b"A" * k); sent[0] += k; w -= k
            t.sendall(c.data_to_send())
        held.append(t)
    except Exception as e:
        errs.append(repr(e))
ths = [threading.Thread(target=one) for _ in range(n)]
for x in ths: x.start(); time.sleep(0.01)
for x in ths: x.join(30)
print("HELD", len(held), "SENT_MB", sent[0] // 2**20, "ERRS", len(errs), errs[:2], flush=True)
time.sleep(hold)
