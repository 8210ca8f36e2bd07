"""Clients that fail the TLS handshake with the sidecar (usually: they do not trust its CA).

Not a policy decision (nothing was asked of the policy yet), so no decision line: an
operational event on stderr and a counter. It is the first thing a new setup gets
wrong (`SSL_CERT_FILE` not pointing at a bundle with the sidecar CA), and without this
the sidecar shows nothing at all while the gateway reports a certificate error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mitmproxy import tls
from mitmproxy.proxy import mode_specs
from prometheus_client import CollectorRegistry

from sidecar.records import ClientTlsMetrics

# Bounded label values, from mitmproxy's own wording of the failure.
_CAUSES: tuple[tuple[str, str], ...] = (
    ("does not trust the proxy's certificate", "untrusted_ca"),
    ("may not trust the proxy's certificate", "untrusted_ca"),
    ("disconnected during the handshake", "closed_during_handshake"),
    ("cannot agree on a TLS version", "tls_version"),
)


def failure_cause(error: str | None) -> str:
    for marker, cause in _CAUSES:
        if error and marker in error:
            return cause
    return "other"


def listener_mode(proxy_mode: Any) -> str:
    if isinstance(proxy_mode, mode_specs.TransparentMode):
        return "transparent"
    if isinstance(proxy_mode, mode_specs.ReverseMode):
        return "reverse"
    return "explicit"


class ClientTlsFailures:
    def __init__(self, registry: CollectorRegistry, emit: Callable[..., None]) -> None:
        self._emit = emit
        self.failures = ClientTlsMetrics(registry).failures  # declared in sidecar/records.py

    def tls_failed_client(self, data: tls.TlsData) -> None:
        try:
            client = data.context.client
            cause = failure_cause(client.error)
            mode = listener_mode(client.proxy_mode)
            self.failures.labels(cause, mode).inc()
            host, port, *_ = client.peername
            self._emit(
                "client_tls_failed",
                client=f"{host}:{port}",
                sni=(client.sni or "")[:253] or None,
                mode=mode,
                cause=cause,
                hint="the client rejected the sidecar's certificate: make it trust "
                "mitmproxy-ca-cert.pem from --ca-dir (SSL_CERT_FILE: public roots + that CA)"
                if cause == "untrusted_ca"
                else "TLS handshake with the client failed",
            )
        except Exception:  # noqa: BLE001 - observing a failure must never fail the proxy
            self._emit("error", error="client TLS failure could not be recorded")
