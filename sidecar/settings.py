"""Runtime options of `egress-sidecar run`: each a flag and an EGRESS_SIDECAR_* variable.

Precedence: flag, then environment, then default. No mitmproxy import here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from pathlib import Path

from sidecar import cpus, usage_settings
from sidecar import limits as limits_mod
from sidecar.hostnames import HostError, split_host_port

ENV_PREFIX = "EGRESS_SIDECAR_"

DEFAULT_PROXY_LISTEN = "127.0.0.1:15080"
DEFAULT_ADMIN_LISTEN = "127.0.0.1:15020"
MAX_WORKERS = 64  # issue 17: --workers


def bundled_policy_dir() -> Path:
    """`policies/` of a source checkout, or the copy packed into the wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "policies", here / "_bundled_policies"):
        if (candidate / "default.yaml").is_file():
            return candidate
    return here.parent / "policies"


def default_ca_dir() -> str:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(state) / "egress-sidecar" / "ca")


class SettingsError(ValueError):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class ReverseListener:
    """`--reverse openai@15081` or `--reverse azure:myres.openai.azure.com@127.0.0.1:15083`."""

    provider: str
    host: str | None  # None: the provider's first exact host
    listen_host: str
    listen_port: int

    @classmethod
    def parse(cls, text: str) -> ReverseListener:
        match = re.fullmatch(r"([a-z0-9][a-z0-9_-]*)(?::([^@]+))?@(.+)", text)
        if not match:
            raise SettingsError(
                f"--reverse {text!r}: expected PROVIDER[:HOST]@[ADDRESS:]PORT, "
                "e.g. openai@15081 or openai:api.openai.com@127.0.0.1:15081"
            )
        provider, host, listen = match.groups()
        listen_host, listen_port = parse_listen(listen, flag="--reverse")
        return cls(provider, host, listen_host, listen_port)


def parse_listen(text: str, *, flag: str) -> tuple[str, int]:
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    try:
        host, port = split_host_port(text, allow_zero=True)  # 0: any free port
    except HostError as exc:
        raise SettingsError(f"{flag} {text!r}: {exc}; expected ADDRESS:PORT") from None
    return host.strip("[]"), port


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    policies: tuple[str, ...]
    proxy_listen: tuple[str, int] | None
    reverse: tuple[ReverseListener, ...]
    admin_listen: tuple[str, int]
    ca_dir: str
    resolver: str | None
    upstream_ca: str | None
    reload_interval: float
    alerts_config: str | None
    alert_spool_dir: str | None
    secrets_dir: str | None = None
    secrets_from_env: bool = False
    virtual_keys: str | None = None
    transparent: tuple[tuple[str, int], ...] = ()
    dns: tuple[tuple[str, int], ...] = ()
    dns_refuse_with: str = "refused"
    # issue 10: DNS listener limits (see docs/limits.md, "DNS listener")
    dns_max_qps: float = 2000.0
    dns_max_qps_per_source: float = 500.0
    dns_max_sources: int = 4096
    dns_max_pending: int = 256
    dns_max_tcp_connections: int = 64
    refusal_rate: float = 20.0  # issue 10: refusals/s answered at once (0 = no pacing)
    decision_format: str = "json"  # issue 18: json (our line) or ocsf (sidecar/ocsf.py)
    # issue 10: HTTP/connection limits
    limits: limits_mod.Limits = dataclasses.field(default_factory=limits_mod.Limits)
    # issue 15: usage limits' state, Redis and admin token (sidecar/usage_settings.py)
    usage: usage_settings.UsageSettings = dataclasses.field(
        default_factory=lambda: usage_settings.from_values({})
    )
    workers: int = 1  # issue 17: proxy processes (see _workers below)


# (flag, env suffix, help, repeatable)
_OPTIONS: tuple[tuple[str, str, str, bool], ...] = (
    ("--policy", "POLICY", "policy file or directory; repeatable (default: bundled default)", True),
    (
        "--listen",
        "LISTEN",
        f"explicit proxy ADDRESS:PORT, or 'off' (default {DEFAULT_PROXY_LISTEN})",
        False,
    ),
    ("--reverse", "REVERSE", "reverse listener PROVIDER[:HOST]@[ADDRESS:]PORT; repeatable", True),
    (
        "--admin",
        "ADMIN",
        f"admin ADDRESS:PORT for /metrics /healthz /readyz (default {DEFAULT_ADMIN_LISTEN})",
        False,
    ),
    ("--ca-dir", "CA_DIR", "directory of the interception CA; created if missing", False),
    (
        "--resolver",
        "RESOLVER",
        "upstream DNS resolver ADDRESS[:PORT] (default: /etc/resolv.conf)",
        False,
    ),
    (
        "--upstream-ca",
        "UPSTREAM_CA",
        "extra CA bundle (PEM) trusted upstream, added to the public roots",
        False,
    ),
    (
        "--reload-interval",
        "RELOAD_INTERVAL",
        "seconds between policy file checks (default 1)",
        False,
    ),
    (
        "--transparent",
        "TRANSPARENT",
        "transparent listener ADDRESS:PORT for iptables-redirected TCP; repeatable "
        "(e.g. 127.0.0.1:15001 and [::1]:15001)",
        True,
    ),
    ("--dns", "DNS", "DNS listener ADDRESS:PORT for the pod's redirected DNS; repeatable", True),
    (
        "--dns-refuse-with",
        "DNS_REFUSE_WITH",
        "answer for refused names: refused (default) or nxdomain",
        False,
    ),
    (
        "--secrets-dir",
        "SECRETS_DIR",
        "directory of provider keys, one file per secret name (a mounted Kubernetes Secret)",
        False,
    ),
    (
        "--virtual-keys",
        "VIRTUAL_KEYS",
        "virtual keys file: tenants, their hashed keys and providers (docs/credentials.md)",
        False,
    ),
    ("--alerts-config", "ALERTS_CONFIG", "alert sinks configuration file (YAML)", False),
    ("--alert-spool", "ALERT_SPOOL", "directory where undelivered alerts are kept", False),
    # issue 10: DNS listener limits
    ("--dns-max-qps", "DNS_MAX_QPS", "DNS questions per second, all sources (default 2000)", False),
    (
        "--dns-max-qps-per-source",
        "DNS_MAX_QPS_PER_SOURCE",
        "DNS questions per second from one source address (default 500)",
        False,
    ),
    (
        "--dns-max-sources",
        "DNS_MAX_SOURCES",
        "source addresses the DNS rate limiter remembers (default 4096)",
        False,
    ),
    (
        "--dns-max-pending",
        "DNS_MAX_PENDING",
        "DNS questions being answered at once (default 256)",
        False,
    ),
    (
        "--dns-max-tcp-connections",
        "DNS_MAX_TCP_CONNECTIONS",
        "open DNS-over-TCP connections (default 64)",
        False,
    ),
    (
        "--refusal-rate",
        "REFUSAL_RATE",
        "refusals per second answered at once; above it (after a 2 s burst) each refused "
        "answer waits, up to 1 s, still logged and alerted at once; 0 = off (default 20)",
        False,
    ),
    (
        "--decision-format",
        "DECISION_FORMAT",
        "decision log lines: json (default) or ocsf (OCSF 1.5.0 events, docs/ocsf.md)",
        False,
    ),
    # issue 10: HTTP/connection limits (sidecar/limits.py, docs/limits.md)
    *((flag, env, help_text, False) for flag, env, _, _, help_text in limits_mod.OPTIONS),
    *((flag, env, help_text, False) for flag, env, help_text in usage_settings.OPTIONS),
    # issue 17: worker processes (sidecar/supervisor.py, docs/performance.md#workers)
    (
        "--workers",
        "WORKERS",
        f"proxy processes sharing the listeners, supervised as one sidecar: 1 (default), "
        f"N (up to {MAX_WORKERS}), or 'auto': the CPUs the container may use (cgroup quota, "
        "CPU affinity); each costs ~100 MB (docs/performance.md#workers)",
        False,
    ),
)


# issue 17: --workers (the default is 1: docs/performance.md#workers says why).


def _workers(values: dict[str, str | list[str] | None]) -> int:
    text = _single(values["--workers"])
    if text is None:
        return 1
    if text.strip().lower() == "auto":
        return min(cpus.available(), MAX_WORKERS)
    return int(_number(values, "--workers", int, 1, MAX_WORKERS) or 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flag_arguments(parser)
    for flag, env, help_text, repeatable in _OPTIONS:
        parser.add_argument(
            flag,
            action="append" if repeatable else "store",
            default=None,
            help=f"{help_text} [env {ENV_PREFIX}{env}"
            + (", comma-separated]" if repeatable else "]"),
        )


def add_flag_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--secrets-from-env",
        action="store_true",
        default=None,
        help=f"also read keys from {ENV_PREFIX}SECRET_<NAME> variables (weaker: any process "
        f"in the container can read them) [env {ENV_PREFIX}SECRETS_FROM_ENV=1]",
    )


def _value(args: argparse.Namespace, flag: str, env: str) -> str | list[str] | None:
    value: str | list[str] | None = getattr(args, flag.lstrip("-").replace("-", "_"))
    if value is not None:
        return value
    return os.environ.get(ENV_PREFIX + env) or None


def _list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else value.split(",")
    return [item.strip() for item in items if item.strip()]


def _single(value: str | list[str] | None) -> str | None:
    return value if isinstance(value, str) else None


def resolve(args: argparse.Namespace) -> Settings:
    values = {flag: _value(args, flag, env) for flag, env, _, _ in _OPTIONS}
    policies = _list(values["--policy"]) or [str(bundled_policy_dir() / "default.yaml")]
    listen = _single(values["--listen"]) or DEFAULT_PROXY_LISTEN
    proxy_listen = None if listen == "off" else parse_listen(listen, flag="--listen")
    reverse = tuple(ReverseListener.parse(r) for r in _list(values["--reverse"]))
    admin = parse_listen(_single(values["--admin"]) or DEFAULT_ADMIN_LISTEN, flag="--admin")
    interval = _number(values, "--reload-interval", float, 0.05, 3600) or 1.0
    upstream_ca = _single(values["--upstream-ca"])
    if upstream_ca and not Path(upstream_ca).is_file():
        raise SettingsError(f"--upstream-ca {upstream_ca!r}: no such file")
    transparent = tuple(
        parse_listen(t, flag="--transparent") for t in _list(values["--transparent"])
    )
    dns = tuple(parse_listen(d, flag="--dns") for d in _list(values["--dns"]))
    refuse_with = (_single(values["--dns-refuse-with"]) or "refused").lower()
    if refuse_with not in ("refused", "nxdomain"):
        raise SettingsError(f"--dns-refuse-with {refuse_with!r}: expected refused or nxdomain")
    dns_limits = _dns_limits(values)
    decision_format = (_single(values["--decision-format"]) or "json").lower()
    if decision_format not in ("json", "ocsf"):
        raise SettingsError(f"--decision-format {decision_format!r}: expected json or ocsf")
    rate = _number(values, "--refusal-rate", float, 0, 1_000_000)  # 0: pacing off
    refusal_rate = 20.0 if rate is None else rate
    try:
        limits = limits_mod.from_values({f: _single(values[f]) for f, *_ in limits_mod.OPTIONS})
        usage = usage_settings.from_values(
            {f: _single(values[f]) for f, *_ in usage_settings.OPTIONS}
        )
    except (limits_mod.LimitError, usage_settings.UsageSettingsError) as exc:
        raise SettingsError(str(exc)) from None
    if proxy_listen is None and not reverse and not transparent:
        raise SettingsError(
            "nothing to serve: --listen off and no --reverse or --transparent listener"
        )
    return Settings(
        policies=tuple(policies),
        proxy_listen=proxy_listen,
        reverse=reverse,
        admin_listen=admin,
        ca_dir=_single(values["--ca-dir"]) or default_ca_dir(),
        resolver=_single(values["--resolver"]),
        upstream_ca=upstream_ca,
        reload_interval=interval,
        alerts_config=_single(values["--alerts-config"]),
        alert_spool_dir=_single(values["--alert-spool"]),
        secrets_dir=_single(values["--secrets-dir"]),
        secrets_from_env=bool(
            args.secrets_from_env or os.environ.get(ENV_PREFIX + "SECRETS_FROM_ENV") == "1"
        ),
        virtual_keys=_single(values["--virtual-keys"]),
        transparent=transparent,
        dns=dns,
        dns_refuse_with=refuse_with,
        **dns_limits,  # type: ignore[arg-type]
        refusal_rate=refusal_rate,
        limits=limits,
        decision_format=decision_format,
        usage=usage,
        workers=_workers(values),
    )


def _number(
    values: dict[str, str | list[str] | None],
    flag: str,
    kind: type[int] | type[float],
    low: float,
    high: float,
) -> float | None:
    """A numeric option's value within [low, high]; None when it is not set."""
    text = _single(values[flag])
    if text is None:
        return None
    try:
        value = kind(text)
    except ValueError:
        raise SettingsError(f"{flag} {text!r}: not a number") from None
    if not low <= value <= high:
        bounds = " and ".join(str(int(b)) if float(b).is_integer() else str(b) for b in (low, high))
        raise SettingsError(f"{flag} {text!r}: must be between {bounds}")
    return value


def _dns_limits(values: dict[str, str | list[str] | None]) -> dict[str, float | int]:
    """issue 10: the DNS listener's limits, checked like every other option."""
    out: dict[str, float | int] = {}
    for flag, field, kind, low, high in (
        ("--dns-max-qps", "dns_max_qps", float, 1, 1_000_000),
        ("--dns-max-qps-per-source", "dns_max_qps_per_source", float, 1, 1_000_000),
        ("--dns-max-sources", "dns_max_sources", int, 1, 1_000_000),
        ("--dns-max-pending", "dns_max_pending", int, 1, 100_000),
        ("--dns-max-tcp-connections", "dns_max_tcp_connections", int, 1, 100_000),
    ):
        value = _number(values, flag, kind, low, high)
        if value is not None:
            out[field] = value
    defaults = Settings(
        policies=(),
        proxy_listen=None,
        reverse=(),
        admin_listen=("", 0),
        ca_dir="",
        resolver=None,
        upstream_ca=None,
        reload_interval=1.0,
        alerts_config=None,
        alert_spool_dir=None,
    )
    total = out.get("dns_max_qps", defaults.dns_max_qps)
    per_source = out.get("dns_max_qps_per_source", defaults.dns_max_qps_per_source)
    if per_source > total:
        raise SettingsError(
            f"--dns-max-qps-per-source {per_source:g} exceeds --dns-max-qps {total:g}: "
            "one source could then take the whole budget; lower it or raise --dns-max-qps"
        )
    return out
