"""Runtime options of `egress-sidecar run`: each a flag and an EGRESS_SIDECAR_* variable.

Each is declared once, as a `Settings` field (`option(...)`): that declaration gives the
flag, the variable, the default, the parser and the help. Precedence: flag, then
environment, then default. No mitmproxy import here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from sidecar import cpus, usage_settings
from sidecar import limits as limits_mod
from sidecar.hostnames import HostError, split_host_port

ENV_PREFIX = "EGRESS_SIDECAR_"

DEFAULT_PROXY_LISTEN = "127.0.0.1:15080"
DEFAULT_ADMIN_LISTEN = "127.0.0.1:15020"


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


def _text(_flag: str, text: str) -> str:
    return text


class _Flag:
    """A flag, its variable (EGRESS_SIDECAR_ + the flag upper-cased) and argparse dest."""

    def __init__(self, flag: str) -> None:
        self.flag = flag
        self.env = flag.lstrip("-").upper().replace("-", "_")
        self.dest = flag.lstrip("-").replace("-", "_")


class Option(_Flag):
    """One runtime option: its flag and variable, help, the text used when neither is
    given, and the parser that turns text into the `Settings` value (raising
    SettingsError that names the flag)."""

    def __init__(
        self,
        flag: str,
        help_text: str,
        parse: Callable[[str, str], Any],
        default: str | Callable[[], str] | None,
        repeatable: bool,
    ) -> None:
        super().__init__(flag)
        self.parse = parse
        self.default = default
        self.repeatable = repeatable
        shown = (
            f" (default {default})"
            if isinstance(default, str) and "default" not in help_text
            else ""
        )
        self.help = f"{help_text}{shown} [env {ENV_PREFIX}{self.env}" + (
            ", comma-separated]" if repeatable else "]"
        )

    def value(self, given: str | list[str] | None) -> Any:
        """The parsed value of the flag's text, else the variable's, else the default's
        (an empty text counts as not given)."""
        for text in (given, os.environ.get(ENV_PREFIX + self.env), self._default_text()):
            items = self._items(text)
            if items:
                parsed = [self.parse(self.flag, item) for item in items]
                return tuple(parsed) if self.repeatable else parsed[0]
        return () if self.repeatable else None

    def _default_text(self) -> str | None:
        return self.default() if callable(self.default) else self.default

    def _items(self, text: str | list[str] | None) -> list[str]:
        if not self.repeatable:
            return [text] if isinstance(text, str) and text else []
        listed = text if isinstance(text, list) else (text or "").split(",")
        return [item.strip() for item in listed if item.strip()]


def option(
    flag: str,
    help_text: str,
    *,
    parse: Callable[[str, str], Any] = _text,
    default: str | Callable[[], str] | None = None,
    repeatable: bool = False,
) -> Any:
    """A `Settings` field declared by its option: the field's default is the option's."""
    spec = Option(flag, help_text, parse, default, repeatable)
    return dataclasses.field(default_factory=lambda: spec.value(None), metadata={"option": spec})


class Switch(_Flag):
    """An on/off option: present flag, or its variable set to 1."""

    def __init__(self, flag: str, help_text: str) -> None:
        super().__init__(flag)
        self.help = f"{help_text} [env {ENV_PREFIX}{self.env}=1]"

    def value(self, given: bool | None) -> bool:
        return bool(given or os.environ.get(ENV_PREFIX + self.env) == "1")


def switch(flag: str, help_text: str) -> Any:
    return dataclasses.field(default=False, metadata={"option": Switch(flag, help_text)})


class Group:
    """Options another module declares and builds into one value (`Limits`, the usage
    settings): its table, rows (flag, ..., help), and its `from_values(flag -> text)`."""

    def __init__(
        self,
        rows: Iterable[tuple[str, ...]],
        build: Callable[[Mapping[str, str | None]], Any],
        errors: tuple[type[Exception], ...],
    ) -> None:
        self.options = tuple(Option(row[0], row[-1], _text, None, False) for row in rows)
        self.build = build
        self.errors = errors

    def value(self, args: argparse.Namespace | None) -> Any:
        given = {o.flag: o.value(getattr(args, o.dest, None)) for o in self.options}
        try:
            return self.build(given)
        except self.errors as exc:
            raise SettingsError(str(exc)) from None


def group(
    rows: Iterable[tuple[str, ...]],
    build: Callable[[Mapping[str, str | None]], Any],
    *errors: type[Exception],
) -> Any:
    spec = Group(rows, build, errors)
    return dataclasses.field(default_factory=lambda: spec.value(None), metadata={"option": spec})


# Parsers: (flag, text) -> value, raising SettingsError that names the flag.


def _listen(flag: str, text: str) -> tuple[str, int]:
    return parse_listen(text, flag=flag)


def _listen_or_off(flag: str, text: str) -> tuple[str, int] | None:
    return None if text == "off" else parse_listen(text, flag=flag)


def _reverse(_flag: str, text: str) -> ReverseListener:
    return ReverseListener.parse(text)


def _existing_file(flag: str, text: str) -> str:
    if not Path(text).is_file():
        raise SettingsError(f"{flag} {text!r}: no such file")
    return text


def _one_of(*names: str) -> Callable[[str, str], str]:
    def parse(flag: str, text: str) -> str:
        value = text.lower()
        if value not in names:
            raise SettingsError(f"{flag} {value!r}: expected {' or '.join(names)}")
        return value

    return parse


def _number(kind: type[int] | type[float], low: float, high: float) -> Callable[[str, str], Any]:
    """A number within [low, high]."""

    def parse(flag: str, text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise SettingsError(f"{flag} {text!r}: not a number") from None
        if not low <= value <= high:
            bounds = " and ".join(
                str(int(b)) if float(b).is_integer() else str(b) for b in (low, high)
            )
            raise SettingsError(f"{flag} {text!r}: must be between {bounds}")
        return value

    return parse


def _workers(flag: str, text: str) -> cpus.WorkerCount:
    """`auto`: what the container's CPU and memory limits allow (sidecar/cpus.py); else
    a count, obeyed."""
    if text.strip().lower() == "auto":
        return cpus.auto()
    n = int(_number(int, 1, cpus.MAX_WORKERS)(flag, text))
    return cpus.WorkerCount(n, f"{flag} {n}")


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Every runtime option, each declared once: its field says the flag, the variable,
    the default, the parser and the help (README's "Runtime options" lists them)."""

    policies: tuple[str, ...] = option(
        "--policy",
        "policy file or directory; repeatable (default: bundled default)",
        default=lambda: str(bundled_policy_dir() / "default.yaml"),
        repeatable=True,
    )
    proxy_listen: tuple[str, int] | None = option(
        "--listen",
        "explicit proxy ADDRESS:PORT, or 'off'",
        parse=_listen_or_off,
        default=DEFAULT_PROXY_LISTEN,
    )
    reverse: tuple[ReverseListener, ...] = option(
        "--reverse",
        "reverse listener PROVIDER[:HOST]@[ADDRESS:]PORT; repeatable",
        parse=_reverse,
        repeatable=True,
    )
    admin_listen: tuple[str, int] = option(
        "--admin",
        "admin ADDRESS:PORT for /metrics /healthz /readyz",
        parse=_listen,
        default=DEFAULT_ADMIN_LISTEN,
    )
    ca_dir: str = option(
        "--ca-dir", "directory of the interception CA; created if missing", default=default_ca_dir
    )
    resolver: str | None = option(
        "--resolver", "upstream DNS resolver ADDRESS[:PORT] (default: /etc/resolv.conf)"
    )
    upstream_ca: str | None = option(
        "--upstream-ca",
        "extra CA bundle (PEM) trusted upstream, added to the public roots",
        parse=_existing_file,
    )
    reload_interval: float = option(
        "--reload-interval",
        "seconds between policy file checks",
        parse=_number(float, 0.05, 3600),
        default="1",
    )
    transparent: tuple[tuple[str, int], ...] = option(
        "--transparent",
        "transparent listener ADDRESS:PORT for iptables-redirected TCP; repeatable "
        "(e.g. 127.0.0.1:15001 and [::1]:15001)",
        parse=_listen,
        repeatable=True,
    )
    dns: tuple[tuple[str, int], ...] = option(
        "--dns",
        "DNS listener ADDRESS:PORT for the pod's redirected DNS; repeatable",
        parse=_listen,
        repeatable=True,
    )
    dns_refuse_with: str = option(
        "--dns-refuse-with",
        "answer for refused names: refused (default) or nxdomain",
        parse=_one_of("refused", "nxdomain"),
        default="refused",
    )
    secrets_dir: str | None = option(
        "--secrets-dir",
        "directory of provider keys, one file per secret name (a mounted Kubernetes Secret)",
    )
    secrets_from_env: bool = switch(
        "--secrets-from-env",
        f"also read keys from {ENV_PREFIX}SECRET_<NAME> variables (weaker: any process "
        "in the container can read them)",
    )
    virtual_keys: str | None = option(
        "--virtual-keys",
        "virtual keys file: tenants, their hashed keys and providers (docs/credentials.md)",
    )
    alerts_config: str | None = option("--alerts-config", "alert sinks configuration file (YAML)")
    alert_spool_dir: str | None = option(
        "--alert-spool", "directory where undelivered alerts are kept"
    )
    # issue 10: DNS listener limits (see docs/limits.md, "DNS listener")
    dns_max_qps: float = option(
        "--dns-max-qps",
        "DNS questions per second, all sources",
        parse=_number(float, 1, 1_000_000),
        default="2000",
    )
    dns_max_qps_per_source: float = option(
        "--dns-max-qps-per-source",
        "DNS questions per second from one source address",
        parse=_number(float, 1, 1_000_000),
        default="500",
    )
    dns_max_sources: int = option(
        "--dns-max-sources",
        "source addresses the DNS rate limiter remembers",
        parse=_number(int, 1, 1_000_000),
        default="4096",
    )
    dns_max_pending: int = option(
        "--dns-max-pending",
        "DNS questions being answered at once",
        parse=_number(int, 1, 100_000),
        default="256",
    )
    dns_max_tcp_connections: int = option(
        "--dns-max-tcp-connections",
        "open DNS-over-TCP connections",
        parse=_number(int, 1, 100_000),
        default="64",
    )
    refusal_rate: float = option(  # issue 10: refusals/s answered at once (0 = no pacing)
        "--refusal-rate",
        "refusals per second answered at once; above it (after a 2 s burst) each refused "
        "answer waits, up to 1 s, still logged and alerted at once; 0 = off",
        parse=_number(float, 0, 1_000_000),
        default="20",
    )
    decision_format: str = option(  # issue 18: json (our line) or ocsf (sidecar/ocsf.py)
        "--decision-format",
        "decision log lines: json (default) or ocsf (OCSF 1.5.0 events, docs/ocsf.md)",
        parse=_one_of("json", "ocsf"),
        default="json",
    )
    # issue 10: HTTP/connection limits (sidecar/limits.py, docs/limits.md)
    limits: limits_mod.Limits = group(  # noqa: RUF009 - returns a dataclasses.field
        limits_mod.OPTIONS,
        limits_mod.from_values,
        limits_mod.LimitError,
    )
    # issue 15: usage limits' state, Redis and admin token (sidecar/usage_settings.py)
    usage: usage_settings.UsageSettings = group(  # noqa: RUF009 - a dataclasses.field
        usage_settings.OPTIONS,
        usage_settings.from_values,
        usage_settings.UsageSettingsError,
    )
    # issue 17: worker processes (sidecar/supervisor.py); docs/performance.md#workers
    # says how `auto` is resolved, and why
    workers: cpus.WorkerCount = option(  # noqa: RUF009 - returns a dataclasses.field
        "--workers",
        f"proxy processes sharing the listeners, supervised as one sidecar: N (up to "
        f"{cpus.MAX_WORKERS}) or 'auto': the CPUs the container may use (cgroup CPU quota, "
        "cpuset), 1 without a CPU limit, no more than its memory limit fits "
        f"({cpus.SUPERVISOR_MIB} + {cpus.WORKER_CEILING_MIB} N MiB); each costs ~100 MB "
        "(docs/performance.md#workers)",
        parse=_workers,
        default="auto",
    )


def options() -> list[Option | Switch]:
    """Every option, in `--help` order."""
    out: list[Option | Switch] = []
    for field in dataclasses.fields(Settings):
        spec = field.metadata["option"]
        out.extend(spec.options if isinstance(spec, Group) else [spec])
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for spec in options():
        if isinstance(spec, Switch):
            parser.add_argument(spec.flag, action="store_true", default=None, help=spec.help)
        else:
            action = "append" if spec.repeatable else "store"
            parser.add_argument(spec.flag, action=action, default=None, help=spec.help)


def resolve(args: argparse.Namespace) -> Settings:
    """Settings from flags, then EGRESS_SIDECAR_* variables, then defaults."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(Settings):
        spec = field.metadata["option"]
        values[field.name] = spec.value(
            args if isinstance(spec, Group) else getattr(args, spec.dest)
        )
    settings = Settings(**values)
    if settings.dns_max_qps_per_source > settings.dns_max_qps:
        raise SettingsError(
            f"--dns-max-qps-per-source {settings.dns_max_qps_per_source:g} exceeds "
            f"--dns-max-qps {settings.dns_max_qps:g}: one source could then take the whole "
            "budget; lower it or raise --dns-max-qps"
        )
    if settings.proxy_listen is None and not settings.reverse and not settings.transparent:
        raise SettingsError(
            "nothing to serve: --listen off and no --reverse or --transparent listener"
        )
    return settings
