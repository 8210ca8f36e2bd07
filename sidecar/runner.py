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
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidecar import settings as settings_mod
from sidecar.decision import Decision, iso_time
from sidecar.hostnames import IPAddress
from sidecar.memory import freeze_startup_objects, pin_mmap_threshold
from sidecar.settings import Settings, SettingsError

if TYPE_CHECKING:  # the runtime imports are in the builder: `--help` loads no mitmproxy
    from mitmproxy.options import Options
    from prometheus_client import CollectorRegistry

    from sidecar.addons.credentials import CredentialLayer
    from sidecar.addons.enforcer import EngineHolder
    from sidecar.admin import AdminServer
    from sidecar.admin_keys import KeysApi
    from sidecar.alerts import AlertPipeline
    from sidecar.dns_server import DnsServer
    from sidecar.policy.model import Policy
    from sidecar.records import Metrics, Recorder
    from sidecar.resolver import Resolver
    from sidecar.worker import WorkerLink

logger = logging.getLogger("egress_sidecar")

EXIT_BAD_POLICY = 2
EXIT_BAD_SETTINGS = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings_mod.add_arguments(parser)


type Background = Callable[[], Coroutine[Any, Any, None]]  # a task run while serving

# Fields every event of this process carries (a worker's number, sidecar/worker.py).
EVENT_FIELDS: dict[str, Any] = {}


def emit(event: str, **fields: Any) -> None:
    """Operational events (not decisions) as JSON lines on stderr."""
    record = {"time": iso_time(time.time()), "event": event}
    record.update(EVENT_FIELDS)
    record.update(fields)
    try:
        sys.stderr.write(json.dumps(record, separators=(",", ":")) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        # stderr's reader is gone (`2>&1 | head -1`) or closed: the event is lost, but
        # raising here stopped the SIGTERM handler before shutdown (the process hung).
        pass


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
    emit("workers", workers=settings.workers.n, reason=settings.workers.reason)
    try:
        if settings.workers.n > 1:
            from sidecar.supervisor import supervise

            return run_loop(supervise(settings, policy))
        return run_loop(serve(settings, policy))
    except SettingsError as exc:
        emit("config_error", error=str(exc))
        return EXIT_BAD_SETTINGS


# For measuring only (docs/performance.md, "uvloop"): "uvloop" runs the process on
# uvloop's event loop instead of asyncio's. Not an option: asyncio's loop is what we ship.
LOOP_ENV = "EGRESS_SIDECAR_BENCH_LOOP"


def run_loop(main_coroutine: Coroutine[Any, Any, int]) -> int:
    import os

    if os.environ.get(LOOP_ENV) == "uvloop":
        import uvloop

        return uvloop.run(main_coroutine)
    return asyncio.run(main_coroutine)


def ensure_interception_ca(ca_dir: str) -> None:
    """The interception CA in `ca_dir`, created (with mitmproxy's names and key size) if
    missing. A supervisor calls it before its workers start: each worker's mitmproxy
    would otherwise create its own CA in the same empty directory at the same moment,
    and a worker left serving certificates of a CA that is not the one on disk fails
    every gateway that trusts the file (seen with 2 workers and a fresh directory).

    An existing CA is only checked for shape here (its key and certificate parse and
    belong together, ~0.05 ms), so that a bad file is a config error that names it
    instead of mitmproxy's traceback; mitmproxy's tlsconfig then loads it once, with
    the full key check (~40 ms)."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from mitmproxy import certs
    from mitmproxy.options import CONF_BASENAME, Options

    directory = Path(ca_dir)
    ca_file = directory / f"{CONF_BASENAME}-ca.pem"
    how = (
        f"point --ca-dir at a directory holding {ca_file.name} (a PEM private key followed "
        "by its CA certificate), or at an empty directory for a new CA"
    )
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not ca_file.exists():
            certs.CertStore.create_store(directory, CONF_BASENAME, Options().key_size)
            return
        raw = ca_file.read_bytes()
    except OSError as exc:
        is_file = directory.exists() and not directory.is_dir()
        why = "not a directory" if is_file else (exc.strerror or str(exc))
        raise SettingsError(f"--ca-dir {ca_dir!r}: {why}; {how}") from None
    try:
        key = load_pem_private_key(raw, None, unsafe_skip_rsa_key_validation=True)
        certificate = x509.load_pem_x509_certificates(raw)[0]
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # No detail from the parser: it may quote the file, and the file holds a key.
        if isinstance(exc, UnsupportedAlgorithm):  # not a ValueError: was a traceback
            what = "its private key uses an algorithm or curve that cannot be loaded"
        elif isinstance(exc, TypeError):
            what = "its private key has a passphrase (mitmproxy reads keys without one)"
        else:
            what = "it is not a PEM private key followed by a certificate"
        raise SettingsError(f"--ca-dir {ca_dir!r}: {ca_file.name}: {what}; {how}") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        # mitmproxy signs every leaf with SHA-256: an Ed25519 or Ed448 CA loads, and
        # then no certificate can be issued (every gateway handshake fails).
        raise SettingsError(
            f"--ca-dir {ca_dir!r}: {ca_file.name}: its private key is not RSA or EC "
            f"(mitmproxy signs certificates only with those); {how}"
        )
    if key.public_key() != certificate.public_key():
        raise SettingsError(
            f"--ca-dir {ca_dir!r}: {ca_file.name}: its private key does not belong to its "
            f"certificate; {how}"
        )


def mode_specs(settings: Settings, policy: Policy) -> tuple[list[str], dict[str, str]]:
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


class PolicySwitch:
    """Swap in a new policy (`applied`), or keep the last good one (`rejected`).

    `report` is off in a worker (its supervisor counts and announces reloads once for
    the pod); `then` runs after validation and before the swap (the supervisor hands
    the policy to its workers there)."""

    def __init__(
        self,
        settings: Settings,
        specs: list[str],
        own: set[IPAddress],
        holder: EngineHolder,
        metrics: Metrics,
        *,
        report: bool = True,
        then: Callable[[Policy], None] | None = None,
    ) -> None:
        self._settings = settings
        self._specs = specs
        self._own = own
        self._holder = holder
        self._metrics = metrics
        self._report = report
        self._then = then
        self._first = True  # the starting policy is a load, not a reload

    def applied(self, new_policy: Policy) -> None:
        from sidecar.engine import PolicyEngine

        # Validate everything before swapping anything: a raise here is a rejected reload
        # with the last good policy untouched. Reverse listeners name providers and are
        # bound once: a policy that drops one, or moves its target, is refused.
        new_specs, _ = mode_specs(self._settings, new_policy)
        if new_specs != self._specs:
            moved = sorted(set(self._specs) - set(new_specs))
            raise SettingsError(
                f"listener {moved[0]} would change; listeners are fixed at "
                "start (keep its provider's host and port, or restart)"
            )
        engine = PolicyEngine(new_policy, self._own)
        if self._then is not None:
            self._then(new_policy)
        providers = frozenset(e.provider for e in new_policy.endpoints if e.provider)
        self._holder.engine = engine
        metrics = self._metrics
        metrics.set_providers(providers)
        if not self._report:
            return
        if self._first:
            self._first = False
        else:
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

    def rejected(self, exc: Exception) -> None:
        self._metrics.reloads.labels("failure").inc()
        self._metrics.reload_ok.set(0)
        kept = self._holder.engine.policy.digest[:12]
        emit("policy_reload_rejected", error=str(exc), kept=kept)


class PodServices:
    """What a pod has once, however many proxy processes serve it: the alert pipeline,
    the DNS listener, the policy watcher, the admin endpoint and the `listening`
    announcement. In one process (`--workers 1`) they live beside mitmproxy; with
    workers, in the supervisor (sidecar/supervisor.py)."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry,
        holder: EngineHolder,
        recorder: Recorder,
        resolver: Resolver,
        switch: PolicySwitch,
    ) -> None:
        from sidecar.policy.loader import load_policy
        from sidecar.reload import PolicyWatcher

        self.settings = settings
        self.registry = registry
        self.holder = holder
        self.recorder = recorder
        self.resolver = resolver
        self.alerts = alert_pipeline(settings, registry)
        recorder.add(self.alerts.submit)  # S9: every refusal reaches alerting (it drops allows)
        self.watcher = PolicyWatcher(
            settings.policies,
            load_policy,
            switch.applied,
            switch.rejected,
            settings.reload_interval,
        )
        self.watcher.prime()
        self.reverse_secrets = _reverse_secrets(settings, holder)
        self.dns_server: DnsServer | None = None
        self.admin: AdminServer | None = None
        self.admin_address: tuple[str, int] = ("", 0)
        self._tasks: list[asyncio.Task[None]] = []

    async def start_dns(self) -> None:
        """Raises OSError when a --dns address cannot be bound."""
        from sidecar.dns_server import start_dns_server

        self.dns_server = await start_dns_server(
            self.settings, self.holder, self.resolver, self.recorder, self.registry
        )

    def dns_running(self) -> bool:
        return self.dns_server is not None and self.dns_server.is_running

    async def start_admin(
        self,
        readiness: Callable[[], dict[str, bool]],
        exposed: CollectorRegistry,
        keys: KeysApi | None,
        info: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        from sidecar.admin import AdminServer

        self.admin = AdminServer(exposed, readiness, keys=keys, info=info)
        self.admin_address = await self.admin.start(*self.settings.admin_listen)

    async def running(self, listeners: dict[str, list[str]], background: list[Background]) -> None:
        if self.dns_server is not None and self.dns_server.listen_addrs:
            listeners["dns"] = [f"{_bracket(h)}:{p}" for h, p in self.dns_server.listen_addrs]
        host, port = self.admin_address
        emit(
            "listening",
            listeners=listeners,
            admin=f"{_bracket(host)}:{port}",
            ca_cert=str(Path(self.settings.ca_dir).absolute() / "mitmproxy-ca-cert.pem"),
            resolver=self.resolver.nameservers,
            mode=self.holder.engine.policy.mode.value,
        )
        self._tasks.append(asyncio.create_task(self.watcher.run(), name="policy-watcher"))
        self._tasks.extend(asyncio.create_task(t(), name="background") for t in background)
        await self.alerts.start()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.alerts.stop()
        if self.admin is not None:
            await self.admin.stop()
        if self.dns_server is not None:
            await self.dns_server.stop()


def addresses_text(addresses: Iterable[tuple[Any, ...]]) -> list[str]:
    """Listener addresses as HOST:PORT, each once (a listener can hold TCP and UDP)."""
    return list(dict.fromkeys(f"{_bracket(str(a[0]))}:{a[1]}" for a in addresses))


class DnsListenerError(Exception):
    """A --dns address could not be bound (exit 1, like a proxy listener)."""


class ProxyProcess:
    """One proxy process, built in `build()` and run by `serve()`: the whole sidecar
    (`worker` None), or one worker of a supervisor (sidecar/worker.py), which leaves
    what the pod has once (PodServices) to its supervisor."""

    def __init__(self, settings: Settings, policy: Policy, worker: WorkerLink | None) -> None:
        self.settings = settings
        self.policy = policy
        self.worker = worker
        self.pod: PodServices | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def build(self) -> None:
        """Everything before mitmproxy runs. Raises SettingsError (exit 64) and
        DnsListenerError (exit 1)."""
        from mitmproxy import options
        from mitmproxy.addons import errorcheck, next_layer, proxyserver, tlsconfig
        from mitmproxy.exceptions import OptionsError
        from mitmproxy.master import Master
        from prometheus_client import CollectorRegistry

        from sidecar.addons import error_pages, usage
        from sidecar.addons.client_tls import ClientTlsFailures
        from sidecar.addons.dlp import RequestDlp
        from sidecar.addons.enforcer import Enforcer, EngineHolder
        from sidecar.addons.h2_guard import H2HostMismatches
        from sidecar.addons.hook_table import install as install_hook_table
        from sidecar.addons.informational import install as drop_informational_responses
        from sidecar.addons.limits import LimitsAddon
        from sidecar.addons.request_inspection import RequestInspection
        from sidecar.addons.responses import ResponseInspection
        from sidecar.engine import PolicyEngine
        from sidecar.ocsf import to_ocsf
        from sidecar.pacing import RefusalPacer
        from sidecar.records import DecisionLog, Metrics, Recorder
        from sidecar.resolver import ERROR_KINDS, Resolver

        settings, worker = self.settings, self.worker
        error_pages.install()  # our JSON in place of mitmproxy's own HTML error pages
        self.specs, self.labels = mode_specs(settings, self.policy)
        self.registry = CollectorRegistry()
        self.metrics = metrics = Metrics(self.registry)
        own = own_addresses(settings)
        self.holder = holder = EngineHolder(PolicyEngine(self.policy, own))
        self.switch = PolicySwitch(
            settings, self.specs, own, holder, metrics, report=worker is None
        )
        self.switch.applied(self.policy)

        self.credentials, self.credential_tasks = credential_layer(
            settings, self.registry, holder, report=worker is None
        )
        render = to_ocsf if settings.decision_format == "ocsf" else Decision.as_log_record
        decision_log = DecisionLog(
            worker.decision_stream if worker else None,
            render=render,
            on_lost=metrics.decision_lines_lost.inc,
        )
        sinks: list[Callable[[Decision], None]] = [decision_log.record, metrics.record]
        if worker is not None:  # alerting is the supervisor's, told before the line is out
            sinks.insert(0, worker.forward_violation)
        self.recorder = recorder = Recorder(
            sinks, on_error=lambda m: emit("error", error=m), scrub=self.credentials.scrub
        )

        opts = options.Options()
        self.master = master = Master(opts, event_loop=asyncio.get_running_loop())
        install_hook_table(master)  # issue 17: hook lookups once, not per event
        drop_informational_responses()  # 103 Early Hints lost the final response (HTTP/1)
        for kind in ERROR_KINDS:
            metrics.dns_errors.labels(kind)  # every series exists from the start, at 0
        resolver = Resolver(
            settings.resolver, on_error=lambda kind: metrics.dns_errors.labels(kind).inc()
        )
        if worker is None:
            self.pod = PodServices(settings, self.registry, holder, recorder, resolver, self.switch)
        else:
            await worker.attach()
        pacer = RefusalPacer(settings.refusal_rate, on_paced=metrics.refusals_paced.inc)
        # issue 15; with workers, the supervisor serves /keys over the same store
        self.usage_gate, self.keys_api = usage.build(
            settings, holder, self.registry, emit, admin=worker is None
        )
        if worker is not None:
            worker.usage_gate = self.usage_gate
        self.ps = proxyserver.Proxyserver()
        limits = LimitsAddon(  # issue 10
            settings.limits,
            recorder,
            self.ps,
            shared=(worker.connection_table, worker.index) if worker is not None else None,
        )
        self.credentials.decode_budget = limits.decoded  # issue 10: decoded bytes, all responses
        enforcer = Enforcer(
            holder,
            resolver,
            recorder,
            self.credentials,
            pacer,
            H2HostMismatches.install(),
            limit_check=limits.check_request,
            usage_gate=self.usage_gate.gate,
        )
        # Order matters (docs/mitmproxy-traps.md): ours first; mitmproxy's dns_resolver is
        # never loaded, so no DNS question is forwarded unless our listener resolved it.
        if self.pod is not None:
            try:
                await self.pod.start_dns()
            except OSError as exc:
                raise DnsListenerError(str(exc)) from None
        master.addons.add(
            enforcer,
            self.credentials,  # S7: its hooks run right after the enforcer's
            # After the enforcer, in this order: the request body is read once (issue 13)
            # and its document handed on to the response inspector (issue 14).
            RequestInspection(holder, recorder, self.registry),
            ResponseInspection(holder, recorder, self.credentials, self.registry),
            self.ps,
            next_layer.NextLayer(),
            limits,
            tlsconfig.TlsConfig(),
            errorcheck.ErrorCheck(repeat_errors_on_stderr=True),
            ClientTlsFailures(self.registry, emit),  # issue 20
            RequestDlp(holder, self.credentials.store, self.registry),  # issue 13
            self.usage_gate,  # issue 15: last, after the response readers
        )
        ensure_interception_ca(settings.ca_dir)
        try:
            _configure(opts, settings, self.specs)
        except OptionsError as exc:
            raise SettingsError(str(exc)) from None
        if self.pod is not None:
            await self.pod.start_admin(self.readiness, self.registry, self.keys_api)
        master.addons.add(Lifecycle(self))

    def listeners_bound(self) -> bool:
        return self.ps.is_running and all(s.is_running for s in self.ps.servers)

    def readiness(self) -> dict[str, bool]:
        assert self.pod is not None
        return {
            "policy_loaded": self.holder.engine is not None,
            "listeners_bound": self.listeners_bound() and self.pod.dns_running(),
            # A reverse listener exists to reach its provider: without its key, not ready.
            "reverse_listener_keys": not self.credentials.store.missing(self.pod.reverse_secrets()),
        }

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self.master.run()
        finally:
            emit("stopped")
        return 0

    def _on_signal(self, sig: signal.Signals) -> None:
        emit("signal", signal=sig.name)
        self.master.shutdown()  # no draining in mitmproxy: stop accepting, finish the loop

    async def running(self) -> None:
        freeze_startup_objects()  # what the proxy built lives as long as it does (memory.py)
        if self.worker is not None:
            self.tasks.extend(
                asyncio.create_task(t(), name="credential-refresh") for t in self.credential_tasks
            )
            await self.worker.running(
                self.switch.applied, self.master.shutdown, self.listeners_bound
            )
            return
        assert self.pod is not None
        listeners: dict[str, list[str]] = {}
        for server in self.ps.servers:
            label = self.labels.get(server.mode.full_spec, server.mode.full_spec)
            listeners[label] = addresses_text(server.listen_addrs)
        self.metrics.ready.set(1)
        await self.pod.running(listeners, self.credential_tasks)

    async def done(self) -> None:
        self.metrics.ready.set(0)
        for task in self.tasks:
            task.cancel()
        if self.pod is not None:
            await self.pod.stop()
        if self.worker is not None:
            await self.worker.stop()


class Lifecycle:
    """mitmproxy addon: the process's `running` and `done` (a plain object, so that
    mitmproxy sees these two hooks and nothing else of ProxyProcess)."""

    def __init__(self, process: ProxyProcess) -> None:
        self._process = process

    async def running(self) -> None:
        await self._process.running()

    async def done(self) -> None:
        await self._process.done()


async def serve(settings: Settings, policy: Policy, worker: WorkerLink | None = None) -> int:
    process = ProxyProcess(settings, policy, worker)
    try:
        await process.build()
    except DnsListenerError as exc:
        emit("error", error=f"--dns listener could not be bound: {exc}")
        return 1
    return await process.serve()


def credential_layer(
    settings: Settings, registry: CollectorRegistry, holder: EngineHolder, *, report: bool = True
) -> tuple[CredentialLayer, list[Background]]:
    """Secret store, virtual keys and their refresh loop (every 250 ms: rotation < 1 s).

    Without `report` (a worker), rotations, availability and virtual key reloads are
    neither counted nor announced: the supervisor's own refresh loop does that once."""
    import os

    from sidecar.addons.credentials import CredentialLayer
    from sidecar.credentials import SecretStore, VirtualKeyError, VirtualKeySource
    from sidecar.credentials.cloud_sources import CloudCredentialSource
    from sidecar.records import Children, CredentialMetrics

    store = SecretStore(
        settings.secrets_dir, environ=os.environ if settings.secrets_from_env else None
    )
    try:
        virtual_keys = VirtualKeySource(settings.virtual_keys) if settings.virtual_keys else None
    except (VirtualKeyError, OSError) as exc:
        raise SettingsError(f"virtual keys file rejected:\n{exc}") from None
    counted = CredentialMetrics(registry)
    injections = Children(counted.injections)

    def policy_secrets() -> set[str]:
        return {e.secret_name for e in holder.engine.policy.endpoints if e.secret_name}

    def update_available() -> None:
        if not report:
            return
        names = policy_secrets()
        missing = store.missing(names)
        for name in names:
            counted.available.labels(name).set(0 if name in missing else 1)

    def injected(provider: str | None) -> None:
        injections(provider or "none").inc()  # providers come from the policy

    def changed(names: set[str]) -> None:
        if not report:
            return
        known = policy_secrets()
        for name in names:
            counted.changes.labels(name if name in known else "other").inc()
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
                    if await asyncio.to_thread(virtual_keys.refresh) and report:
                        emit("virtual_keys_loaded")
                except (VirtualKeyError, OSError) as exc:
                    if report:
                        emit("virtual_keys_rejected", error=str(exc)[:500])
            update_available()

    cloud = CloudCredentialSource(store, ca_bundle=upstream_trust_bundle(settings.upstream_ca))
    layer = CredentialLayer(
        store, virtual_keys, on_injected=injected, on_changed=changed, cloud=cloud
    )
    update_available()
    missing = sorted(store.missing(policy_secrets()))
    if missing and report:
        emit(
            "secrets_missing",
            secrets=missing,
            effect="requests to these providers are refused: credential_unavailable",
        )
    return layer, [refresh_loop]


def _reverse_secrets(settings: Settings, holder: EngineHolder) -> Callable[[], set[str]]:
    def names() -> set[str]:
        found = set()
        for reverse in settings.reverse:
            endpoint = holder.engine.policy.provider(reverse.provider)
            if endpoint is not None and endpoint.secret_name is not None:
                found.add(endpoint.secret_name)
        return found

    return names


def _configure(opts: Options, settings: Settings, specs: list[str]) -> None:
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


def alert_pipeline(settings: Settings, registry: CollectorRegistry) -> AlertPipeline:
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
