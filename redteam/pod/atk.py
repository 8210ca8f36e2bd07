"""Attack scripts the gateway (UID 1000) runs: stdlib only, bounded waits, one JSON line."""
import json, socket, ssl, sys, time

def out(**kw):
    print(json.dumps(kw), flush=True)

def tcp(host, port, payload=b"", wait=3.0, fam=None):
    fam = fam or (socket.AF_INET6 if ":" in host else socket.AF_INET)
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(wait)
    try:
        s.connect((host, port))
        if payload: s.sendall(payload)
        data = b""
        try:
            while len(data) < 65536:
                c = s.recv(65536)
                if not c: break
                data += c
        except socket.timeout:
            pass
        return {"ok": True, "data": data.decode("latin-1")[:2000]}
    except OSError as e:
        return {"ok": False, "err": repr(e)}
    finally:
        s.close()

def tls(host, port, sni, payloads, wait=3.0, alpn=None, session=None):
    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    if alpn: ctx.set_alpn_protocols(alpn)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(wait)
    res = {}
    try:
        s.connect((host, port))
        t = ctx.wrap_socket(s, server_hostname=sni, session=session)
        res["cert"] = str(t.getpeercert(binary_form=False))
        res["alpn"] = t.selected_alpn_protocol()
        outs = []
        for p in payloads:
            t.sendall(p)
            data = b""
            try:
                while True:
                    c = t.recv(65536)
                    if not c: break
                    data += c
                    if b"\r\n\r\n" in data and (b"content-length: 0" in data.lower() or data.endswith(b"}") or b"pwned" in data): break
            except (socket.timeout, ssl.SSLError, OSError) as e:
                data += repr(e).encode()
            outs.append(data.decode("latin-1")[:1500])
        res["outs"] = outs; res["session"] = t.session is not None; res["reused"] = t.session_reused
        return res
    except (OSError, ssl.SSLError) as e:
        res["err"] = repr(e); return res
    finally:
        s.close()

if __name__ == "__main__":
    exec(sys.argv[1])
