"""`egress-sidecar report DECISION_LOGS...`: what enforce would break, and a policy to review.

The logs are written by `Decision.as_log_record` (the sidecar's own line format) with the
junk a container log also holds (runtime prefixes, tracebacks, events).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from policy_helpers import REPO

from sidecar.decision import Decision, Reason, Verdict
from sidecar.policy.loader import load_policy, load_policy_bytes
from sidecar.report import Summary, suggest

CLI = Path(sys.executable).parent / "egress-sidecar"
DEFAULT = REPO / "policies" / "default.yaml"
T0 = 1_780_000_000.0


def line(
    verdict: Verdict,
    reason: Reason,
    host: str,
    *,
    port: int = 443,
    rule: str = "default_deny",
    method: str | None = "POST",
    path: str | None = "/v1/things",
    tenant: str | None = None,
    at: float = T0,
) -> str:
    decision = Decision(
        verdict=verdict,
        reason=reason,
        rule=rule,
        host=host,
        port=port,
        method=method,
        path=path,
        tenant=tenant,
        mode="explicit",
        at=at,
    )
    return json.dumps(decision.as_log_record())


WB, BL, AL = Verdict.WOULD_BLOCK, Verdict.BLOCK, Verdict.ALLOW
LOG = [
    line(AL, Reason.ALLOWED, "api.openai.com", rule="providers.openai"),
    line(WB, Reason.HOST_NOT_ALLOWED, "telemetry.vendor.example", tenant="team-a", at=T0 + 5),
    line(WB, Reason.HOST_NOT_ALLOWED, "telemetry.vendor.example", tenant="team-b", at=T0 + 1),
    line(WB, Reason.HOST_NOT_ALLOWED, "telemetry.vendor.example", path="/ingest", at=T0 + 9),
    line(WB, Reason.HOST_NOT_ALLOWED, "hooks.example.org", port=8443, method="PUT", path="/"),
    line(BL, Reason.IP_LITERAL, "1.2.3.4", rule="netguard"),
    line(BL, Reason.METADATA_ADDRESS, "169.254.169.254", rule="netguard", port=80),
    line(BL, Reason.PRIVATE_ADDRESS, "db.internal.example", rule="netguard"),
    line(BL, Reason.GATEWAY_HOLDS_CREDENTIAL, "api.openai.com", rule="providers.openai"),
    line(WB, Reason.PATH_NOT_ALLOWED, "api.openai.com", rule="providers.openai", path="/dash"),
    "2026-12-01T10:00:00.000Z stderr F Traceback (most recent call last):",
    '{"event": "listening", "proxy": "127.0.0.1:15080"}',
    "",
]


def summary_of(lines: list[str]) -> Summary:
    summary = Summary()
    for text in lines:
        summary.add_line(text)
    return summary


def test_counts_destinations_reasons_tenants_and_first_last_seen() -> None:
    summary = summary_of(LOG)
    assert summary.not_json == 1 and summary.other_events == 1
    assert summary.verdicts == {"allow": 1, "would_block": 5, "block": 4}
    top = summary.refused()[0]
    assert (top.host, top.port, top.count) == ("telemetry.vendor.example", 443, 3)
    assert top.tenants == {"team-a": 1, "team-b": 1, "-": 1}
    assert (top.first, top.last) == ("2026-05-28T20:26:41.000Z", "2026-05-28T20:26:49.000Z")


def test_suggestion_lists_unlisted_names_only_never_literals_metadata_or_private() -> None:
    text = suggest(summary_of(LOG))
    policy = load_policy_bytes([("suggested.yaml", text.encode())])
    hosts = {h for e in policy.endpoints for h in e.hosts}
    assert hosts == {"telemetry.vendor.example", "hooks.example.org"}
    for refused in ("1.2.3.4", "169.254.169.254", "db.internal.example"):
        assert f"host: {refused}" not in text
    telemetry = next(e for e in policy.endpoints if e.hosts == ("telemetry.vendor.example",))
    assert telemetry.ports == {443} and telemetry.methods == {"POST"}
    assert telemetry.paths.prefixes == {"/v1/"} and telemetry.paths.exact == {"/ingest"}
    hooks = next(e for e in policy.endpoints if e.hosts == ("hooks.example.org",))
    assert hooks.ports == {8443} and hooks.paths.exact == {"/"}
    # A refused path of an existing entry is a comment for a human, not a new entry.
    assert "# providers.openai: api.openai.com:443 refused path_not_allowed 1; methods" in text


def test_host_the_gateway_sent_a_real_key_to_is_never_suggested() -> None:
    lines = [
        line(WB, Reason.HOST_NOT_ALLOWED, "exfil.example.net"),
        line(BL, Reason.GATEWAY_HOLDS_CREDENTIAL, "exfil.example.net"),
    ]
    text = suggest(summary_of(lines))
    assert "host: exfil.example.net" not in text
    assert "# skipped exfil.example.net: also refused for gateway_holds_credential" in text


def test_suggestion_loads_together_with_the_default() -> None:
    text = suggest(summary_of(LOG))
    load_policy_bytes([(str(DEFAULT), DEFAULT.read_bytes()), ("s.yaml", text.encode())])


def test_attacker_shaped_paths_do_not_reach_the_suggestion() -> None:
    lines = [
        line(WB, Reason.HOST_NOT_ALLOWED, "x.example.org", path=p)
        for p in ("/%2e%2e/etc", "/a b/c", "/v1/ok", "/../x", "/*/y")
    ]
    text = suggest(summary_of(lines))
    policy = load_policy_bytes([("s.yaml", text.encode())])
    assert policy.endpoints[0].paths.prefixes == {"/v1/"}


def test_cli_report_and_suggest_pass_policy_check(tmp_path: Path) -> None:
    log = tmp_path / "decisions.log"
    log.write_text("\n".join(LOG) + "\n")
    suggested = tmp_path / "suggested.yaml"
    result = subprocess.run(
        [str(CLI), "report", str(log), "--suggest", str(suggested), "--policy", str(DEFAULT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == (
        "decision logs: 1 file(s), 13 lines: 10 decisions, 1 other events, 1 not JSON (skipped)"
    )
    assert out[1] == (
        "allow 1; would_block 5 (audit: enforce would refuse these); block 4 (refused)"
    )
    assert out[2] == "refused destinations: 6 (by count)"
    assert out[3].startswith("  telemetry.vendor.example:443  3  (would_block 3)  first ")
    assert out[4] == "      reasons: host_not_allowed 3; rules: default_deny 3"
    assert out[5] == "      tenants: team-a 1, team-b 1, - 1; methods: POST 3"
    check = subprocess.run(
        [str(CLI), "policy", "check", "--quiet", str(DEFAULT), str(suggested)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    assert load_policy([suggested]).endpoints


def test_cli_missing_log_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(CLI), "report", str(tmp_path / "nope.log")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "nope.log" in result.stderr


def test_forged_log_values_cannot_add_lines_to_the_suggestion() -> None:
    forged = json.loads(line(WB, Reason.HOST_NOT_ALLOWED, "vendor.example.org"))
    forged["tenant"] = "x\n  - {name: evil, host: evil.example, ports: [443]}"
    text = suggest(summary_of([json.dumps(forged)]))
    policy = load_policy_bytes([("s.yaml", text.encode())])
    assert [e.hosts for e in policy.endpoints] == [("vendor.example.org",)]
    assert "evil.example" in text  # shown, escaped, inside the comment line


def test_look_alike_of_a_provider_domain_is_flagged_in_the_suggestion() -> None:
    from sidecar.report import provider_domains

    known = provider_domains(load_policy([DEFAULT]))
    lines = [
        line(WB, Reason.HOST_NOT_ALLOWED, "api.openai-billing.com"),
        line(WB, Reason.HOST_NOT_ALLOWED, "api.anthropic.com.cdn-edge.net"),
        line(WB, Reason.HOST_NOT_ALLOWED, "telemetry.vendor.example"),
    ]
    text = suggest(summary_of(lines), known).splitlines()
    at = text.index("  - name: api.openai-billing.com")
    assert text[at - 1] == (
        "  # WARNING: api.openai-billing.com looks like openai.com (providers.openai) but is "
        "in openai-billing.com: a look-alike is where stolen keys go"
    )
    at = text.index("  - name: api.anthropic.com.cdn-edge.net")
    assert "looks like anthropic.com (providers.anthropic)" in text[at - 1]
    at = text.index("  - name: telemetry.vendor.example")
    assert "WARNING" not in text[at - 1]
