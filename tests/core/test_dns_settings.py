"""The DNS listener limits as `run` options (issue 10): defaults, environment, clear errors."""

from __future__ import annotations

import argparse

import pytest

from sidecar import settings


def resolve(argv: list[str]) -> settings.Settings:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    return settings.resolve(parser.parse_args(argv))


def test_safe_defaults():
    s = resolve([])
    assert (s.dns_max_qps, s.dns_max_qps_per_source) == (2000.0, 500.0)
    assert (s.dns_max_sources, s.dns_max_pending, s.dns_max_tcp_connections) == (4096, 256, 64)


def test_flag_and_environment(monkeypatch):
    monkeypatch.setenv("EGRESS_SIDECAR_DNS_MAX_QPS_PER_SOURCE", "50")
    s = resolve(["--dns-max-qps", "300", "--dns-max-tcp-connections", "8"])
    assert (s.dns_max_qps, s.dns_max_qps_per_source, s.dns_max_tcp_connections) == (300, 50, 8)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dns-max-qps", "lots"], "--dns-max-qps 'lots': not a number"),
        (["--dns-max-sources", "0"], "--dns-max-sources '0': must be between 1 and"),
        (
            ["--dns-max-qps", "100", "--dns-max-qps-per-source", "200"],
            "--dns-max-qps-per-source 200 exceeds --dns-max-qps 100",
        ),
    ],
)
def test_bad_values_say_what_and_how_to_fix(argv, message):
    with pytest.raises(settings.SettingsError, match=message.replace("(", r"\(")):
        resolve(argv)
