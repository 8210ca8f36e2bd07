"""Does a response the sidecar generates announce "mitmproxy"? TLS leaf certificate,
h2 error pages, refusal headers.

Run: .venv/bin/python -m redteam.proxy.mitmproxy_banner
"""
from __future__ import annotations

import socket
import ssl
import time

import httpx

from redteam.proxy.harness import Lab, free_port


def main():
    lab = Lab()
    try:
        # 1. the leaf certificate the sidecar presents to the gateway inside a CONNECT tunnel
        s, _ = lab.connect_tunnel(f"api.openai.com:{lab.up.port}")
        der = s.getpeercert(binary_form=True)
        s.close()
        from cryptography import x509
        cert = x509.load_der_x509_certificate(der)
        print("leaf issuer:", cert.issuer.rfc4514_string(), "| subject:", cert.subject.rfc4514_string())
        ca = x509.load_pem_x509_certificate(lab.sidecar_ca.read_bytes())
        print("CA subject:", ca.subject.rfc4514_string())
        # 2. h2 error page: upstream port that refuses connections
        dead = free_port()
        lab.policy_path.write_text(lab.policy_path.read_text().replace(f"ports: [{lab.up.port}]\n    paths", f"ports: [{lab.up.port}, {dead}]\n    paths"))
        time.sleep(1.5)
        ctx = ssl.create_default_context(cafile=str(lab.sidecar_ca))
        with httpx.Client(proxy=f"http://127.0.0.1:{lab.listen}", verify=ctx, http2=True, timeout=10) as c:
            r = c.get(f"https://api.openai.com:{dead}/v1/models")
            print("h2 upstream-down:", r.http_version, r.status_code, dict(r.headers), r.text[:200])
        with httpx.Client(proxy=f"http://127.0.0.1:{lab.listen}", verify=ctx, http2=False, timeout=10) as c:
            r = c.get(f"https://api.openai.com:{dead}/v1/models")
            print("h1 upstream-down:", r.http_version, r.status_code, dict(r.headers), r.text[:200])
        print("decisions:", [(d["decision"], d["reason"], d["port"]) for d in lab.sc.decisions])
    finally:
        lab.close()


if __name__ == "__main__":
    main()
