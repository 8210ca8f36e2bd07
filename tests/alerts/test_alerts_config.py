"""Strict config loading (file:line: key: message), secrets only from files, and no
secret or credential-looking text in any payload or log line."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from alerts_helpers import PLANTED_KEY, FakeReceiver, pipeline, refusal, run, write_config

from sidecar.alerts.config import ConfigError, SinkSecret, load_config
from sidecar.decision import Reason, Severity, Verdict

PD_KEY = "PDROUTINGKEYsecret0123456789abcd"
SLACK_TOKEN = "T000/B000/XXXXsecretXXXX"
HMAC_KEY = "hmac-secret-value-42"
BEARER = "am-bearer-secret-value"


def secrets(tmp: Path, base: str = "http://127.0.0.1:9") -> None:
    (tmp / "pd.key").write_text(PD_KEY + "\n")
    (tmp / "slack.url").write_text(f"{base}/services/{SLACK_TOKEN}\n")
    (tmp / "hook.url").write_text(f"{base}/hook?token=abc\n")
    (tmp / "hook.key").write_text(HMAC_KEY)
    (tmp / "am.token").write_text(BEARER)
    (tmp / "empty").write_text("\n")
    (tmp / "two-lines").write_text("a\nb\n")


FULL = """\
version: 1
tick: 100ms
grouping:
  resend_interval: 1m
  resolve_after: 5m
  max_new_per_minute: 20
  burst: 5
  max_active: 500
  max_destinations_per_reason: 10
delivery:
  max_queue: 1000
  max_age: 12h
  backoff_initial: 500ms
  backoff_max: 30s
  timeout: 5s
sinks:
  - name: am
    type: alertmanager
    url: http://alertmanager.monitoring.svc:9093
    bearer_token_file: am.token
  - name: pd
    type: pagerduty
    routing_key_file: pd.key
    min_severity: critical
    include_audit: false
  - name: chat
    type: slack
    url_file: slack.url
  - name: siem
    type: webhook
    url_file: hook.url
    hmac_key_file: hook.key
"""


def test_full_config_loads(tmp_path: Path) -> None:
    secrets(tmp_path)
    path = tmp_path / "alerts.yaml"
    path.write_text(FULL)
    cfg = load_config(str(path))
    assert cfg.tick == 0.1
    assert cfg.grouping.resend_interval == 60 and cfg.grouping.resolve_after == 300
    assert cfg.delivery.max_age == 12 * 3600 and cfg.delivery.backoff_initial == 0.5
    am, pd, chat, siem = cfg.sinks
    assert am.url == "http://alertmanager.monitoring.svc:9093" and am.send_updates
    assert pd.url == "https://events.pagerduty.com"
    assert pd.routing_key is not None and pd.routing_key.reveal() == PD_KEY
    assert pd.min_severity is Severity.CRITICAL and not pd.include_audit
    assert not pd.send_updates and not chat.send_updates
    assert siem.hmac_key is not None and siem.hmac_key.reveal() == HMAC_KEY
    shown = repr(cfg) + " ".join(s.display() for s in cfg.sinks)
    for secret in (PD_KEY, SLACK_TOKEN, HMAC_KEY, BEARER, "token=abc", "/services/"):
        assert secret not in shown
    assert "http://127.0.0.1:9" in chat.display()


ERROR_ROWS = [
    ("version: 2\n", 1, "version", "only version 1"),
    ("version: 1\nsinkz: []\n", 2, "sinkz", "unknown key"),
    ("version: 1\ngrouping:\n  resolve_after: soon\n", 3, "grouping.resolve_after", "duration"),
    ("version: 1\ngrouping:\n  burst: -1\n", 3, "grouping.burst", "integer"),
    (
        "version: 1\nsinks:\n  - {name: a, type: carrier-pigeon, url: http://x}\n",
        3,
        "sinks[0].type",
        "must be one of",
    ),
    (
        "version: 1\nsinks:\n  - name: a\n    type: webhook\n    url: http://h/x\n"
        "    hmac_key_file: nope.key\n",
        6,
        "sinks[0].hmac_key_file",
        "cannot read secret",
    ),
    (
        "version: 1\nsinks:\n  - name: a\n    type: webhook\n    url: http://h/x?token=s3cr3t\n"
        "    hmac_key_file: hook.key\n",
        5,
        "sinks[0].url",
        "put a URL with a token in a file",
    ),
    (
        "version: 1\nsinks:\n  - name: a\n    type: alertmanager\n    url: http://u:pw@h\n",
        5,
        "sinks[0].url",
        "must not carry credentials",
    ),
    (
        "version: 1\nsinks:\n  - name: a\n    type: pagerduty\n    routing_key: inline\n",
        5,
        "sinks[0].routing_key",
        "unknown key",
    ),
    (
        "version: 1\nsinks:\n  - name: a\n    type: pagerduty\n    routing_key_file: empty\n",
        5,
        "sinks[0].routing_key_file",
        "is empty",
    ),
    (
        "version: 1\nsinks:\n  - name: a\n    type: pagerduty\n    routing_key_file: two-lines\n",
        5,
        "sinks[0].routing_key_file",
        "single line",
    ),
    (
        "version: 1\nsinks:\n  - name: a\n    type: slack\n    url: http://h/x\n",
        5,
        "sinks[0].url",
        "unknown key",
    ),
    (
        "version: 1\nsinks:\n  - name: a\n    type: slack\n    url_file: pd.key\n",
        5,
        "sinks[0].url_file",
        "in the secret file",
    ),
    (
        "version: 1\nsinks:\n  - {name: a, type: alertmanager, url: 'http://h'}\n"
        "  - {name: a, type: alertmanager, url: 'http://h'}\n",
        4,
        "sinks[1].name",
        "duplicate",
    ),
    (
        "version: 1\nsinks:\n  - {name: Bad Name, type: alertmanager, url: 'http://h'}\n",
        3,
        "sinks[0].name",
        "[a-z0-9_-]",
    ),
    (
        "version: 1\nsinks:\n  - {name: a, type: pagerduty, routing_key_file: pd.key,"
        " min_severity: page}\n",
        3,
        "sinks[0].min_severity",
        "one of",
    ),
    ("version: 1\nversion: 1\n", 2, "version", "duplicate"),
    ("version: 1\nsinks: {a: 1}\n", 2, "sinks", "expected a list"),
]


@pytest.mark.parametrize(("text", "line", "key", "fragment"), ERROR_ROWS)
def test_config_errors_name_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, fragment: str
) -> None:
    secrets(tmp_path)
    path = tmp_path / "alerts.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: {key}: "), message
    assert fragment in message, message
    for secret in (PD_KEY, "s3cr3t", SLACK_TOKEN, "pw@"):
        assert secret not in message


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text("version: 1\nsinks: [\n")
    with pytest.raises(ConfigError, match=rf"^{path}:\d+: "):
        load_config(str(path))


def _problems(tmp_path: Path, text: str | bytes) -> list[str]:
    secrets(tmp_path)
    path = tmp_path / "alerts.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    lines = str(info.value).splitlines()
    assert [str(p) for p in info.value.problems] == lines
    prefix = f"{path}:"
    assert all(line.startswith(prefix) for line in lines), lines
    return [line.removeprefix(prefix) for line in lines]


def test_alerts_config_duplicate_sink_key_is_refused_with_line(tmp_path: Path) -> None:
    """A second `url:` in a sink would silently replace the first: the reviewed receiver
    is not the one that gets the alerts."""
    text = (
        "version: 1\nsinks:\n  - name: am\n    type: alertmanager\n"
        "    url: http://alertmanager.monitoring:9093\n"
        "    url: http://collector.example:8080\n"
    )
    assert _problems(tmp_path, text) == [
        "6: sinks[0].url: duplicate key (first at line 5); YAML would silently keep only "
        "the last one: merge them into one"
    ]


def test_alerts_config_duplicate_section_is_refused_with_line(tmp_path: Path) -> None:
    """A second `sinks:` (say, appended by another tool) would drop every sink above it."""
    text = (
        "version: 1\nsinks:\n  - {name: am, type: alertmanager, url: 'http://am:9093'}\n"
        "tick: 1s\nsinks: []\n"
    )
    (problem,) = _problems(tmp_path, text)
    assert problem.startswith("5: sinks: duplicate key (first at line 2)"), problem


def test_alerts_config_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        "version: 1\ngrouping:\n  burst: 0\n"
        "sinks:\n  - {name: a, type: pagerduty, routing_key_file: nope}\n"
        "  - {name: b, type: alertmanager, url: 'http://am:9093', min_severity: page}\n"
        "  - {name: c, type: slack, url_file: slack.url, retries: 3}\n"
    )
    found = _problems(tmp_path, text)
    assert [p.split(": ")[1] for p in found] == [
        "grouping.burst",
        "sinks[0].routing_key_file",
        "sinks[1].min_severity",
        "sinks[2].retries",
    ], found
    assert [p.split(":")[0] for p in found] == ["3", "5", "6", "7"], found
    assert "allowed keys are ca_file, include_audit" in found[3]


def test_alerts_config_misplaced_secret_url_is_not_echoed(tmp_path: Path) -> None:
    """A webhook URL (with its token) written where a sink goes: the error names the place."""
    url = f"https://hooks.example/services/{SLACK_TOKEN}"
    for text in (f"version: 1\nsinks:\n  - {url}\n", f"version: 1\nsinks: {url}\n", f"{url}\n"):
        found = _problems(tmp_path, text)
        assert found and all(SLACK_TOKEN not in p for p in found), found


def test_alerts_config_not_utf8_has_a_line(tmp_path: Path) -> None:
    assert _problems(tmp_path, b"version: 1\ntick: \xff\n") == ["2: the file is not valid UTF-8"]


def test_no_config_means_log_and_count_only(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        p = pipeline(None, None)
        await p.start()
        p.submit(refusal(Reason.METADATA_ADDRESS, host="169.254.169.254", rule="netguard"))
        await asyncio.sleep(0.5)
        await p.stop()
        assert (
            p.registry.get_sample_value(
                "egress_sidecar_alerts_refusals_total", {"severity": "critical"}
            )
            == 1
        )
        assert (
            p.registry.get_sample_value(
                "egress_sidecar_alerts_notifications_total", {"kind": "trigger"}
            )
            == 1
        )

    with caplog.at_level(logging.INFO, logger="sidecar.alerts"):
        run(main(), 10)
    assert any(
        "alert trigger" in r.getMessage() and "metadata_address" in r.getMessage()
        for r in caplog.records
    )


def test_secret_never_prints() -> None:
    s = SinkSecret("hunter2", "/etc/x")
    assert "hunter2" not in repr(s) + str(s) + f"{s}"


def test_no_credential_or_secret_in_any_payload_or_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Decisions carrying key-like text in detail, path, host and tenant reach all four
    sinks; no payload and no log line contains the key; payload fields stay bounded."""

    async def main() -> list[bytes]:
        rx = await FakeReceiver(default=202).start()
        secrets(tmp_path, rx.url)
        cfg = write_config(
            tmp_path,
            f"""
sinks:
  - name: am
    type: alertmanager
    url: {rx.url}
  - name: pd
    type: pagerduty
    url: {rx.url}
    routing_key_file: pd.key
  - name: chat
    type: slack
    url_file: slack.url
  - name: siem
    type: webhook
    url_file: hook.url
    hmac_key_file: hook.key
""",
        )
        p = pipeline(cfg, tmp_path / "spool")
        await p.start()
        try:
            for reason, verdict in [
                (Reason.GATEWAY_HOLDS_CREDENTIAL, Verdict.BLOCK),
                (Reason.CREDENTIAL_REFLECTED, Verdict.BLOCK),
                (Reason.PATH_NOT_ALLOWED, Verdict.WOULD_BLOCK),
            ]:
                p.submit(
                    refusal(
                        reason,
                        verdict=verdict,
                        host=f"{PLANTED_KEY}.api.openai.com",
                        rule="providers.openai",
                        path=f"/v1/chat/{PLANTED_KEY}?key={PLANTED_KEY}" + "/a" * 3000,
                        detail=f"body said: Bearer {PLANTED_KEY} " + "B" * 10_000,
                        tenant=PLANTED_KEY,
                        method="POST",
                    )
                )
            # 3 each to PagerDuty, Slack and the webhook; Alertmanager gets them batched
            await rx.wait_for(10, timeout=10)
            await asyncio.sleep(0.3)
        finally:
            await p.stop()
            await rx.stop()
        return [r.body for r in rx.requests]

    with caplog.at_level(logging.DEBUG, logger="sidecar.alerts"):
        bodies = run(main(), 30)
    needle = PLANTED_KEY[8:24].encode()
    for body in bodies:
        assert needle not in body
        assert b"B" * 300 not in body  # detail is bounded
        assert len(body) < 16_000
    assert any(b"[REDACTED]" in body for body in bodies)
    logs = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (PLANTED_KEY[8:24], PD_KEY, SLACK_TOKEN, HMAC_KEY, "token=abc"):
        assert secret not in logs
    # the routing key reaches PagerDuty's body (it must) and nothing else
    assert (
        sum(PD_KEY.encode() in b for b in bodies) == sum(b'"routing_key"' in b for b in bodies) > 0
    )
