"""Runtime alert configuration: strict YAML, secrets only from files.

Read with the shared reader (`sidecar/yamlfile.py`): duplicate keys refused, every
problem collected. Errors name file, line and key (``alerts.yaml:12: sinks[1].url: ...``).
Secret values (routing keys, webhook URLs, HMAC keys, bearer tokens) are read from the files the
config names and are never part of an error message, a log line or a ``repr``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import urllib.parse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import yaml

from sidecar import yamlfile
from sidecar.alerts.grouping import GroupingSettings
from sidecar.decision import Severity
from sidecar.yamlfile import Problem

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

SINK_TYPES = ("alertmanager", "pagerduty", "slack", "webhook")
PAGERDUTY_DEFAULT_URL = "https://events.pagerduty.com"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_EMPTY = "empty file: an alerts config starts with 'version: 1'"


class ConfigError(ValueError):
    """The alerts config is invalid: ``file:line: key: message``, one problem a line.

    `problems` lists them (empty when the file could not be read at all).
    """

    def __init__(self, problems: str | Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = () if isinstance(problems, str) else tuple(problems)
        super().__init__(problems if isinstance(problems, str) else "\n".join(map(str, problems)))


class SinkSecret:
    """A secret value that never prints itself."""

    __slots__ = ("_value", "origin")

    def __init__(self, value: str, origin: str) -> None:
        self._value = value
        self.origin = origin  # the file it came from, safe to show

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(from {self.origin})"

    __str__ = __repr__


@dataclasses.dataclass(frozen=True)
class DeliverySettings:
    max_queue: int = 10000
    max_age: float = 24 * 3600.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    max_retry_after: float = 300.0
    timeout: float = 10.0
    batch_size: int = 64
    drain_timeout: float = 2.0


@dataclasses.dataclass(frozen=True)
class SinkConfig:
    name: str
    type: str
    url: str | SinkSecret  # SinkSecret when read from url_file (may carry a token)
    min_severity: Severity = Severity.INFO
    include_audit: bool = True
    send_updates: bool = True
    routing_key: SinkSecret | None = None  # pagerduty
    hmac_key: SinkSecret | None = None  # webhook
    bearer_token: SinkSecret | None = None  # alertmanager / webhook
    ca_file: str | None = None
    generator_url: str | None = None  # alertmanager

    def url_value(self) -> str:
        return self.url.reveal() if isinstance(self.url, SinkSecret) else self.url

    def display(self) -> str:
        """Loggable: name, type and scheme://host only (never path, query or token)."""
        return f"{self.name} ({self.type} {safe_url(self.url_value())})"


@dataclasses.dataclass(frozen=True)
class AlertsConfig:
    grouping: GroupingSettings = dataclasses.field(default_factory=GroupingSettings)
    delivery: DeliverySettings = dataclasses.field(default_factory=DeliverySettings)
    sinks: tuple[SinkConfig, ...] = ()
    tick: float = 0.2
    state_interval: float = 5.0
    file: str | None = None


def safe_url(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    return f"{parts.scheme}://{host}{port}"


# ----------------------------------------------------------------------------- loading


class _Invalid(Exception):
    """A value problem, already recorded: stop reading this section or sink."""


class _Ctx:
    """The file's shared reader (sidecar/yamlfile.py) and where relative paths start."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.base = os.path.dirname(os.path.abspath(file))
        self.problems: list[Problem] = []
        self.reader = yamlfile.YamlChecker(file, self.problems)

    def err(self, node: yaml.Node, key: str, msg: str) -> _Invalid:
        self.reader.err(node, key, msg)
        return _Invalid()


def _mapping(ctx: _Ctx, node: yaml.Node, key: str, allowed: set[str]) -> dict[str, yaml.Node]:
    """Duplicate and unknown keys are recorded (the rest is still read); the value is not
    shown when it is not a mapping (it may be a URL with a token)."""
    if not isinstance(node, yaml.MappingNode):
        raise ctx.err(node, key or "<top>", "expected a mapping")
    fields = ctx.reader.mapping(node, key, sorted(allowed)) or {}
    return {name: value for name, (_, value) in fields.items()}


def _scalar(ctx: _Ctx, node: yaml.Node, key: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise ctx.err(node, key, "expected a single value")
    return yaml.SafeLoader("").construct_object(node)


def _str(ctx: _Ctx, node: yaml.Node, key: str) -> str:
    value = _scalar(ctx, node, key)
    if not isinstance(value, str) or not value:
        raise ctx.err(node, key, "expected a non-empty string")
    return value


def _bool(ctx: _Ctx, node: yaml.Node, key: str) -> bool:
    value = _scalar(ctx, node, key)
    if not isinstance(value, bool):
        raise ctx.err(node, key, "expected true or false")
    return value


def _int(ctx: _Ctx, node: yaml.Node, key: str, lo: int, hi: int) -> int:
    value = _scalar(ctx, node, key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ctx.err(node, key, f"expected an integer from {lo} to {hi}")
    return value


def _duration(ctx: _Ctx, node: yaml.Node, key: str, lo: float, hi: float) -> float:
    value = _scalar(ctx, node, key)
    if isinstance(value, bool):
        raise ctx.err(node, key, "expected a duration like 30s, 5m, 1h or seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value).strip())
        if not match:
            raise ctx.err(node, key, "expected a duration like 30s, 5m, 1h or seconds")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not lo <= seconds <= hi:
        raise ctx.err(node, key, f"duration must be between {lo}s and {hi}s")
    return seconds


def _path(ctx: _Ctx, node: yaml.Node, key: str) -> str:
    value = _str(ctx, node, key)
    return value if os.path.isabs(value) else os.path.join(ctx.base, value)


def _secret(ctx: _Ctx, node: yaml.Node, key: str) -> SinkSecret:
    path = _path(ctx, node, key)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(65536)
    except OSError as exc:
        raise ctx.err(node, key, f"cannot read secret file {path}: {exc.strerror}") from None
    try:
        value = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ctx.err(node, key, f"secret file {path} is not UTF-8") from None
    if not value:
        raise ctx.err(node, key, f"secret file {path} is empty")
    if "\n" in value or "\r" in value or "\x00" in value:
        raise ctx.err(node, key, f"secret file {path} must hold a single line")
    return SinkSecret(value, path)


def _check_url(ctx: _Ctx, node: yaml.Node, key: str, url: str, *, inline: bool) -> None:
    where = "" if inline else " (in the secret file)"
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port
    except ValueError:
        raise ctx.err(node, key, f"not a valid URL{where}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ctx.err(node, key, f"URL must be http(s)://host[:port]/...{where}")
    if inline and (parts.username or parts.password or parts.query or parts.fragment):
        raise ctx.err(
            node,
            key,
            "inline URLs must not carry credentials, a query or a fragment; "
            "put a URL with a token in a file and name it with url_file",
        )


_SINK_KEYS: dict[str, set[str]] = {
    "alertmanager": {"url", "url_file", "bearer_token_file", "generator_url"},
    "pagerduty": {"url", "routing_key_file"},
    "slack": {"url_file"},
    "webhook": {"url", "url_file", "hmac_key_file", "bearer_token_file"},
}
_COMMON_SINK_KEYS = {"name", "type", "min_severity", "include_audit", "send_updates", "ca_file"}


def _sink(ctx: _Ctx, node: yaml.Node, key: str, seen: set[str]) -> SinkConfig:
    if not isinstance(node, yaml.MappingNode):
        raise ctx.err(node, key, "expected a mapping")
    type_node = next((v for k, v in node.value if getattr(k, "value", None) == "type"), None)
    if type_node is None:
        raise ctx.err(node, f"{key}.type", f"required (one of {', '.join(SINK_TYPES)})")
    sink_type = _str(ctx, type_node, f"{key}.type")
    if sink_type not in SINK_TYPES:
        raise ctx.err(type_node, f"{key}.type", f"must be one of {', '.join(SINK_TYPES)}")
    before = len(ctx.problems)
    fields = _mapping(ctx, node, key, _COMMON_SINK_KEYS | _SINK_KEYS[sink_type])
    if len(ctx.problems) > before:
        raise _Invalid()  # a misspelt or doubled key: "required" problems would be noise
    if "name" not in fields:
        raise ctx.err(node, f"{key}.name", "required")
    name = _str(ctx, fields["name"], f"{key}.name")
    if not _NAME.match(name):
        raise ctx.err(fields["name"], f"{key}.name", "use 1-32 of [a-z0-9_-], starting alnum")
    if name in seen:
        raise ctx.err(fields["name"], f"{key}.name", f"duplicate sink name {name!r}")
    seen.add(name)

    url: str | SinkSecret
    if "url" in fields and "url_file" in fields:
        raise ctx.err(fields["url_file"], f"{key}.url_file", "give url or url_file, not both")
    if "url_file" in fields:
        url = _secret(ctx, fields["url_file"], f"{key}.url_file")
        _check_url(ctx, fields["url_file"], f"{key}.url_file", url.reveal(), inline=False)
    elif "url" in fields:
        url = _str(ctx, fields["url"], f"{key}.url")
        _check_url(ctx, fields["url"], f"{key}.url", url, inline=True)
    elif sink_type == "pagerduty":
        url = PAGERDUTY_DEFAULT_URL
    else:
        need = "url_file" if sink_type == "slack" else "url or url_file"
        raise ctx.err(node, f"{key}.{need}", "required")

    kwargs: dict[str, Any] = {}
    if sink_type == "pagerduty":
        if "routing_key_file" not in fields:
            raise ctx.err(node, f"{key}.routing_key_file", "required")
        kwargs["routing_key"] = _secret(ctx, fields["routing_key_file"], f"{key}.routing_key_file")
    if sink_type == "webhook":
        if "hmac_key_file" not in fields:
            raise ctx.err(node, f"{key}.hmac_key_file", "required (payloads are signed)")
        kwargs["hmac_key"] = _secret(ctx, fields["hmac_key_file"], f"{key}.hmac_key_file")
    if "bearer_token_file" in fields:
        kwargs["bearer_token"] = _secret(
            ctx, fields["bearer_token_file"], f"{key}.bearer_token_file"
        )
    if "ca_file" in fields:
        ca = _path(ctx, fields["ca_file"], f"{key}.ca_file")
        if not os.path.isfile(ca):
            raise ctx.err(fields["ca_file"], f"{key}.ca_file", f"no such file {ca}")
        kwargs["ca_file"] = ca
    if "generator_url" in fields:
        gen = _str(ctx, fields["generator_url"], f"{key}.generator_url")
        _check_url(ctx, fields["generator_url"], f"{key}.generator_url", gen, inline=True)
        kwargs["generator_url"] = gen
    if "min_severity" in fields:
        sev = _str(ctx, fields["min_severity"], f"{key}.min_severity")
        if sev not in {s.value for s in Severity}:
            raise ctx.err(
                fields["min_severity"], f"{key}.min_severity", "one of info, warning, critical"
            )
        kwargs["min_severity"] = Severity(sev)
    for flag in ("include_audit", "send_updates"):
        if flag in fields:
            kwargs[flag] = _bool(ctx, fields[flag], f"{key}.{flag}")
    if sink_type in ("pagerduty", "slack") and "send_updates" not in fields:
        kwargs["send_updates"] = False  # trigger + resolve only: no chat spam
    return SinkConfig(name=name, type=sink_type, url=url, **kwargs)


def load_config(path: str) -> AlertsConfig:
    """Load and validate the alert config. Raises ConfigError listing every problem found
    (one ``file:line: key: message`` a line); a sink or section stops at its first bad
    value, the others are still checked."""
    ctx = _Ctx(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    root = yamlfile.compose(path, data, ctx.problems, empty=_EMPTY)
    config = None
    if root is not None:
        with contextlib.suppress(_Invalid):
            config = _read(ctx, root)
    if ctx.problems or config is None:
        raise ConfigError(sorted(ctx.problems, key=lambda p: p.line))
    return config


def _read(ctx: _Ctx, root: yaml.Node) -> AlertsConfig:
    top = _mapping(ctx, root, "", {"version", "grouping", "delivery", "sinks", "tick"})
    if "version" not in top:
        ctx.err(root, "version", "required (version: 1)")
    else:
        with contextlib.suppress(_Invalid):
            if _scalar(ctx, top["version"], "version") != 1:
                ctx.err(top["version"], "version", "only version 1 is supported")

    grouping = GroupingSettings()
    if "grouping" in top:
        grouping = _section(ctx, _grouping, top["grouping"], grouping)
    delivery = DeliverySettings()
    if "delivery" in top:
        delivery = _section(ctx, _delivery, top["delivery"], delivery)
    tick: float = 0.2
    if "tick" in top:
        tick = _section(ctx, lambda c, n: _duration(c, n, "tick", 0.01, 10.0), top["tick"], tick)

    sinks: list[SinkConfig] = []
    if "sinks" in top:
        node = top["sinks"]
        if not isinstance(node, yaml.SequenceNode):
            raise ctx.err(node, "sinks", "expected a list")
        seen: set[str] = set()
        for i, item in enumerate(node.value):
            with contextlib.suppress(_Invalid):
                sinks.append(_sink(ctx, item, f"sinks[{i}]", seen))
    return AlertsConfig(
        grouping=grouping, delivery=delivery, sinks=tuple(sinks), tick=tick, file=ctx.file
    )


def _section[T](ctx: _Ctx, read: Callable[[_Ctx, yaml.Node], T], node: yaml.Node, default: T) -> T:
    """Read one section; on a bad value (already recorded) go on with the default."""
    try:
        return read(ctx, node)
    except _Invalid:
        return default


def _per_minute(ctx: _Ctx, node: yaml.Node, key: str, lo: int, hi: int) -> float:
    return float(_int(ctx, node, key, lo, hi))


# A settings section's keys: field -> (reader, low, high), checked in this order.
_GROUPING_FIELDS: dict[str, tuple[Callable[..., Any], float, float]] = {
    "resend_interval": (_duration, 0.1, 7 * 86400),
    "resolve_after": (_duration, 0.1, 7 * 86400),
    "max_new_per_minute": (_per_minute, 1, 10000),
    "burst": (_int, 1, 1000),
    "max_active": (_int, 1, 100000),
    "max_destinations_per_reason": (_int, 1, 1000),
    "sample_hosts": (_int, 1, 20),
}
_DELIVERY_FIELDS: dict[str, tuple[Callable[..., Any], float, float]] = {
    "max_queue": (_int, 1, 1000000),
    "batch_size": (_int, 1, 1000),
    "max_age": (_duration, 1.0, 30 * 86400.0),
    "backoff_initial": (_duration, 0.001, 3600.0),
    "backoff_max": (_duration, 0.001, 86400.0),
    "max_retry_after": (_duration, 0.0, 86400.0),
    "timeout": (_duration, 0.1, 600.0),
    "drain_timeout": (_duration, 0.0, 600.0),
}


def _settings_section[T: DataclassInstance](
    ctx: _Ctx,
    node: yaml.Node,
    name: str,
    defaults: T,
    fields: dict[str, tuple[Callable[..., Any], float, float]],
) -> T:
    given = _mapping(ctx, node, name, set(fields))
    changes = {
        field: read(ctx, given[field], f"{name}.{field}", low, high)
        for field, (read, low, high) in fields.items()
        if field in given
    }
    return dataclasses.replace(defaults, **changes)


def _grouping(ctx: _Ctx, node: yaml.Node) -> GroupingSettings:
    return _settings_section(ctx, node, "grouping", GroupingSettings(), _GROUPING_FIELDS)


def _delivery(ctx: _Ctx, node: yaml.Node) -> DeliverySettings:
    return _settings_section(ctx, node, "delivery", DeliverySettings(), _DELIVERY_FIELDS)
