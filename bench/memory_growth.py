"""Memory growth of the sidecar over many requests: RSS after 10k and after 100k.

    .venv/bin/python -m bench.memory_growth [N M]   (default 10000 100000: ~4 min)

Eight keep-alive clients (a new connection every 500 requests) through the explicit
proxy with key injection on, against the test suite's fake provider (which keeps no
records here). The issue's target: RSS after 100k within 10 % of RSS after 10k.
"""

import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import trustme

from tests.support.fakes import BackgroundLoop, FakeDNS, FakeProvider
from tests.support.keys import KEYS, SecretMount, key_policy
from tests.support.sidecar import SidecarProcess, loopback_args


def main() -> None:
    global done
    bg = BackgroundLoop()
    ca = trustme.CA()
    prov = FakeProvider(bg, ca, ["api.openai.com"]).start()
    prov.received = type("Sink", (list,), {"append": lambda self, x: None})()  # keep no records
    dns = FakeDNS(bg).start()
    dns.records["api.openai.com"] = ["127.0.0.1"]
    tmp = Path(tempfile.mkdtemp())
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    (tmp / "p.yaml").write_text(key_policy(prov.port))
    sec = SecretMount(tmp / "mount", dict(KEYS))
    sc = SidecarProcess(
        [
            *loopback_args(tmp / "p.yaml", tmp / "cadir", dns.port, upstream_ca=tmp / "ca.pem"),
            "--secrets-dir",
            str(sec.root),
        ]
    ).start()

    def rss() -> float:
        for line in open(f"/proc/{sc.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return -1.0

    ctx = ssl.create_default_context(cafile=sc.ca_cert)
    done = 0  # module global, counted by the workers
    lock = threading.Lock()

    def worker(n: int) -> None:
        global done
        with httpx.Client(proxy=sc.proxy_url, verify=ctx, timeout=10) as c:
            for i in range(n):
                if i % 500 == 499:  # new client connections now and then, as a gateway would
                    c.close()
                    c = httpx.Client(proxy=sc.proxy_url, verify=ctx, timeout=10)
                c.get(
                    f"https://api.openai.com:{prov.port}/v1/models",
                    headers={"authorization": "Bearer sk-dummy"},
                )
                with lock:
                    done += 1

    t0 = time.monotonic()
    sizes = []
    counts = [int(a) for a in sys.argv[1:3]] or [10_000, 100_000]
    for target in counts:
        per = (target - done) // 8
        threads = [threading.Thread(target=worker, args=(per,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sizes.append(rss())
        print(
            f"after {done} requests: RSS {sizes[-1]:.1f} MB ({time.monotonic() - t0:.0f} s)",
            flush=True,
        )
    print(f"growth {counts[0]} -> {counts[1]}: {sizes[1] / sizes[0]:.3f}x (target <= 1.10)")
    sc.stop()
    bg.close()


if __name__ == "__main__":
    main()
