"""RT-5 (test_h2_body_memory, the finding): 150 HTTP/2 connections from UID 1000 to the
allowed provider, 100 streams each, each POST sending a full 64 KiB flow-control window of
body and never ending: the sidecar buffers the bodies; RSS went from ~94 MB to 721-1233 MB
(documented ceiling 256 MiB, container limit 512Mi) and the gateway's allowed call failed
(DNS listener starved: curl 'Could not resolve host').

RT-5b (test_exhaust, held): exhaustion from UID 1000. Idle/partial connections from two source addresses
(10.77.0.1 over IPv4, fd77::1 over IPv6) fill the sidecar's global connection cap, so the
gateway's next allowed call fails; RSS of the sidecar read from /proc while it happens.

Run: .venv/bin/pytest redteam/pod/test_exhaust.py -s -p no:cacheprovider
"""
import os
import subprocess
import threading
import time

from tests.support.netns import child_python

HOLD = r'''
import socket, ssl, sys, time, threading
mode, n, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ctx = ssl.create_default_context(); ctx.check_hostname=False; ctx.verify_mode=ssl.CERT_NONE
socks, errs = [], 0
def one(i):
    global errs
    try:
        if mode == "v6idle":
            s = socket.create_connection(("fd77::3", 80), timeout=5); socks.append(s)
        elif mode == "v4idle":
            s = socket.create_connection(("10.77.0.3", 80), timeout=5); socks.append(s)
        else:  # intercepted TLS to the allowed provider, 60 KB of headers, no end
            s = socket.create_connection(("10.77.0.2", 443), timeout=8)
            t = ctx.wrap_socket(s, server_hostname="api.openai.com")
            t.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n" + b"x-pad: " + b"A" * 60000)
            socks.append(t)
    except Exception as e:
        errs += 1
ths = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for i, t in enumerate(ths):
    t.start()
    if i % 50 == 49: time.sleep(0.05)
for t in ths: t.join(15)
print("OPEN", len(socks), "ERRS", errs, flush=True)
time.sleep(hold)
'''


def descendants(pid):
    out = {pid}
    changed = True
    while changed:
        changed = False
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
                except OSError:
                    continue
                if ppid in out and int(d) not in out:
                    out.add(int(d)); changed = True
    return out


def rss_kb(pids):
    total = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS"):
                    total = max(total, int(line.split()[1]))
        except OSError:
            pass
    return total


def test_exhaust(world):
    script = world.work / "hold.py"
    script.write_text(HOLD)
    pids = descendants(world.sidecar.proc.pid)
    base = rss_kb(pids)
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kb(pids)); time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    procs = []
    for mode, n in (("tlshdr", 500), ("v6idle", 600)):
        argv = [*world.pod.as_uid(1000), child_python(), str(script), mode, str(n), "12"]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    time.sleep(7)
    mark = world.mark()
    got = world.curl("https://api.openai.com/v1/models", "--cacert", str(world.gateway_ca))
    print("allowed call during the flood:", got.exit, got.status, got.stderr.strip()[:200])
    lines = world.sidecar.decisions[mark.decisions:]
    print("too_many_connections lines since mark:", sum(1 for d in lines if d.get("reason") == "too_many_connections"))
    for p in procs:
        out, err = p.communicate(timeout=40)
        print("holder:", out.strip(), err.strip()[-300:])
    stop.set()
    print(f"sidecar RSS: idle {base/1024:.0f} MB, peak {peak[0]/1024:.0f} MB")
    after = world.curl("https://api.openai.com/v1/models", "--cacert", str(world.gateway_ca))
    print("allowed call after:", after.exit, after.status)
    assert got.status == 200, "allowed traffic failed while the gateway held the connection budget"


def test_h2_body_memory(world):
    import shutil
    from pathlib import Path
    from tests.support.netns import VENV_BIN
    shutil.copy(Path(__file__).with_name("h2flood.py"), world.work / "h2flood.py")
    # the h2 library (pure Python) copied where UID 1000 can read it
    import h2, hpack, hyperframe
    lib = world.work / "lib"
    for mod in (h2, hpack, hyperframe):
        src = Path(mod.__file__).parent
        if not (lib / src.name).exists():
            shutil.copytree(src, lib / src.name)
    os.system(f"chmod -R a+rX {lib}")
    pids = descendants(world.sidecar.proc.pid)
    base = rss_kb(pids); peak = [base]; stop = threading.Event()
    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kb(pids)); time.sleep(0.2)
    threading.Thread(target=sample, daemon=True).start()
    n = int(os.environ.get("RT_H2_CONNS", "150"))
    argv = [*world.pod.as_uid(1000), "env", f"PYTHONPATH={lib}", child_python(), str(world.work / "h2flood.py"), str(n), "100", "65535", "15"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(12)
    got = world.curl("https://api.openai.com/v1/models", "--cacert", str(world.gateway_ca))
    print("allowed call during:", got.exit, got.status, got.stderr.strip()[:200])
    out, err = p.communicate(timeout=60)
    stop.set()
    print("h2flood:", out.strip(), err.strip()[-500:])
    print(f"sidecar RSS: idle {base/1024:.0f} MB, peak {peak[0]/1024:.0f} MB; provider got {len(world.provider.received)}")
    assert got.status == 200, f"allowed call failed during the h2 body flood: {got.stderr.strip()[:200]}"
    assert peak[0] < 256 * 1024, f"RSS peak {peak[0]/1024:.0f} MB over the documented 256 MiB ceiling"
