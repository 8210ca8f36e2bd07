"""`egress-sidecar init`: install the pod's iptables/ip6tables rules (init container).

What the rules do, for every UID except the sidecar's (``--proxy-uid``, default 1337):

* nat OUTPUT (chain ``EGRESS_SIDECAR_OUTPUT``)
  - the sidecar's own traffic returns untouched;
  - DNS (UDP and TCP port 53, to any address, loopback included) is REDIRECTed to
    the DNS listener (``--dns-port``);
  - TCP to a loopback destination returns untouched (explicit/reverse mode ports);
  - all other TCP is REDIRECTed to the transparent listener (``--proxy-port``).
* filter OUTPUT (chain ``EGRESS_SIDECAR_OUTPUT``)
  - the sidecar's own traffic is accepted;
  - packets *from* the sidecar's ports (TCP proxy, admin and DNS ports, UDP DNS port)
    sent by a socket of any other process are rejected (dropped for UDP): while the
    sidecar restarts, a gateway process that binds those ports cannot complete a
    handshake or send a byte, so probes and scrapes cannot be answered by an impostor.
    Before the ESTABLISHED accept, because an impostor's SYN-ACK is a reply and so
    ESTABLISHED. Matched by a UID range, not `! --uid-owner`: packets no process owns
    (kernel RSTs, the tail of a connection the sidecar already closed) must pass;
  - packets of connections conntrack already knows (ESTABLISHED, RELATED) are
    accepted: replies of inbound connections (probes, clients of the gateway) and
    ICMP errors about them. A new outbound flow never gets here as ESTABLISHED,
    because its first packet is rejected or redirected;
  - TCP to the sidecar's admin port on loopback is rejected (before the loopback
    accept, so the gateway cannot read /metrics or anything else there);
  - loopback destinations are accepted (127.0.0.0/8, ::1). After a nat REDIRECT
    ``-o lo`` no longer matches, but the destination is 127.0.0.1/::1, so
    redirected connections are accepted by this rule;
  - IPv6 only: neighbour discovery and MLD reports sent by the kernel (no owning
    socket, so the UID match cannot accept them) are accepted, or IPv6 breaks for
    the sidecar too; sending them needs CAP_NET_RAW, which the gateway lacks;
  - everything else is REJECTed: UDP (QUIC included), ICMP, raw IP, SCTP, and
    anything to the pod's own non-loopback addresses that was not redirected.

The jump to each chain is kept as the first rule of the built-in OUTPUT chain, so
rules added by others cannot run before ours. Re-running flushes and refills our
chains in one iptables-restore transaction per family: the result is identical.

Rule generation (`render_*`, `expected_chains`) is pure and testable without root;
`Executor` runs the commands.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path

CHAIN = "EGRESS_SIDECAR_OUTPUT"
TABLES = ("nat", "filter")

# Exit codes (documented in docs/pod-contract.md).
EXIT_OK = 0
EXIT_VERIFY_FAILED = 1  # --verify: rules missing or different
EXIT_USAGE = 2  # bad arguments (argparse uses 2 as well)
EXIT_ENVIRONMENT = 3  # no iptables, no CAP_NET_ADMIN, missing kernel module, ...


class Family(StrEnum):
    IPV4 = "ipv4"
    IPV6 = "ipv6"


@dataclasses.dataclass(frozen=True)
class RuleSettings:
    proxy_uid: int = 1337
    proxy_port: int = 15001
    dns_port: int = 15053
    admin_port: int | None = 15020  # None: no admin port to protect

    def __post_init__(self) -> None:
        if not 0 <= self.proxy_uid <= 0xFFFFFFFE:
            raise ValueError(f"proxy uid {self.proxy_uid} out of range")
        ports = {"proxy port": self.proxy_port, "dns port": self.dns_port}
        if self.admin_port is not None:
            ports["admin port"] = self.admin_port
        for name, port in ports.items():
            if not 1 <= port <= 65535:
                raise ValueError(f"{name} {port} out of range 1-65535")
        if len(set(ports.values())) != len(ports):
            raise ValueError(f"ports must be distinct: {ports}")


def _loopback(family: Family) -> str:
    return "127.0.0.0/8" if family is Family.IPV4 else "::1/128"


def expected_chains(settings: RuleSettings, family: Family) -> dict[str, list[str]]:
    """The rules of our chain in each table, exactly as iptables-save prints them.

    Written in iptables-save's canonical spelling (identical for the nft and legacy
    backends), so `--verify` can compare the dump line by line.
    """
    s = settings
    lo = _loopback(family)
    me = f"-m owner --uid-owner {s.proxy_uid}"
    a = f"-A {CHAIN}"
    nat = [
        f"{a} {me} -j RETURN",
        f"{a} -p udp -m udp --dport 53 -j REDIRECT --to-ports {s.dns_port}",
        f"{a} -p tcp -m tcp --dport 53 -j REDIRECT --to-ports {s.dns_port}",
        f"{a} -d {lo} -p tcp -j RETURN",
        f"{a} -p tcp -j REDIRECT --to-ports {s.proxy_port}",
    ]
    filt = [f"{a} {me} -j ACCEPT", *_impersonation_rules(s)]
    # Only the reply direction: a packet in a flow's original direction from another UID
    # would ride a flow the sidecar opened (its upstream DNS query's conntrack entry, once
    # its socket closed and the gateway bound the same port), past the nat REDIRECT that
    # only a flow's first packet sees.
    filt.append(f"{a} -m conntrack --ctstate RELATED,ESTABLISHED --ctdir REPLY -j ACCEPT")
    if s.admin_port is not None:
        filt.append(
            f"{a} -d {lo} -p tcp -m tcp --dport {s.admin_port} -j REJECT --reject-with tcp-reset"
        )
    filt.append(f"{a} -d {lo} -j ACCEPT")
    if family is Family.IPV6:
        # Router solicitation, neighbour solicitation/advertisement (hop limit 255
        # as RFC 4861 requires), MLDv2 reports: kernel-sent, no owning socket.
        for icmp6_type in (133, 135, 136):
            filt.append(
                f"{a} -p ipv6-icmp -m icmp6 --icmpv6-type {icmp6_type} -m hl --hl-eq 255 -j ACCEPT"
            )
        filt.append(f"{a} -d ff02::16/128 -p ipv6-icmp -m icmp6 --icmpv6-type 143 -j ACCEPT")
        tcp_reject, other_reject = "tcp-reset", "icmp6-port-unreachable"
    else:
        tcp_reject, other_reject = "tcp-reset", "icmp-port-unreachable"
    filt.append(f"{a} -p tcp -j REJECT --reject-with {tcp_reject}")
    filt.append(f"{a} -j REJECT --reject-with {other_reject}")
    return {"nat": nat, "filter": filt}


# Any socket a process opened: iptables' owner match compares the UID of the file
# that holds the socket. Written as a positive range on purpose: `! --uid-owner N`
# also matches packets with no owning process (kernel RSTs for closed ports, the last
# packets of a socket the sidecar already closed), which must pass.
ANY_PROCESS_UID = "0-4294967294"


def sidecar_ports(settings: RuleSettings) -> tuple[list[int], list[int]]:
    """(TCP ports, UDP ports) the sidecar listens on that only its UID may answer from."""
    tcp = sorted({settings.proxy_port, settings.dns_port, *_admin(settings)})
    return tcp, [settings.dns_port]


def _admin(settings: RuleSettings) -> list[int]:
    return [] if settings.admin_port is None else [settings.admin_port]


def _impersonation_rules(settings: RuleSettings) -> list[str]:
    """Only the sidecar's UID may send packets *from* the sidecar's ports.

    Placed right after the sidecar's own ACCEPT, so what reaches them is not UID
    `proxy_uid`; and before the ESTABLISHED accept, which would let the SYN-ACK (a
    reply, so ESTABLISHED) of another UID's listener out. While the sidecar is down,
    a gateway process that binds the admin port (or the proxy or DNS port) cannot
    complete a handshake or send a byte, so kubelet probes and Prometheus scrapes
    fail instead of reading a healthy answer from an impostor.
    """
    tcp, udp = sidecar_ports(settings)
    owner = f"-m owner --uid-owner {ANY_PROCESS_UID}"
    return [
        f"-A {CHAIN} -p tcp -m multiport --sports {','.join(map(str, tcp))} {owner} "
        "-j REJECT --reject-with tcp-reset",
        *(f"-A {CHAIN} -p udp -m udp --sport {port} {owner} -j DROP" for port in udp),
    ]


JUMP = f"-A OUTPUT -j {CHAIN}"


def render_restore(
    settings: RuleSettings,
    family: Family,
    existing_jumps: dict[str, int] | None = None,
    jump_first: dict[str, bool] | None = None,
) -> str:
    """The iptables-restore (--noflush) input that installs our rules.

    ``existing_jumps[table]`` is how many ``-j EGRESS_SIDECAR_OUTPUT`` rules the
    built-in OUTPUT chain already has, ``jump_first[table]`` whether the first rule
    of OUTPUT is that jump. With one jump already first, OUTPUT is left alone;
    otherwise every old jump is deleted and one is inserted at position 1. Declaring
    our chain (``:CHAIN - [0:0]``) flushes it in --noflush mode, so the chain always
    ends up with exactly the rules of `expected_chains`.
    """
    existing_jumps = existing_jumps or {}
    jump_first = jump_first or {}
    chains = expected_chains(settings, family)
    out: list[str] = [f"# egress-sidecar init ({family.value})"]
    for table in TABLES:
        out.append(f"*{table}")
        out.append(f":{CHAIN} - [0:0]")
        count = existing_jumps.get(table, 0)
        if not (count == 1 and jump_first.get(table, False)):
            out.extend([f"-D OUTPUT -j {CHAIN}"] * count)
            out.append(f"-I OUTPUT 1 -j {CHAIN}")
        out.extend(chains[table])
        out.append("COMMIT")
    return "\n".join(out) + "\n"


# --- parsing iptables-save output ------------------------------------------------


@dataclasses.dataclass
class TableDump:
    chains: set[str] = dataclasses.field(default_factory=set)
    rules: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # chain -> "-A .."


def parse_save(text: str) -> dict[str, TableDump]:
    """Parse iptables-save output into tables -> chains -> rule lines (no counters)."""
    tables: dict[str, TableDump] = {}
    current: TableDump | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], TableDump())
        elif current is None or line == "COMMIT":
            continue
        elif line.startswith(":"):
            current.chains.add(line[1:].split()[0])
        elif line.startswith("["):  # iptables-save -c: "[pkts:bytes] -A ..."
            rest = line.split("]", 1)[1].strip()
            _add_rule(current, rest)
        elif line.startswith("-A "):
            _add_rule(current, line)
    return tables


def _add_rule(table: TableDump, line: str) -> None:
    chain = line.split()[1]
    table.rules.setdefault(chain, []).append(line)


def jump_state(dump: dict[str, TableDump]) -> tuple[dict[str, int], dict[str, bool]]:
    counts: dict[str, int] = {}
    first: dict[str, bool] = {}
    for table in TABLES:
        output = dump.get(table, TableDump()).rules.get("OUTPUT", [])
        counts[table] = sum(1 for r in output if r == JUMP)
        first[table] = bool(output) and output[0] == JUMP
    return counts, first


def verify_dump(settings: RuleSettings, family: Family, dump: dict[str, TableDump]) -> list[str]:
    """Everything that differs from the expected rules, as readable problems ([] = ok)."""
    problems: list[str] = []
    tag = "ip6tables" if family is Family.IPV6 else "iptables"
    for table, want in expected_chains(settings, family).items():
        t = dump.get(table)
        if t is None or CHAIN not in t.chains:
            problems.append(f"{tag} -t {table}: chain {CHAIN} is missing")
            continue
        output = t.rules.get("OUTPUT", [])
        jumps = sum(1 for r in output if r == JUMP)
        if jumps == 0:
            problems.append(f"{tag} -t {table}: OUTPUT has no jump to {CHAIN}")
        elif output[0] != JUMP:
            problems.append(
                f"{tag} -t {table}: the jump to {CHAIN} is not the first rule of OUTPUT "
                f"(first is: {output[0]!r})"
            )
        elif jumps > 1:
            problems.append(f"{tag} -t {table}: OUTPUT jumps to {CHAIN} {jumps} times")
        have = t.rules.get(CHAIN, [])
        missing = [r for r in want if r not in have]
        unexpected = [r for r in have if r not in want]
        problems.extend(f"{tag} -t {table}: missing rule: {r}" for r in missing)
        problems.extend(f"{tag} -t {table}: unexpected rule: {r}" for r in unexpected)
        if not missing and not unexpected and have != want:
            problems.append(f"{tag} -t {table}: rules of {CHAIN} are out of order or repeated")
    return problems


# --- backends ----------------------------------------------------------------------


class Backend(StrEnum):
    NFT = "nft"
    LEGACY = "legacy"


@dataclasses.dataclass(frozen=True)
class Tools:
    """The save/restore binaries of one backend for one family."""

    save: str
    restore: str

    @classmethod
    def find(
        cls, backend: Backend, family: Family, which: Callable[[str], str | None] = shutil.which
    ) -> Tools | None:
        prefix = "ip6tables" if family is Family.IPV6 else "iptables"
        save, restore = which(f"{prefix}-{backend}-save"), which(f"{prefix}-{backend}-restore")
        if save and restore:
            return cls(save, restore)
        return None


class EnvironmentProblem(Exception):
    """Something about the machine, not the arguments: says what and how to fix."""


Runner = Callable[[Sequence[str], str | None], subprocess.CompletedProcess[str]]


def run_command(argv: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=60, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise EnvironmentProblem(
            f"{argv[0]} did not finish within 60 s (xtables lock held by another process?)"
        ) from exc


def explain_failure(argv: Sequence[str], stderr: str) -> str:
    """Turn iptables' stderr into what went wrong and how to fix it."""
    cmd = " ".join(argv)
    err = stderr.strip()
    low = err.lower()
    hint = ""
    if "permission denied" in low or "operation not permitted" in low or "must be root" in low:
        hint = (
            "it needs CAP_NET_ADMIN (and root or CAP_NET_RAW for the legacy backend): run "
            "the init container with securityContext.capabilities.add [NET_ADMIN, NET_RAW] "
            "and runAsUser 0"
        )
    elif "owner" in low and ("match" in low or "extension" in low or "module" in low):
        hint = "the kernel lacks the owner match: load xt_owner (modprobe xt_owner) on the node"
    elif "redirect" in low and ("target" in low or "extension" in low or "module" in low):
        hint = (
            "the kernel lacks the REDIRECT target / NAT: load xt_REDIRECT and nf_nat "
            "(and ip6table_nat for IPv6) on the node"
        )
    elif "conntrack" in low:
        hint = "the kernel lacks the conntrack match: load xt_conntrack on the node"
    elif "table does not exist" in low or "can't initialize" in low:
        hint = (
            "the kernel lacks this table for this backend: load iptable_nat/ip6table_nat "
            "(legacy) or nf_tables (nft), or choose the other --backend"
        )
    elif "another app is currently holding the xtables lock" in low:
        hint = "another process holds the xtables lock; retry"
    msg = f"`{cmd}` failed: {err or '(no message)'}"
    return f"{msg}\n  fix: {hint}" if hint else msg


def save(tools: Tools, run: Runner) -> str:
    argv = [tools.save]
    proc = run(argv, None)
    if proc.returncode != 0:
        raise EnvironmentProblem(explain_failure(argv, proc.stderr))
    return proc.stdout


def restore(tools: Tools, text: str, run: Runner) -> None:
    argv = [tools.restore, "--noflush", "-w", "10"]
    proc = run(argv, text)
    if proc.returncode != 0:
        raise EnvironmentProblem(explain_failure(argv, proc.stderr))


def count_rules(save_text: str) -> int:
    return sum(1 for line in save_text.splitlines() if line.startswith("-A "))


def choose_backend(
    requested: str,
    run: Runner,
    which: Callable[[str], str | None] = shutil.which,
) -> Backend:
    """auto: the backend that already holds our chain, else the one with rules, else nft.

    Mixing backends works in the kernel (both sets of hooks run), but other tools in
    the pod (a CNI, a mesh) and `iptables-save` users see only one of them; staying
    with the one already in use keeps everything visible in one place.
    """
    if requested != "auto":
        backend = Backend(requested)
        if Tools.find(backend, Family.IPV4, which) is None:
            raise EnvironmentProblem(
                f"iptables-{backend}-save/-restore not found on PATH: install the iptables "
                f"package (Debian/Ubuntu: apt-get install iptables) or choose another --backend"
            )
        return backend
    present = [b for b in Backend if Tools.find(b, Family.IPV4, which) is not None]
    if not present:
        raise EnvironmentProblem(
            "neither iptables-nft-restore nor iptables-legacy-restore is on PATH: install "
            "the iptables package (Debian/Ubuntu: apt-get install iptables)"
        )
    if len(present) == 1:
        return present[0]
    dumps: dict[Backend, str] = {}
    for b in present:
        tools = Tools.find(b, Family.IPV4, which)
        assert tools is not None
        proc = run([tools.save], None)
        dumps[b] = proc.stdout if proc.returncode == 0 else ""
    holders = [b for b in present if f":{CHAIN} " in dumps[b]]
    if len(holders) == 1:
        return holders[0]
    if count_rules(dumps[Backend.LEGACY]) > count_rules(dumps[Backend.NFT]):
        return Backend.LEGACY
    return Backend.NFT


def kernel_has_ipv6(proc_root: Path = Path("/proc")) -> bool:
    return (proc_root / "net" / "if_inet6").exists()


# --- the command ------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--proxy-uid", type=int, default=1337, help="UID of the sidecar (1337)")
    parser.add_argument(
        "--proxy-port", type=int, default=15001, help="transparent listener port (15001)"
    )
    parser.add_argument("--dns-port", type=int, default=15053, help="DNS listener port (15053)")
    parser.add_argument(
        "--admin-port",
        type=int,
        default=15020,
        help="sidecar admin port the gateway must not reach (15020; 0 = none)",
    )
    parser.add_argument(
        "--backend",
        choices=["auto", "nft", "legacy"],
        default="auto",
        help="iptables backend (auto: the one already in use, else nft)",
    )
    parser.add_argument(
        "--require-ipv6",
        action="store_true",
        help="fail if the IPv6 rules cannot be installed (default: skip them, with a "
        "notice, only when the kernel has no IPv6 at all)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run", action="store_true", help="print the rules, change nothing, need no root"
    )
    mode.add_argument(
        "--verify",
        action="store_true",
        help="check the installed rules; exit 1 naming what is missing (startup check)",
    )


def settings_from_args(args: argparse.Namespace) -> RuleSettings:
    return RuleSettings(
        proxy_uid=args.proxy_uid,
        proxy_port=args.proxy_port,
        dns_port=args.dns_port,
        admin_port=args.admin_port or None,
    )


def _err(msg: str) -> None:
    print(f"egress-sidecar init: {msg}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    return Executor().main(args)


@dataclasses.dataclass
class Executor:
    run: Runner = run_command
    which: Callable[[str], str | None] = shutil.which
    proc_root: Path = Path("/proc")

    def main(self, args: argparse.Namespace) -> int:
        try:
            settings = settings_from_args(args)
        except ValueError as exc:
            _err(f"invalid settings: {exc}")
            return EXIT_USAGE
        if args.dry_run:
            for family in Family:
                sys.stdout.write(render_restore(settings, family))
            return EXIT_OK
        try:
            backend = choose_backend(args.backend, self.run, self.which)
            families = self._families(backend, args.require_ipv6)
            if args.verify:
                return self._verify(settings, backend, families)
            return self._install(settings, backend, families)
        except EnvironmentProblem as exc:
            _err(str(exc))
            return EXIT_ENVIRONMENT

    def _families(self, backend: Backend, require_ipv6: bool) -> dict[Family, Tools]:
        v4 = Tools.find(backend, Family.IPV4, self.which)
        assert v4 is not None  # choose_backend checked
        families = {Family.IPV4: v4}
        v6 = Tools.find(backend, Family.IPV6, self.which)
        has_ipv6 = kernel_has_ipv6(self.proc_root)
        if v6 is not None and (has_ipv6 or require_ipv6):
            families[Family.IPV6] = v6
            return families
        if require_ipv6 or has_ipv6:
            raise EnvironmentProblem(
                f"ip6tables-{backend}-save/-restore not found, and "
                + (
                    "--require-ipv6 is set"
                    if require_ipv6
                    else "this kernel has IPv6: without ip6tables rules IPv6 egress would be open"
                )
                + ": install the iptables package (it ships ip6tables)"
            )
        _err("notice: this kernel has no IPv6 (/proc/net/if_inet6 missing); IPv6 rules skipped")
        return families

    def _install(
        self, settings: RuleSettings, backend: Backend, families: dict[Family, Tools]
    ) -> int:
        for family, tools in families.items():
            dump = parse_save(save(tools, self.run))
            counts, first = jump_state(dump)
            restore(tools, render_restore(settings, family, counts, first), self.run)
        # Read back what the kernel holds: the install is only done when verify passes.
        problems = self._problems(settings, families)
        if problems:
            _err("rules were loaded but do not read back as expected:")
            for p in problems:
                print(f"  - {p}", file=sys.stderr)
            return EXIT_ENVIRONMENT
        names = ", ".join(f.value for f in families)
        print(
            f"egress-sidecar init: rules installed ({names}, backend {backend}): "
            f"uid {settings.proxy_uid} exempt, TCP -> :{settings.proxy_port}, "
            f"DNS -> :{settings.dns_port}, admin :{settings.admin_port or '-'} closed, "
            f"only uid {settings.proxy_uid} answers from "
            f":{','.join(map(str, sidecar_ports(settings)[0]))}, everything else rejected"
        )
        return EXIT_OK

    def _problems(self, settings: RuleSettings, families: dict[Family, Tools]) -> list[str]:
        problems: list[str] = []
        for family, tools in families.items():
            problems.extend(verify_dump(settings, family, parse_save(save(tools, self.run))))
        return problems

    def _verify(
        self, settings: RuleSettings, backend: Backend, families: dict[Family, Tools]
    ) -> int:
        problems = self._problems(settings, families)
        if problems:
            _err(f"verify FAILED (backend {backend}): {len(problems)} problem(s):")
            for p in problems:
                print(f"  - {p}", file=sys.stderr)
            print(
                "  fix: run `egress-sidecar init` (same flags) in the init container",
                file=sys.stderr,
            )
            return EXIT_VERIFY_FAILED
        names = ", ".join(f.value for f in families)
        print(f"egress-sidecar init: verify ok ({names}, backend {backend})")
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="egress-sidecar init")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))


__all__ = [
    "CHAIN",
    "Backend",
    "EnvironmentProblem",
    "Executor",
    "Family",
    "RuleSettings",
    "Tools",
    "add_arguments",
    "choose_backend",
    "expected_chains",
    "main",
    "parse_save",
    "render_restore",
    "sidecar_ports",
    "verify_dump",
]
