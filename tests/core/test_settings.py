"""`egress-sidecar run` options: each declared once on `Settings`, which drives the flag,
the EGRESS_SIDECAR_* variable, the default, the parser and the help; README's "Runtime
options" table is the public contract and must list exactly these."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from sidecar import cpus, settings
from sidecar.settings import Option, Settings, SettingsError

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| `(--[a-z0-9-]+)[^|]*\| `(EGRESS_SIDECAR_[A-Z0-9_]+)[^|]*\| ([^|]+) \|")


def resolve(argv: list[str]) -> Settings:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    return settings.resolve(parser.parse_args(argv))


@pytest.fixture(autouse=True)
def _no_sidecar_environment(monkeypatch):
    for name in [n for n in __import__("os").environ if n.startswith("EGRESS_SIDECAR_")]:
        monkeypatch.delenv(name)


def readme_rows() -> dict[str, tuple[str, str]]:
    """flag -> (environment variable, default cell) of README's Runtime options table."""
    section = README.read_text().split("## Runtime options", 1)[1].split("\n## ", 1)[0]
    return {m[1]: (m[2], m[3].strip()) for m in map(ROW.match, section.splitlines()) if m}


def test_readme_lists_exactly_the_declared_options_with_their_variables():
    declared = {spec.flag: f"EGRESS_SIDECAR_{spec.env}" for spec in settings.options()}
    documented = {flag: env for flag, (env, _default) in readme_rows().items()}
    assert documented == declared


def test_readme_defaults_are_the_declared_ones():
    rows = readme_rows()
    static = [s for s in settings.options() if isinstance(s, Option) and isinstance(s.default, str)]
    assert len(static) >= 8  # the table is read at all
    for spec in static:
        assert rows[spec.flag][1] == f"`{spec.default}`", spec.flag


def test_help_names_each_variable_and_static_default():
    for spec in settings.options():
        assert f"[env EGRESS_SIDECAR_{spec.env}" in spec.help, spec.flag
        if isinstance(spec, Option) and isinstance(spec.default, str):
            assert "default" in spec.help, spec.flag


def test_no_flags_give_the_declared_defaults():
    assert resolve([]) == Settings()
    s = Settings()
    assert s.proxy_listen == ("127.0.0.1", 15080)
    assert s.admin_listen == ("127.0.0.1", 15020)
    assert (s.reload_interval, s.refusal_rate, s.decision_format) == (1.0, 20.0, "json")
    assert s.policies and s.policies[0].endswith("default.yaml")
    assert (s.reverse, s.transparent, s.dns, s.secrets_from_env) == ((), (), (), False)


def test_workers_default_to_auto_and_a_given_count_is_obeyed(monkeypatch):
    """`auto` (sidecar/cpus.py) by default, as by name; a count as given, even above what
    `auto` would choose (the operator sized the pod)."""
    assert resolve([]).workers == cpus.auto()
    assert resolve(["--workers", "AUTO"]).workers == cpus.auto()
    assert resolve(["--workers", "64"]).workers == cpus.WorkerCount(64, "--workers 64")
    monkeypatch.setenv("EGRESS_SIDECAR_WORKERS", "3")
    assert resolve([]).workers.n == 3


def test_flag_wins_over_environment_which_wins_over_default(monkeypatch):
    monkeypatch.setenv("EGRESS_SIDECAR_LISTEN", "127.0.0.1:16000")
    monkeypatch.setenv("EGRESS_SIDECAR_ADMIN", "127.0.0.1:16001")
    monkeypatch.setenv("EGRESS_SIDECAR_DNS", "127.0.0.1:15053, [::1]:15053")
    monkeypatch.setenv("EGRESS_SIDECAR_SECRETS_FROM_ENV", "1")
    monkeypatch.setenv("EGRESS_SIDECAR_MAX_CONNECTIONS", "9")
    s = resolve(["--listen", "127.0.0.1:17000", "--reverse", "openai@15081"])
    assert s.proxy_listen == ("127.0.0.1", 17000)
    assert s.admin_listen == ("127.0.0.1", 16001)
    assert s.dns == (("127.0.0.1", 15053), ("::1", 15053))
    assert s.reverse[0].provider == "openai" and s.reverse[0].listen_port == 15081
    assert s.secrets_from_env is True
    assert s.limits.max_connections == 9


def test_an_empty_value_counts_as_not_given(monkeypatch):
    monkeypatch.setenv("EGRESS_SIDECAR_POLICY", ",")
    s = resolve(["--listen", "", "--decision-format", ""])
    assert s.proxy_listen == ("127.0.0.1", 15080)
    assert s.decision_format == "json"
    assert s.policies == Settings().policies


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen", "nowhere"], "--listen 'nowhere': "),
        (["--reverse", "openai"], "--reverse 'openai': expected PROVIDER[:HOST]@"),
        (["--reload-interval", "0"], "--reload-interval '0': must be between 0.05 and 3600"),
        (["--refusal-rate", "fast"], "--refusal-rate 'fast': not a number"),
        (["--dns-refuse-with", "SERVFAIL"], "--dns-refuse-with 'servfail': expected refused or"),
        (["--decision-format", "cef"], "--decision-format 'cef': expected json or ocsf"),
        (["--upstream-ca", "/nonexistent/ca.pem"], "--upstream-ca '/nonexistent/ca.pem': no such"),
        (["--max-connections", "0"], "--max-connections '0': expected a whole number"),
        (["--usage-redis", "http://x"], "--usage-redis: expected a redis://"),
        (["--listen", "off"], "nothing to serve: --listen off and no --reverse"),
        (["--workers", "0"], "--workers '0': must be between 1 and 64"),
        (["--workers", "65"], "--workers '65': must be between 1 and 64"),
        (["--workers", "all"], "--workers 'all': not a number"),
    ],
)
def test_bad_values_name_the_flag_and_what_is_expected(argv, message):
    with pytest.raises(SettingsError) as caught:
        resolve(argv)
    assert str(caught.value).startswith(message)
