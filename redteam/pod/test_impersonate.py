"""RT-4 (held): while the sidecar is down, UID 1000 binds its ports (TCP 15001/15020/15053,
UDP 15053, IPv4 and IPv6 wildcards) and answers; probes from outside the pod (the internet
namespace, like a kubelet/Prometheus) and from root inside the pod must get nothing.

Run: .venv/bin/pytest redteam/pod/test_impersonate.py -s -p no:cacheprovider
"""
import subprocess
import time

from tests.support.netns import child_python, in_netns

IMPOSTOR = r'''
import socket, threading, time
def tcp(fam, addr, port):
    s = socket.socket(fam, socket.SOCK_STREAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, port)); s.listen(64)
    while True:
        c, _ = s.accept()
        try: c.sendall(b"HTTP/1.0 200 OK\r\n\r\negress_sidecar_up 1\n")
        except OSError: pass
        c.close()
def udp(fam, addr, port):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET6: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, port))
    while True:
        d, a = s.recvfrom(2048)
        try: s.sendto(d[:2] + b"\x81\x80" + d[4:], a)
        except OSError: pass
for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    for p in (15001, 15020, 15053):
        threading.Thread(target=tcp, args=(fam, addr, p), daemon=True).start()
    threading.Thread(target=udp, args=(fam, addr, 15053), daemon=True).start()
print("READY", flush=True)
time.sleep(40)
'''

PROBE = r'''
import socket, sys, json
res = {}
for host in sys.argv[1:]:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    for p in (15001, 15020, 15053):
        s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(2)
        try:
            s.connect((host, p)); res[f"tcp {host}:{p}"] = repr(s.recv(100))
        except OSError as e: res[f"tcp {host}:{p}"] = "ERR " + type(e).__name__
        s.close()
    u = socket.socket(fam, socket.SOCK_DGRAM); u.settimeout(2)
    try:
        u.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01", (host, 15053))
        res[f"udp {host}:15053"] = repr(u.recv(100))
    except OSError as e: res[f"udp {host}:15053"] = "ERR " + type(e).__name__
print(json.dumps(res))
'''


def test_impostor_cannot_answer(world):
    world.sidecar.stop()
    (world.work / "imp.py").write_text(IMPOSTOR)
    (world.work / "probe_imp.py").write_text(PROBE)
    imp = subprocess.Popen([*world.pod.as_uid(1000), child_python(), str(world.work / "imp.py")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "READY" in imp.stdout.readline()
        outside = world.pod.py(0, open(world.work / "probe_imp.py").read().replace("sys.argv[1:]", '["10.77.0.1", "fd77::1"]'), ns=world.pod.net)
        inside = world.pod.py(0, open(world.work / "probe_imp.py").read().replace("sys.argv[1:]", '["127.0.0.1", "::1", "10.77.0.1"]'))
        print("from the internet ns:", outside.stdout, outside.stderr[-300:])
        print("from root in the pod:", inside.stdout, inside.stderr[-300:])
        answered = [k for out in (outside.stdout, inside.stdout) for k, v in __import__("json").loads(out).items() if not v.startswith("ERR")]
        assert not answered, answered
    finally:
        imp.kill(); imp.wait(10)
