"""Rule generation, dump parsing, verification and error messages: no root needed."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from sidecar import netinit
from sidecar.netinit import (
    CHAIN,
    Backend,
    EnvironmentProblem,
    Executor,
    Family,
    RuleSettings,
    choose_backend,
    expected_chains,
    parse_save,
    render_restore,
    verify_dump,
)

V4, V6 = Family.IPV4, Family.IPV6
DEFAULT = RuleSettings()


def test_module_imports_no_mitmproxy() -> None:
    code = "import sys, sidecar.netinit; assert 'mitmproxy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_default_ipv4_rules_exact() -> None:
    assert render_restore(DEFAULT, V4) == (
        "# egress-sidecar init (ipv4)\n"
        "*nat\n"
        ":EGRESS_SIDECAR_OUTPUT - [0:0]\n"
        "-I OUTPUT 1 -j EGRESS_SIDECAR_OUTPUT\n"
        "-A EGRESS_SIDECAR_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"
        "-A EGRESS_SIDECAR_OUTPUT -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053\n"
        "-A EGRESS_SIDECAR_OUTPUT -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053\n"
        "-A EGRESS_SIDECAR_OUTPUT -d 127.0.0.0/8 -p tcp -j RETURN\n"
        "-A EGRESS_SIDECAR_OUTPUT -p tcp -j REDIRECT --to-ports 15001\n"
        "COMMIT\n"
        "*filter\n"
        ":EGRESS_SIDECAR_OUTPUT - [0:0]\n"
        "-I OUTPUT 1 -j EGRESS_SIDECAR_OUTPUT\n"
        "-A EGRESS_SIDECAR_OUTPUT -m owner --uid-owner 1337 -j ACCEPT\n"
        "-A EGRESS_SIDECAR_OUTPUT -p tcp -m multiport --sports 15001,15020,15053"
        " -m owner --uid-owner 0-4294967294 -j REJECT --reject-with tcp-reset\n"
        "-A EGRESS_SIDECAR_OUTPUT -p udp -m udp --sport 15053"
        " -m owner --uid-owner 0-4294967294 -j DROP\n"
        "-A EGRESS_SIDECAR_OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED"
        " --ctdir REPLY -j ACCEPT\n"
        "-A EGRESS_SIDECAR_OUTPUT -d 127.0.0.0/8 -p tcp -m tcp --dport 15020"
        " -j REJECT --reject-with tcp-reset\n"
        "-A EGRESS_SIDECAR_OUTPUT -d 127.0.0.0/8 -j ACCEPT\n"
        "-A EGRESS_SIDECAR_OUTPUT -p tcp -j REJECT --reject-with tcp-reset\n"
        "-A EGRESS_SIDECAR_OUTPUT -j REJECT --reject-with icmp-port-unreachable\n"
        "COMMIT\n"
    )


def _index(rules: list[str], needle: str) -> int:
    hits = [i for i, r in enumerate(rules) if needle in r]
    assert len(hits) == 1, (needle, rules)
    return hits[0]


@pytest.mark.parametrize("family", [V4, V6])
def test_ordering_invariants(family: Family) -> None:
    lo = "127.0.0.0/8" if family is V4 else "::1/128"
    nat = expected_chains(DEFAULT, family)["nat"]
    filt = expected_chains(DEFAULT, family)["filter"]
    # nat: sidecar first, DNS before the loopback exemption, catch-all redirect last
    assert nat[0].endswith("--uid-owner 1337 -j RETURN")
    dns = _index(nat, "-p udp -m udp --dport 53")
    assert dns < _index(nat, f"-d {lo} -p tcp -j RETURN")
    assert _index(nat, "-p tcp -m tcp --dport 53") < _index(nat, f"-d {lo} -p tcp -j RETURN")
    assert nat[-1].endswith("-p tcp -j REDIRECT --to-ports 15001")
    # filter: admin reject before the loopback accept; reject-all last
    assert filt[0].endswith("--uid-owner 1337 -j ACCEPT")
    assert _index(filt, "--dport 15020 -j REJECT") < _index(filt, f"-d {lo} -j ACCEPT")
    # only the sidecar answers from its ports: after its own accept (so the rules see
    # other UIDs only), before the ESTABLISHED accept (a SYN-ACK is ESTABLISHED)
    established = _index(filt, "--ctstate RELATED,ESTABLISHED")
    assert 0 < _index(filt, "-p tcp -m multiport --sports 15001,15020,15053") < established
    assert 0 < _index(filt, "-p udp -m udp --sport 15053") < established
    assert filt[-1].startswith(f"-A {CHAIN} -j REJECT")
    # nothing but the sidecar UID, loopback, known flows and NDP is accepted
    accepts = [r for r in filt if r.endswith("-j ACCEPT")]
    for rule in accepts:
        assert (
            "--uid-owner 1337" in rule
            or f"-d {lo} -j ACCEPT" in rule
            or "--ctstate RELATED,ESTABLISHED" in rule
            or "ipv6-icmp" in rule
        ), rule
    # every owner rule names the sidecar UID, or any process (the source-port rules)
    assert all(
        "--uid-owner" not in r or "1337" in r or "--uid-owner 0-4294967294 -j" in r
        for r in nat + filt
    )


def test_ipv6_specifics() -> None:
    filt = expected_chains(DEFAULT, V6)["filter"]
    assert f"-A {CHAIN} -d ::1/128 -j ACCEPT" in filt
    assert filt[-1] == f"-A {CHAIN} -j REJECT --reject-with icmp6-port-unreachable"
    ndp = [r for r in filt if "ipv6-icmp" in r]
    assert {t for r in ndp for t in ("133", "135", "136", "143") if f"--icmpv6-type {t} " in r} == {
        "133",
        "135",
        "136",
        "143",
    }
    # echo requests (128) are not among them
    assert not any("--icmpv6-type 128" in r for r in filt)
    assert not any("127.0.0.0/8" in r for r in filt + expected_chains(DEFAULT, V6)["nat"])


def test_custom_settings_flow_into_every_rule() -> None:
    s = RuleSettings(proxy_uid=4242, proxy_port=16001, dns_port=16053, admin_port=16020)
    text = render_restore(s, V4) + render_restore(s, V6)
    for old in ("1337", "15001", "15053", "15020"):
        assert old not in text
    for new in ("--uid-owner 4242", "--to-ports 16001", "--to-ports 16053", "--dport 16020",
                "--sports 16001,16020,16053", "--sport 16053"):  # fmt: skip
        assert new in text


def test_source_port_rules_use_a_uid_range_not_a_negation() -> None:
    """`! --uid-owner 1337` also matches socketless packets: the tail of an answer the
    sidecar already closed would be cut (test_sidecar_answer_still_completes_after_it_
    closed_the_socket shows it in a namespace). A positive range matches only sockets a
    process holds."""
    for family in (V4, V6):
        ports = [r for r in expected_chains(DEFAULT, family)["filter"] if "-m owner" in r
                 and "sport" in r]  # fmt: skip
        assert len(ports) == 2
        assert all("! --uid-owner" not in r and "--uid-owner 0-4294967294" in r for r in ports)


def test_no_admin_port_still_guards_the_proxy_and_dns_ports() -> None:
    rules = expected_chains(RuleSettings(admin_port=None), V4)["filter"]
    assert any("--sports 15001,15053 " in r for r in rules)


def test_no_admin_port() -> None:
    rules = expected_chains(RuleSettings(admin_port=None), V4)["filter"]
    assert not any("--dport" in r or "15020" in r for r in rules)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"proxy_port": 0},
        {"dns_port": 70000},
        {"proxy_port": 15053},  # same as the DNS port
        {"admin_port": 15001},
        {"proxy_uid": -1},
    ],
)
def test_bad_settings_rejected(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        RuleSettings(**kwargs)  # type: ignore[arg-type]


def test_rerender_keeps_a_single_first_jump() -> None:
    # already one jump, first: OUTPUT untouched, chain refilled
    text = render_restore(DEFAULT, V4, {"nat": 1, "filter": 1}, {"nat": True, "filter": True})
    assert "-I OUTPUT" not in text and "-D OUTPUT" not in text
    assert text.count(f":{CHAIN} - [0:0]") == 2
    # two jumps, or one not first: all deleted, one inserted first
    text = render_restore(DEFAULT, V4, {"nat": 2, "filter": 1}, {"nat": True, "filter": False})
    nat, filt = text.split("*filter")
    assert nat.count(f"-D OUTPUT -j {CHAIN}") == 2 and nat.count("-I OUTPUT 1") == 1
    assert filt.count(f"-D OUTPUT -j {CHAIN}") == 1 and filt.count("-I OUTPUT 1") == 1


# --- parsing and verification --------------------------------------------------------


def installed_dump(settings: RuleSettings, family: Family, counters: bool = False) -> str:
    """What iptables-save prints after a successful install."""
    out = ["# Generated by iptables-save v1.8.9"]
    for table, rules in expected_chains(settings, family).items():
        out += [f"*{table}", ":OUTPUT ACCEPT [12:345]", f":{CHAIN} - [0:0]"]
        jump = f"-A OUTPUT -j {CHAIN}"
        out.append(f"[3:180] {jump}" if counters else jump)
        out += [f"[0:0] {r}" if counters else r for r in rules]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("family", [V4, V6])
@pytest.mark.parametrize("counters", [False, True])
def test_verify_accepts_a_correct_install(family: Family, counters: bool) -> None:
    assert verify_dump(DEFAULT, family, parse_save(installed_dump(DEFAULT, family, counters))) == []


def test_verify_names_each_missing_rule() -> None:
    dump = installed_dump(DEFAULT, V4)
    victim = expected_chains(DEFAULT, V4)["filter"][4]
    problems = verify_dump(DEFAULT, V4, parse_save(dump.replace(victim + "\n", "")))
    assert problems == [f"iptables -t filter: missing rule: {victim}"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.replace(f":{CHAIN} - [0:0]", "", 1), "chain EGRESS_SIDECAR_OUTPUT is missing"),
        (lambda d: d.replace(f"-A OUTPUT -j {CHAIN}\n", "", 1), "OUTPUT has no jump"),
        (
            lambda d: d.replace(
                f"-A OUTPUT -j {CHAIN}\n", f"-A OUTPUT -j ACCEPT\n-A OUTPUT -j {CHAIN}\n", 1
            ),
            "is not the first rule of OUTPUT",
        ),
        (
            lambda d: d.replace(
                f"-A OUTPUT -j {CHAIN}\n", f"-A OUTPUT -j {CHAIN}\n-A OUTPUT -j {CHAIN}\n", 1
            ),
            "jumps to EGRESS_SIDECAR_OUTPUT 2 times",
        ),
        (
            lambda d: d.replace("COMMIT", f"-A {CHAIN} -j ACCEPT\nCOMMIT", 1),
            "unexpected rule: -A EGRESS_SIDECAR_OUTPUT -j ACCEPT",
        ),
        (
            lambda d: d.replace("--to-ports 15001", "--to-ports 15002"),
            "missing rule: -A EGRESS_SIDECAR_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
        ),
        (lambda d: "", "chain EGRESS_SIDECAR_OUTPUT is missing"),
    ],
)
def test_verify_detects_tampering(mutate: object, expected: str) -> None:
    dump = mutate(installed_dump(DEFAULT, V4))  # type: ignore[operator]
    problems = verify_dump(DEFAULT, V4, parse_save(dump))
    assert any(expected in p for p in problems), problems


def test_verify_detects_reordering() -> None:
    rules = expected_chains(DEFAULT, V4)["filter"]
    dump = installed_dump(DEFAULT, V4)
    a, b = rules[4], rules[5]  # admin reject and loopback accept swapped: admin exposed
    dump = dump.replace(f"{a}\n{b}\n", f"{b}\n{a}\n")
    problems = verify_dump(DEFAULT, V4, parse_save(dump))
    assert problems == ["iptables -t filter: rules of EGRESS_SIDECAR_OUTPUT are out of order or "
                        "repeated"]  # fmt: skip


# --- error messages ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stderr", "hint"),
    [
        (
            "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: "
            "Permission denied (you must be root)",
            "CAP_NET_ADMIN",
        ),
        (
            "iptables-restore: unable to initialize table 'nat'\nOperation not permitted",
            "NET_ADMIN",
        ),
        ("Warning: Extension owner revision 0 not supported, missing kernel module?", "xt_owner"),
        ("Couldn't load target `REDIRECT':No such file or directory", "xt_REDIRECT"),
        ("Couldn't load match `conntrack'", "xt_conntrack"),
    ],
)
def test_failures_explain_the_fix(stderr: str, hint: str) -> None:
    message = netinit.explain_failure(["iptables-nft-restore", "--noflush"], stderr)
    assert "iptables-nft-restore --noflush" in message
    assert "fix:" in message and hint in message


# --- backend choice and the executor with a fake iptables -----------------------------


class FakeIptables:
    """In-memory stand-in for {ip,ip6}tables-{nft,legacy}-{save,restore}."""

    def __init__(self, binaries: set[str], dumps: dict[str, str] | None = None) -> None:
        self.binaries = binaries
        self.dumps = dumps or {}
        self.calls: list[tuple[list[str], str | None]] = []
        self.fail: dict[str, str] = {}

    def which(self, name: str) -> str | None:
        return f"/usr/sbin/{name}" if name in self.binaries else None

    def __call__(self, argv: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        name = Path(argv[0]).name
        self.calls.append((argv, stdin))
        if name in self.fail:
            return subprocess.CompletedProcess(argv, 4, "", self.fail[name])
        if name.endswith("-save"):
            return subprocess.CompletedProcess(argv, 0, self.dumps.get(name, ""), "")
        assert stdin is not None
        # pretend the restore worked: the next save shows the installed rules
        family = V6 if name.startswith("ip6") else V4
        self.dumps[name.replace("-restore", "-save")] = installed_dump(DEFAULT, family)
        return subprocess.CompletedProcess(argv, 0, "", "")


ALL = {
    f"{p}-{b}-{op}"
    for p in ("iptables", "ip6tables")
    for b in ("nft", "legacy")
    for op in ("save", "restore")
}


def args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    netinit.add_arguments(parser)
    return parser.parse_args(list(extra))


def test_auto_backend_prefers_nft_on_a_clean_host() -> None:
    fake = FakeIptables(ALL)
    assert choose_backend("auto", fake, fake.which) is Backend.NFT


def test_auto_backend_follows_legacy_rules() -> None:
    fake = FakeIptables(ALL, {"iptables-legacy-save": "*filter\n-A INPUT -j DROP\nCOMMIT\n"})
    assert choose_backend("auto", fake, fake.which) is Backend.LEGACY


def test_auto_backend_follows_our_own_chain() -> None:
    legacy_ours = installed_dump(DEFAULT, V4)
    nft_busy = "*filter\n" + "-A INPUT -j DROP\n" * 50 + "COMMIT\n"
    fake = FakeIptables(ALL, {"iptables-legacy-save": legacy_ours, "iptables-nft-save": nft_busy})
    assert choose_backend("auto", fake, fake.which) is Backend.LEGACY


def test_only_legacy_installed() -> None:
    fake = FakeIptables({b for b in ALL if "legacy" in b})
    assert choose_backend("auto", fake, fake.which) is Backend.LEGACY
    with pytest.raises(EnvironmentProblem, match="iptables-nft-save/-restore not found"):
        choose_backend("nft", fake, fake.which)


def test_no_iptables_at_all() -> None:
    fake = FakeIptables(set())
    with pytest.raises(EnvironmentProblem, match="apt-get install iptables"):
        choose_backend("auto", fake, fake.which)


def _proc(tmp_path: Path, ipv6: bool) -> Path:
    (tmp_path / "net").mkdir()
    if ipv6:
        (tmp_path / "net" / "if_inet6").write_text("")
    return tmp_path


def test_install_then_verify_with_fake(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeIptables(ALL)
    ex = Executor(run=fake, which=fake.which, proc_root=_proc(tmp_path, ipv6=True))
    assert ex.main(args()) == 0
    restores = [c for c in fake.calls if c[0][0].endswith("-restore")]
    assert [Path(c[0][0]).name for c in restores] == [
        "iptables-nft-restore",
        "ip6tables-nft-restore",
    ]
    assert restores[0][0][1:] == ["--noflush", "-w", "10"]
    assert restores[0][1] == render_restore(DEFAULT, V4)
    assert "rules installed (ipv4, ipv6, backend nft)" in capsys.readouterr().out
    assert ex.main(args("--verify")) == 0
    # second install: the jump is already first, so OUTPUT is left alone
    assert ex.main(args()) == 0
    last_v4 = [c for c in fake.calls if c[0][0].endswith("iptables-nft-restore")][-1]
    assert last_v4[1] is not None
    assert "-I OUTPUT" not in last_v4[1] and "-D OUTPUT" not in last_v4[1]


def test_verify_on_empty_host_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeIptables(ALL)
    ex = Executor(run=fake, which=fake.which, proc_root=_proc(tmp_path, ipv6=True))
    assert ex.main(args("--verify")) == netinit.EXIT_VERIFY_FAILED
    err = capsys.readouterr().err
    assert "iptables -t nat: chain EGRESS_SIDECAR_OUTPUT is missing" in err
    assert "ip6tables -t filter: chain EGRESS_SIDECAR_OUTPUT is missing" in err
    assert not any(c[0][0].endswith("-restore") for c in fake.calls)


def test_permission_denied_says_cap_net_admin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeIptables(ALL)
    fake.fail["iptables-nft-restore"] = "iptables-restore v1.8.9 (nf_tables): Permission denied"
    ex = Executor(run=fake, which=fake.which, proc_root=_proc(tmp_path, ipv6=True))
    assert ex.main(args()) == netinit.EXIT_ENVIRONMENT
    assert "CAP_NET_ADMIN" in capsys.readouterr().err


def test_ipv6_tools_missing_on_ipv6_kernel_fails_closed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeIptables({b for b in ALL if b.startswith("iptables")})
    ex = Executor(run=fake, which=fake.which, proc_root=_proc(tmp_path, ipv6=True))
    assert ex.main(args()) == netinit.EXIT_ENVIRONMENT
    assert "IPv6 egress would be open" in capsys.readouterr().err


def test_kernel_without_ipv6_skips_with_notice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeIptables(ALL)
    ex = Executor(run=fake, which=fake.which, proc_root=_proc(tmp_path, ipv6=False))
    assert ex.main(args()) == 0
    out = capsys.readouterr()
    assert "no IPv6" in out.err and "IPv6 rules skipped" in out.err
    assert not any("ip6tables" in c[0][0] for c in fake.calls)
    assert ex.main(args("--require-ipv6")) == 0  # the tools exist: installs them anyway
    assert any("ip6tables-nft-restore" in c[0][0] for c in fake.calls)


def test_require_ipv6_without_tools_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeIptables({b for b in ALL if b.startswith("iptables")})
    ex = Executor(run=fake, which=fake.which, proc_root=_proc(tmp_path, ipv6=False))
    assert ex.main(args("--require-ipv6")) == netinit.EXIT_ENVIRONMENT
    assert "--require-ipv6 is set" in capsys.readouterr().err


def test_dry_run_runs_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeIptables(set())
    assert Executor(run=fake, which=fake.which).main(args("--dry-run")) == 0
    assert fake.calls == []
    out = capsys.readouterr().out
    assert out == render_restore(DEFAULT, V4) + render_restore(DEFAULT, V6)


def test_bad_ports_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert netinit.main(args("--proxy-port", "15053", "--dry-run")) == netinit.EXIT_USAGE
    assert "ports must be distinct" in capsys.readouterr().err


def test_dry_run_and_verify_are_exclusive() -> None:
    with pytest.raises(SystemExit):
        args("--dry-run", "--verify")
