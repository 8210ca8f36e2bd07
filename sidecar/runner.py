"""`egress-sidecar run`: mitmproxy embedded with a trimmed, ordered addon list.

No mitmdump, no default addon set. Only the built-ins a proxy needs, with our
enforcement addon first so it decides before anything else sees the flow, and the
options that fail open (docs/mitmproxy-traps.md) pinned to safe values.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sidecar import settings as settings_mod
from sidecar.decision import iso_time
from sidecar.hostnames import IPAddress
from sidecar.memory import pin_mmap_threshold
from sidecar.settings import Settings, SettingsError

logger = logging.getLogger("egress_sidecar")

EXIT_BAD_POLICY = 2
EXIT_BAD_SETTINGS = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings_mod.add_arguments(parser)


def emit(event: str, **fields: Any) -> None:
    """Operational events (not decisions) as JSON lines on stderr."""
    record = {"time": iso_time(time.time()), "event": event}
    record.update(fields)
    sys.stderr.write(json.dumps(record, separators=(",", ":")) + "\n")
    sys.stderr.flush()


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    # mitmproxy's warnings can quote raw request lines (paths with keys in their query);
    # its errors still reach stderr and the start-up check.
    logging.getLogger("mitmproxy").setLevel(logging.ERROR)
    try:
        settings = settings_mod.resolve(args)
    except SettingsError as exc:
        emit("config_error", error=str(exc))
        return EXIT_BAD_SETTINGS
    from sidecar.policy.loader import PolicyError, load_policy

    try:
        policy = load_policy(settings.policies)
    except PolicyError as exc:
        emit("policy_error", error=str(exc))
        sys.stderr.write(f"egress-sidecar: policy rejected, not starting:\n{exc}\n")
        return EXIT_BAD_POLICY
    pin_mmap_threshold()  # freed body buffers leave the RSS (sidecar/memory.py)
    try:
        return asyncio.run(_serve(settings, policy))
    except SettingsError as exc:
        emit("config_error", error=str(exc))
        return EXIT_BAD_SETTINGS


def mode_specs(settings: Settings, policy: Any) -> tuple[list[str], dict[str, str]]:
    """mitmproxy mode specs for our listeners, and a label for each (for the banner)."""
    specs: list[str] = []
    labels: dict[str, str] = {}
    if settings.proxy_listen is not None:
        host, port = settings.proxy_listen
        spec = f"regular@{host}:{port}"  # mitmproxy splits at the last ':', no brackets
        specs.append(spec)
        labels[spec] = "explicit"
    for host, port in settings.transparent:
        spec = f"transparent@{host}:{port}"
        specs.append(spec)
        labels[spec] = "transparent"
    # settings.dns: our own DNS server (sidecar.dns_server), not a mitmproxy mode (issue 10)
    for reverse in settings.reverse:
        endpoint = policy.provider(reverse.provider)
        if endpoint is None:
            raise SettingsError(f"--reverse {reverse.provider}: no such provider in the policy")
        target = reverse.host or next((h for h in endpoint.hosts if not h.startswith("*.")), None)
        if target is None:
            raise SettingsError(
                f"--reverse {reverse.provider}: its hosts are all wildcards; name one, "
                f"e.g. {reverse.provider}:myresource{endpoint.hosts[0][1:]}@PORT"
            )
        port = 443 if 443 in endpoint.ports else min(endpoint.ports)
        spec = f"reverse:https://{target}:{port}@{reverse.listen_host}:{reverse.listen_port}"
        specs.append(spec)
        labels[spec] = f"reverse:{reverse.provider}"
    return specs, labels


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def upstream_trust_bundle(extra: str | None) -> str | None:
    """mitmproxy's trusted-CA option replaces the public roots; add to them instead (S6)."""
    if extra is None:
        return None
    import certifi

    directory = Path(tempfile.mkdtemp(prefix="egress-sidecar-trust-"))
    bundle = directory / "upstream-ca.pem"
    bundle.write_bytes(
        Path(certifi.where()).read_bytes() + b"\n" + Path(extra).read_bytes() + b"\n"
    )
    return str(bundle)


def own_addresses(settings: Settings) -> set[IPAddress]:
    """Addresses of this host, refused as upstream destinations (no loops, S3)."""
    import ipaddress

    found: set[IPAddress] = set()
    hosts = {socket.gethostname()}
    hosts.update(h for h, _ in ([settings.proxy_listen] if settings.proxy_listen else []))
    hosts.update(r.listen_host for r in settings.reverse)
    for name in hosts:
        try:
            for *_, sockaddr in socket.getaddrinfo(name, None):
                found.add(ipaddress.ip_address(sockaddr[0]))
        except (OSError, ValueError):
            continue
    return {a for a in found if not a.is_unspecified}


async def _serve(settings: Settings, policy: Any) -> int:
    from mitmproxy import options
    from mitmproxy.addons import errorcheck, next_layer, proxyserver, tlsconfig
    from mitmproxy.exceptions import OptionsError
    from mitmproxy.master import Master
    from prometheus_client import CollectorRegistry

    from sidecar.addons import error_pages
    from sidecar.addons.client_tls import ClientTlsFailures
    from sidecar.addons.dlp import RequestDlp
    from sidecar.addons.enforcer import Enforcer, EngineHolder
    from sidecar.addons.informational import install as drop_informational_responses
    from sidecar.addons.request_inspection import RequestInspection
    from sidecar.admin import AdminServer
    from sidecar.dns_server import start_dns_server
    from sidecar.engine import PolicyEngine
    from sidecar.ocsf import to_ocsf
    from sidecar.policy.loader import load_policy
    from sidecar.records import DecisionLog, Metrics, Recorder
    from sidecar.reload import PolicyWatcher
    from sidecar.resolver import ERROR_KINDS, Resolver

    error_pages.install()  # our JSON in place of mitmproxy's own HTML error pages
    specs, labels = mode_specs(settings, policy)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    own = own_addresses(settings)
    holder = EngineHolder(PolicyEngine(policy, own))

    def applied(new_policy: Any) -> None:
        # Validate everything before swapping anything: a raise here is a rejected reload
        # with the last good policy untouched. Reverse listeners name providers and are
        # bound once: a policy that drops one, or moves its target, is refused.
        new_specs, _ = mode_specs(settings, new_policy)
        if new_specs != specs:
            moved = sorted(set(specs) - set(new_specs))
            raise SettingsError(
                f"listener {moved[0]} would change; listeners are fixed at "
                "start (keep its provider's host and port, or restart)"
            )
        engine = PolicyEngine(new_policy, own)
        providers = frozenset(e.provider for e in new_policy.endpoints if e.provider)
        holder.engine = engine
        metrics.set_providers(providers)
        metrics.reloads.labels("success").inc()
        metrics.reload_ok.set(1)
        metrics.policy_loaded_at.set(time.time())
        metrics.policy_endpoints.set(len(new_policy.endpoints))
        emit(
            "policy_loaded",
            digest=new_policy.digest[:12],
            endpoints=len(new_policy.endpoints),
            mode=new_policy.mode.value,
            files=list(new_policy.files),
        )

    def rejected(exc: Exception) -> None:
        metrics.reloads.labels("failure").inc()
        metrics.reload_ok.set(0)
        emit("policy_reload_rejected", error=str(exc), kept=holder.engine.policy.digest[:12])

    applied(policy)
    metrics.reloads.clear()  # the first load is not a reload

    credentials, credential_tasks = _credential_layer(settings, policy, registry, holder)
    decision_log = DecisionLog(
        render=to_ocsf if settings.decision_format == "ocsf" else None,
        on_lost=metrics.decision_lines_lost.inc,
    )
    recorder = Recorder(
        [decision_log.record, metrics.record],
        on_error=lambda m: emit("error", error=m),
        scrub=credentials.scrub,
    )
    alerts = _alert_pipeline(settings, registry)
    recorder.add(alerts.submit)  # S9: every refusal reaches alerting (it drops allows)

    opts = options.Options()
    master = Master(opts, event_loop=asyncio.get_running_loop())
    drop_informational_responses()  # 103 Early Hints lost the final response (HTTP/1)
    for kind in ERROR_KINDS:
        metrics.dns_errors.labels(kind)  # every series exists from the start, at 0
    resolver = Resolver(
        settings.resolver, on_error=lambda kind: metrics.dns_errors.labels(kind).inc()
    )
    from sidecar.addons.h2_guard import H2HostMismatches
    from sidecar.addons.limits import LimitsAddon
    from sidecar.pacing import RefusalPacer

    pacer = RefusalPacer(settings.refusal_rate, on_paced=metrics.refusals_paced.inc)
    from sidecar.addons import usage

    usage_gate, keys_api = usage.build(settings, holder, registry, emit)  # issue 15
    ps = proxyserver.Proxyserver()
    limits = LimitsAddon(settings.limits, recorder, ps)  # issue 10: HTTP/connection limits
    credentials.decode_budget = limits.decoded  # issue 10: decoded bytes, all responses
    enforcer = Enforcer(
        holder,
        resolver,
        recorder,
        credentials,
        pacer,
        H2HostMismatches.install(),
        limit_check=limits.check_request,
        usage_gate=usage_gate.gate,
    )
    # Order matters (docs/mitmproxy-traps.md): ours first; mitmproxy's dns_resolver is never
    # loaded, so no DNS question is forwarded unless our listener resolved it itself.
    try:
        dns_server = await start_dns_server(settings, holder, resolver, recorder, registry)
    except OSError as exc:
        emit("error", error=f"--dns listener could not be bound: {exc}")
        return 1
    from sidecar.addons.responses import ResponseInspection

    master.addons.add(
        enforcer,
        credentials,  # S7: its hooks run right after the enforcer's (addons/credentials.py)
        # After the enforcer, in this order: the request body is read once (issue 13) and
        # its document handed on to the response inspector (issue 14).
        RequestInspection(holder, recorder, registry),
        ResponseInspection(holder, recorder, credentials, registry),
        ps,
        next_layer.NextLayer(),
        limits,
        tlsconfig.TlsConfig(),
        errorcheck.ErrorCheck(repeat_errors_on_stderr=True),
    )
    master.addons.add(ClientTlsFailures(registry, emit))  # issue 20: clients rejecting our CA
    master.addons.add(RequestDlp(holder, credentials.store, registry))  # issue 13: request DLP
    master.addons.add(usage_gate)  # issue 15: last, after the response readers (issue 14)
    Path(settings.ca_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        _configure(opts, settings, specs)
    except OptionsError as exc:
        raise SettingsError(str(exc)) from None

    watcher = PolicyWatcher(
        settings.policies, load_policy, applied, rejected, settings.reload_interval
    )
    watcher.prime()
    reverse_secrets = _reverse_secrets(settings, holder)
    admin = AdminServer(
        registry,
        lambda: {
            "policy_loaded": holder.engine is not None,
            "listeners_bound": ps.is_running
            and all(s.is_running for s in ps.servers)
            and dns_server.is_running,
            # A reverse listener exists to reach its provider: without its key, not ready.
            "reverse_listener_keys": not credentials.store.missing(reverse_secrets()),
        },
        keys=keys_api,
    )
    admin_address = await admin.start(*settings.admin_listen)

    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        emit("signal", signal=sig.name)
        master.shutdown()  # no draining in mitmproxy: stop accepting, finish the loop

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    tasks: list[asyncio.Task[None]] = []

    class Lifecycle:
        async def running(self) -> None:
            listeners: dict[str, list[str]] = {}
            for server in ps.servers:
                label = labels.get(server.mode.full_spec, server.mode.full_spec)
                # A listener can hold a TCP and a UDP socket on one address: list it once.
                addresses = [f"{_bracket(str(a[0]))}:{a[1]}" for a in server.listen_addrs]
                listeners[label] = list(dict.fromkeys(addresses))
            if dns_server.listen_addrs:
                listeners["dns"] = [f"{_bracket(h)}:{p}" for h, p in dns_server.listen_addrs]
            metrics.ready.set(1)
            emit(
                "listening",
                listeners=listeners,
                admin=f"{_bracket(admin_address[0])}:{admin_address[1]}",
                ca_cert=str(Path(settings.ca_dir).absolute() / "mitmproxy-ca-cert.pem"),
                resolver=resolver.nameservers,
                mode=holder.engine.policy.mode.value,
            )
            tasks.append(asyncio.create_task(watcher.run(), name="policy-watcher"))
            tasks.extend(
                asyncio.create_task(t(), name="credential-refresh") for t in credential_tasks
            )
            await alerts.start()

        async def done(self) -> None:
            metrics.ready.set(0)
            for task in tasks:
                task.cancel()
            await alerts.stop()
            await admin.stop()
            await dns_server.stop()

    master.addons.add(Lifecycle())
    try:
        await master.run()
    finally:
        emit("stopped")
    return 0


def _credential_layer(
    settings: Settings, policy: Any, registry: Any, holder: Any
) -> tuple[Any, list[Any]]:
    """Secret store, virtual keys and their refresh loop (every 250 ms: rotation < 1 s)."""
    import os

    from prometheus_client import Counter, Gauge

    from sidecar.addons.credentials import CredentialLayer
    from sidecar.credentials import SecretStore, VirtualKeyError, VirtualKeySource
    from sidecar.credentials.cloud_sources import CloudCredentialSource

    store = SecretStore(
        settings.secrets_dir, environ=os.environ if settings.secrets_from_env else None
    )
    try:
        virtual_keys = VirtualKeySource(settings.virtual_keys) if settings.virtual_keys else None
    except (VirtualKeyError, OSError) as exc:
        raise SettingsError(f"virtual keys file rejected:\n{exc}") from None
    injections = Counter(
        "egress_sidecar_credential_injections",
        "Provider keys added.",
        ["provider"],
        registry=registry,
    )
    changes = Counter(
        "egress_sidecar_secret_changes",
        "Secret value changes seen (rotations), by policy secret name.",
        ["secret"],
        registry=registry,
    )
    available = Gauge(
        "egress_sidecar_secret_available",
        "1 if the secret a provider's credential names has a usable value.",
        ["secret"],
        registry=registry,
    )

    def policy_secrets() -> set[str]:
        return {e.secret_name for e in holder.engine.policy.endpoints if e.secret_name}

    def update_available() -> None:
        names = policy_secrets()
        missing = store.missing(names)
        for name in names:
            available.labels(name).set(0 if name in missing else 1)

    def injected(provider: str | None) -> None:
        injections.labels(provider or "none").inc()  # providers come from the policy

    def changed(names: set[str]) -> None:
        known = policy_secrets()
        for name in names:
            changes.labels(name if name in known else "other").inc()
        emit(
            "secrets_changed",
            secrets=sorted(n for n in names if n in known),
            other=len([n for n in names if n not in known]),
        )

    async def refresh_loop() -> None:
        while True:
            await asyncio.sleep(CredentialLayer.MAX_STALENESS)
            await asyncio.to_thread(layer.refresh)
            if virtual_keys is not None:
                try:
                    if await asyncio.to_thread(virtual_keys.refresh):
                        emit("virtual_keys_loaded")
                except (VirtualKeyError, OSError) as exc:
                    emit("virtual_keys_rejected", error=str(exc)[:500])
            update_available()

    cloud = CloudCredentialSource(store, ca_bundle=upstream_trust_bundle(settings.upstream_ca))
    layer = CredentialLayer(
        store, virtual_keys, on_injected=injected, on_changed=changed, cloud=cloud
    )
    update_available()
    missing = sorted(store.missing(policy_secrets()))
    if missing:
        emit(
            "secrets_missing",
            secrets=missing,
            effect="requests to these providers are refused: credential_unavailable",
        )
    return layer, [refresh_loop]


def _reverse_secrets(settings: Settings, holder: Any) -> Any:
    def names() -> set[str]:
        found = set()
        for reverse in settings.reverse:
            endpoint = holder.engine.policy.provider(reverse.provider)
            if endpoint is not None and endpoint.secret_name is not None:
                found.add(endpoint.secret_name)
        return found

    return names


def _configure(opts: Any, settings: Settings, specs: list[str]) -> None:
    opts.update(
        mode=specs,
        confdir=settings.ca_dir,
        connection_strategy="lazy",  # no upstream connection before our hooks decide
        upstream_cert=False,  # would open upstream connections during the client handshake
        rawtcp=False,  # no uninspected byte streams through an allowed tunnel
        http3=False,  # no QUIC/UDP path
        ssl_insecure=False,
        ssl_verify_upstream_trusted_ca=upstream_trust_bundle(settings.upstream_ca),
        validate_inbound_headers=True,
        keep_host_header=False,
        allow_hosts=[],
        ignore_hosts=[],
        tcp_hosts=[],
        udp_hosts=[],
        store_streamed_bodies=False,
        body_size_limit="64m",
    )


def _alert_pipeline(settings: Settings, registry: Any) -> Any:
    """Alert grouping and delivery; a bad alerts config stops the start like a bad policy."""
    import os

    from sidecar.alerts import AlertPipeline, ConfigError

    pod = {k: v for k in ("POD_NAME", "POD_NAMESPACE", "NODE_NAME") if (v := os.environ.get(k))}
    try:
        return AlertPipeline.from_config(
            settings.alerts_config, spool_dir=settings.alert_spool_dir, registry=registry, pod=pod
        )
    except ConfigError as exc:
        raise SettingsError(f"alerts config rejected:\n{exc}") from None
