"""Benchmarks: what egress-sidecar costs next to direct, bare mitmproxy and Squid (issue 7).

Run `python -m bench --quick` (smoke) or `python -m bench` (full). See docs/performance.md.
"""
