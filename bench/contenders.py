"""The contenders, all on loopback, each started from the command line it ships with.

How each reaches the fake provider (https on 127.0.0.1:P, certificate for the
provider names and for 127.0.0.1, signed by a throwaway test CA):

- direct:    TLS straight to 127.0.0.1:P, SNI api.openai.com.
- mitmdump:  `mitmdump` with its default addons; the client sends CONNECT 127.0.0.1:P and
             TLS SNI api.openai.com (mitmproxy uses the client's SNI upstream), so no name
             resolution is involved: mitmdump resolves with the OS and the fake names are
             not in /etc/hosts. Upstream trust: the test CA.
- trimmed:   bench/trimmed_master.py, reached like mitmdump.
- sidecar:   `egress-sidecar run`, CONNECT api.openai.com:P (it requires CONNECT host == SNI
             == Host), names resolved through the fake DNS (`--resolver`), a policy made
             from policies/default.yaml with the fake's port and `addresses: [127.0.0.0/8]`
             added to the providers the fake plays.
- squid:     Squid as a CONNECT allowlist (the default policy's hosts, no interception);
             CONNECT api.openai.com:P resolved through a generated `hosts_file`; the client
             does TLS end to end with the provider.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from bench.client import Target
from bench.procs import Procs, free_port, wait_file, wait_json_line, wait_port

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PROVIDER_HOST = "api.openai.com"
FAKE_NAMES = ["api.openai.com", "api.anthropic.com"]
FAKE_PROVIDERS = {"openai": "api.openai.com", "anthropic": "api.anthropic.com"}
CONTENDERS = ["direct", "mitmdump", "trimmed", "sidecar", "squid"]
PROXIES = CONTENDERS[1:]


@dataclasses.dataclass
class Contender:
    name: str
    target: Target
    proc: subprocess.Popen[bytes] | None = None
    reverse_url: str | None = None  # plain-HTTP reverse listener (for wrk), if any
    refuses: bool = False  # has a policy to refuse with (flood scenario)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


@dataclasses.dataclass
class World:
    """The fake internet: test CA, fake provider and DNS (in their own process)."""

    tmp: Path
    ca_file: str
    https_port: int
    dns_port: int


def start_world(procs: Procs, tmp: Path) -> World:
    import json

    import trustme

    ca = trustme.CA()
    ca_file = tmp / "test-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert = ca.issue_cert(*FAKE_NAMES, "127.0.0.1")
    cert_file = tmp / "provider.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    args = [sys.executable, "-m", "bench.fakeserver", "--cert", str(cert_file)]
    for name in FAKE_NAMES:
        args += ["--name", name]
    proc = procs.start(
        "fakeserver", args, cwd=str(REPO), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    import select

    ready, _, _ = select.select([proc.stdout], [], [], 30)
    if not ready:
        raise RuntimeError("fake provider did not start in 30 s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("fake provider exited: " + (tmp / "fakeserver.err").read_text())
    ports = json.loads(line)
    return World(tmp, str(ca_file), ports["https"], ports["dns"])


def direct(world: World) -> Contender:
    return Contender(
        "direct",
        Target(None, f"127.0.0.1:{world.https_port}", PROVIDER_HOST, PROVIDER_HOST, world.ca_file),
        reverse_url=f"https://127.0.0.1:{world.https_port}",
    )


def _ip_target(world: World, port: int, cafile: str) -> Target:
    return Target(
        ("127.0.0.1", port),
        f"127.0.0.1:{world.https_port}",
        PROVIDER_HOST,
        f"{PROVIDER_HOST}:{world.https_port}",
        cafile,
    )


def start_mitmdump(procs: Procs, world: World) -> Contender:
    confdir = world.tmp / "mitmdump-conf"
    port, rport = free_port(), free_port()
    proc = procs.start(
        "mitmdump",
        [
            str(VENV_BIN / "mitmdump"),
            "--mode",
            f"regular@127.0.0.1:{port}",
            "--mode",
            f"reverse:https://127.0.0.1:{world.https_port}@127.0.0.1:{rport}",
            "--set",
            f"confdir={confdir}",
            "--set",
            "connection_strategy=lazy",
            "--set",
            f"ssl_verify_upstream_trusted_ca={world.ca_file}",
        ],
    )
    return Contender(
        "mitmdump",
        _ip_target(world, port, str(confdir / "mitmproxy-ca-cert.pem")),
        proc,
        reverse_url=f"http://127.0.0.1:{rport}",
    )


def start_trimmed(procs: Procs, world: World) -> Contender:
    confdir = world.tmp / "trimmed-conf"
    port, rport = free_port(), free_port()
    proc = procs.start(
        "trimmed",
        [
            sys.executable,
            "-m",
            "bench.trimmed_master",
            "--mode",
            f"regular@127.0.0.1:{port}",
            "--mode",
            f"reverse:https://127.0.0.1:{world.https_port}@127.0.0.1:{rport}",
            "--confdir",
            str(confdir),
            "--upstream-ca",
            world.ca_file,
        ],
        cwd=str(REPO),
    )
    return Contender(
        "trimmed",
        _ip_target(world, port, str(confdir / "mitmproxy-ca-cert.pem")),
        proc,
        reverse_url=f"http://127.0.0.1:{rport}",
    )


def wait_mitm(contender: Contender) -> None:
    assert contender.proc is not None and contender.target.proxy is not None
    wait_port(contender.target.proxy[1], contender.proc)
    assert contender.reverse_url is not None
    wait_port(int(contender.reverse_url.rsplit(":", 1)[1]), contender.proc)
    wait_file(Path(contender.target.cafile), contender.proc)


def bench_policy(world: World) -> tuple[Path, list[str]]:
    """policies/default.yaml, with the fake's port and loopback answers for its providers."""
    policy = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
    for name in FAKE_PROVIDERS:
        entry = policy["providers"][name]
        entry["ports"] = [world.https_port]
        entry["addresses"] = ["127.0.0.0/8"]
    path = world.tmp / "bench-policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    secrets = sorted(
        {
            p["credential"]["secret"]
            for p in policy["providers"].values()
            if isinstance(p.get("credential"), dict)
        }
    )
    return path, secrets


# How egress-sidecar is started: the venv's console script, or (--sidecar-tree DIR) the
# CLI of a source snapshot, e.g. `git archive HEAD | tar -x -C DIR`, so that a long run
# measures one consistent version while the working tree changes.
SIDECAR_TREE: str | None = None


def sidecar_command() -> list[str]:
    if SIDECAR_TREE is None:
        return [str(VENV_BIN / "egress-sidecar")]
    code = (
        f"import sys; sys.path.insert(0, {SIDECAR_TREE!r}); "
        "from sidecar.cli import main; sys.exit(main())"
    )
    return [sys.executable, "-c", code]


@functools.cache
def run_help() -> str:
    """`egress-sidecar run --help`: the CLI contract the harness adapts to."""
    return subprocess.run(
        [*sidecar_command(), "run", "--help"], cwd="/", capture_output=True, text=True, timeout=60
    ).stdout


def _secrets_flag() -> str | None:
    """Key injection: if `run` takes a secrets directory, give it one."""
    match = re.search(r"(--(?:secrets?|credentials?)(?:-dir(?:ectory)?)?)(?![\w-])", run_help())
    return match.group(1) if match else None


def has_dns_listener() -> bool:
    return re.search(r"--dns\b(?!-)", run_help()) is not None


def start_sidecar(
    procs: Procs,
    world: World,
    label: str = "sidecar",
    dns_port: int | None = None,
    workers: int = 1,
) -> Contender:
    """`workers`: --workers N, when the CLI has it (one process unless a scenario is
    about workers, so that figures compare with runs before issue 17)."""
    policy, secrets = bench_policy(world)
    args = [
        *sidecar_command(),
        "run",
        "--policy",
        str(policy),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--ca-dir",
        str(world.tmp / f"{label}-ca"),
        "--resolver",
        f"127.0.0.1:{world.dns_port}",
        "--upstream-ca",
        world.ca_file,
        "--reverse",
        f"openai@127.0.0.1:{free_port()}",  # two :0 listeners clash
    ]
    if "--workers" in run_help():
        args += ["--workers", str(workers)]
    if dns_port is not None:
        args += ["--dns", f"127.0.0.1:{dns_port}"]
        if "--dns-max-qps" in run_help():  # measure the listener, not its rate limit
            args += ["--dns-max-qps", "1000000", "--dns-max-qps-per-source", "1000000"]
    # Key injection: provider keys as files (if `run` takes a directory) and as the
    # development-only EGRESS_SIDECAR_SECRET_<NAME> variables; whichever the CLI reads.
    env = {
        "EGRESS_SIDECAR_SECRET_" + re.sub(r"[-.]", "_", n).upper(): f"sk-bench-{n}" for n in secrets
    }
    flag = _secrets_flag()
    if flag:
        directory = world.tmp / "secrets"
        directory.mkdir(exist_ok=True, mode=0o700)
        for name in secrets:
            (directory / name).write_text(f"sk-bench-{name}\n")
        args += [flag, str(directory)]
    proc = procs.start(label, args, cwd=str(world.tmp), env=env)
    # Generous: with workers, three processes start at once on a possibly busy machine.
    banner = wait_json_line(procs.logdir / f"{label}.err", proc, "event", "listening", 120)
    explicit = banner["listeners"]["explicit"][0]
    host, port = explicit.rsplit(":", 1)
    target = Target(
        (host, int(port)),
        f"{PROVIDER_HOST}:{world.https_port}",
        PROVIDER_HOST,
        f"{PROVIDER_HOST}:{world.https_port}",
        banner["ca_cert"],
    )
    reverse = banner["listeners"].get("reverse:openai", [None])[0]
    return Contender(
        label, target, proc, reverse_url=f"http://{reverse}" if reverse else None, refuses=True
    )


SQUID_CONF = """\
http_port 127.0.0.1:{port}
pid_filename {dir}/squid.pid
cache_log {dir}/cache.log
access_log stdio:{dir}/access.log
coredump_dir {dir}
hosts_file {dir}/hosts
cache deny all
cache_mem 8 MB
max_filedescriptors 8192
shutdown_lifetime 1 seconds
visible_hostname egress-bench
acl CONNECT method CONNECT
acl allowed_ports port 443 {fake_port}
{acls}
http_access deny !CONNECT
http_access deny !allowed_ports
http_access allow CONNECT allowed_hosts
http_access deny all
"""


def squid_binary() -> str | None:
    return shutil.which("squid") or shutil.which("squid", path="/usr/sbin:/usr/local/sbin")


def start_squid(procs: Procs, world: World) -> Contender:
    binary = squid_binary()
    if binary is None:
        raise RuntimeError("squid not installed (apt-get install squid)")
    directory = world.tmp / "squid"
    directory.mkdir(mode=0o777, exist_ok=True)
    directory.chmod(0o777)  # squid drops root privileges to its own user ('proxy')
    world.tmp.chmod(0o711)  # ... which must be able to reach its directory
    (directory / "hosts").write_text("".join(f"127.0.0.1 {n}\n" for n in FAKE_NAMES))
    policy = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
    hosts: list[Any] = []
    for entry in policy.get("providers", {}).values():
        hosts += entry.get("hosts", [])
    domains = sorted({h[1:] if h.startswith("*.") else h for h in hosts})
    acls = "\n".join(f"acl allowed_hosts dstdomain {d}" for d in domains)
    port = free_port()
    conf = directory / "squid.conf"
    conf.write_text(
        SQUID_CONF.format(port=port, dir=directory, fake_port=world.https_port, acls=acls)
    )
    proc = procs.start("squid", [binary, "-N", "-f", str(conf)])
    target = Target(
        ("127.0.0.1", port),
        f"{PROVIDER_HOST}:{world.https_port}",
        PROVIDER_HOST,
        f"{PROVIDER_HOST}:{world.https_port}",
        world.ca_file,
    )
    contender = Contender("squid", target, proc, refuses=True)
    wait_port(port, proc)
    return contender
