"""RT-3b probe: connections over the per-source cap, and idle ones closed by the
first-request timeout: does every accepted connection get exactly one decision line?

Run: .venv/bin/pytest redteam/pod/test_conn_cap_lines.py -s -p no:cacheprovider
"""
import collections
import json
import time

from tests.support.netns import child_python

HOLD = r'''
import socket, json, time
socks, ports = [], []
for i in range(700):
    try:
        s = socket.create_connection(("10.77.0.3", 80), timeout=3)
        socks.append(s); ports.append(s.getsockname()[1])
    except OSError as e:
        ports.append(repr(e))
print(json.dumps(ports), flush=True)
time.sleep(14)
'''


def test_cap_lines(world):
    (world.work / "cap.py").write_text(HOLD)
    mark = world.mark()
    proc = world.run(child_python(), str(world.work / "cap.py"), timeout=60)
    time.sleep(3)
    ports = [p for p in json.loads(proc.stdout.splitlines()[0]) if isinstance(p, int)]
    lines = world.sidecar.decisions[mark.decisions:]
    by_port = collections.Counter()
    for d in lines:
        c = d.get("client", "")
        if c.startswith("10.77.0.1:"):
            by_port[int(c.rsplit(":", 1)[1])] += 1
    reasons = collections.Counter(d["reason"] for d in lines)
    none = [p for p in ports if by_port[p] == 0]
    many = [p for p in ports if by_port[p] > 1]
    print(f"connected {len(ports)}, lines {len(lines)}, reasons {dict(reasons)}, "
          f"without a line {len(none)}, with several {len(many)}")
    print("sample lines:", [json.dumps(d)[:300] for d in lines if d['reason'] == 'too_many_connections'][:2])
    assert not none and not many
