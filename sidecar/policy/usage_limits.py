"""The `usage_limits:` section of a policy (issue 15): rate limits per tenant and per
provider, the anomaly rule that suspends a tenant's virtual key, and what to do when
the shared backend (Redis) cannot be reached. Pure: parsed from composed YAML nodes.

    usage_limits:
      on_backend_failure: closed        # default of every entry: closed | open
      tenants:
        team-search: {requests_per_minute: 600, tokens_per_minute: 200000,
                      tokens_per_day: 5000000, on_backend_failure: open}
        "*": {requests_per_minute: 100}   # every tenant without an entry of its own
      providers:
        openai: {requests_per_minute: 3000, tokens_per_minute: 2000000}
      anomaly:
        factor: 10                       # suspend above 10 x the tenant's baseline
        warmup_minutes: 60               # ... once it has this much history
        floor_requests_per_minute: 60    # ... and never below these rates
        floor_tokens_per_minute: 100000
        half_life_minutes: 60            # how fast the baseline follows the traffic

At most one file of a policy may hold the section; providers it names must exist.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Mapping
from enum import StrEnum

from yaml.nodes import Node, ScalarNode

from sidecar import yamlfile
from sidecar.policy.model import SourceRef
from sidecar.yamlfile import Problem

ANY_TENANT = "*"
_TENANT = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")  # as in the virtual keys file
_TOP = ("on_backend_failure", "tenants", "providers", "anomaly")
_RATES = ("requests_per_minute", "tokens_per_minute", "tokens_per_day")
_ENTRY = (*_RATES, "on_backend_failure")
_ANOMALY = (
    "factor",
    "warmup_minutes",
    "floor_requests_per_minute",
    "floor_tokens_per_minute",
    "half_life_minutes",
)
_HINTS = {
    "rpm": "write requests_per_minute",
    "tpm": "write tokens_per_minute",
    "tpd": "write tokens_per_day",
    "requests_per_day": "a day's budget is in tokens: tokens_per_day",
    "fail_open": "write on_backend_failure: open",
}
MAX_RATE = 10**12


class FailureMode(StrEnum):
    """What a limit does while the shared backend cannot be reached."""

    CLOSED = "closed"  # refuse (usage_backend_unavailable, 503)
    OPEN = "open"  # let through, logged (would_block), counted and alerted


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimit:
    """The limits of one tenant or provider entry. None: that rate is not limited."""

    scope: str  # "tenant:team-a" or "provider:openai": the counters' name
    requests_per_minute: int | None
    tokens_per_minute: int | None
    tokens_per_day: int | None
    on_backend_failure: FailureMode
    source: SourceRef


@dataclasses.dataclass(frozen=True, slots=True)
class AnomalyRule:
    factor: float = 10.0
    warmup_minutes: int = 60
    floor_requests_per_minute: int = 60
    floor_tokens_per_minute: int = 100_000
    half_life_minutes: float = 60.0
    source: SourceRef | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class UsagePolicy:
    tenants: Mapping[str, RateLimit]
    providers: Mapping[str, RateLimit]
    anomaly: AnomalyRule | None
    on_backend_failure: FailureMode
    source: SourceRef

    def tenant(self, name: str) -> RateLimit | None:
        """A tenant's own entry, else the `"*"` entry (counted per tenant), else None."""
        own = self.tenants.get(name)
        if own is not None:
            return own
        default = self.tenants.get(ANY_TENANT)
        if default is None:
            return None
        return dataclasses.replace(default, scope=f"tenant:{name}")


def read_usage_limits(
    reader: yamlfile.YamlChecker, node: Node, key_line: int
) -> UsagePolicy | None:
    """Read the section; problems go to `reader` with file, line and key."""
    top = reader.mapping(node, "usage_limits", _TOP, _HINTS)
    if top is None:
        return None
    default = FailureMode.CLOSED
    if "on_backend_failure" in top:
        default = _failure(reader, top["on_backend_failure"][1], "usage_limits") or default
    tenants: dict[str, RateLimit] = {}
    providers: dict[str, RateLimit] = {}
    for section, out, kind in (("tenants", tenants, "tenant"), ("providers", providers, "")):
        if section not in top:
            continue
        where = f"usage_limits.{section}"
        for name, (knode, body) in (reader.mapping(top[section][1], where, None) or {}).items():
            entry_key = f"{where}.{name}"
            if kind and name != ANY_TENANT and not _TENANT.match(name):
                reader.err(
                    knode,
                    entry_key,
                    "tenant names use lower-case letters, digits, '_', '.', '-' (as in the "
                    'virtual keys file), or "*" for every tenant without an entry',
                )
                continue
            scope = f"{kind or 'provider'}:{name}"
            limit = _entry(reader, body, entry_key, scope, default)
            if limit is not None:
                out[name] = limit
    anomaly = None
    if "anomaly" in top:
        anomaly = _anomaly(reader, top["anomaly"][1])
    return UsagePolicy(
        tenants=tenants,
        providers=providers,
        anomaly=anomaly,
        on_backend_failure=default,
        source=SourceRef(reader.file, key_line),
    )


def merge_usage_limits(
    found: list[UsagePolicy], provider_names: Collection[str], problems: list[Problem]
) -> UsagePolicy | None:
    """The one section of the policy; checks it against the other files."""
    if not found:
        return None
    first = found[0]
    for other in found[1:]:
        problems.append(
            Problem(
                other.source.file,
                other.source.line,
                "usage_limits",
                f"already given in {first.source}: keep one usage_limits section",
            )
        )
    for name, limit in first.providers.items():
        if name not in provider_names:
            known = ", ".join(sorted(provider_names)) or "none"
            problems.append(
                Problem(
                    limit.source.file,
                    limit.source.line,
                    f"usage_limits.providers.{name}",
                    f"no provider {name!r} in the policy (providers: {known})",
                )
            )
    return first


def _entry(
    reader: yamlfile.YamlChecker, body: Node, key: str, scope: str, default: FailureMode
) -> RateLimit | None:
    fields = reader.mapping(body, key, _ENTRY, _HINTS)
    if fields is None:
        return None
    rates: dict[str, int | None] = dict.fromkeys(_RATES)
    for name in _RATES:
        if name in fields:
            rates[name] = _count(reader, fields[name][1], f"{key}.{name}", low=1)
    mode = default
    if "on_backend_failure" in fields:
        mode = _failure(reader, fields["on_backend_failure"][1], key) or default
    if not any(n in fields for n in _RATES):
        reader.err(body, key, f"no limit given: set at least one of {', '.join(_RATES)}")
        return None
    return RateLimit(
        scope=scope,
        requests_per_minute=rates["requests_per_minute"],
        tokens_per_minute=rates["tokens_per_minute"],
        tokens_per_day=rates["tokens_per_day"],
        on_backend_failure=mode,
        source=SourceRef(reader.file, yamlfile.line(body)),
    )


def _anomaly(reader: yamlfile.YamlChecker, node: Node) -> AnomalyRule | None:
    key = "usage_limits.anomaly"
    fields = reader.mapping(node, key, _ANOMALY, _HINTS)
    if fields is None:
        return None
    rule = AnomalyRule(source=SourceRef(reader.file, yamlfile.line(node)))
    values: dict[str, float | int] = {}
    if "factor" in fields:
        factor = _number(reader, fields["factor"][1], f"{key}.factor")
        if factor is not None and not 1.0 < factor <= 10_000:
            reader.err(fields["factor"][1], f"{key}.factor", "must be above 1 and at most 10000")
        elif factor is not None:
            values["factor"] = factor
    if "half_life_minutes" in fields:
        half = _number(reader, fields["half_life_minutes"][1], f"{key}.half_life_minutes")
        if half is not None and not 1.0 <= half <= 100_000:
            node_ = fields["half_life_minutes"][1]
            reader.err(node_, f"{key}.half_life_minutes", "must be between 1 and 100000")
        elif half is not None:
            values["half_life_minutes"] = half
    for name in ("warmup_minutes", "floor_requests_per_minute", "floor_tokens_per_minute"):
        if name in fields:
            count = _count(reader, fields[name][1], f"{key}.{name}", low=0)
            if count is not None:
                values[name] = count
    return dataclasses.replace(rule, **values)  # type: ignore[arg-type]


def _count(reader: yamlfile.YamlChecker, node: Node, key: str, *, low: int) -> int | None:
    if isinstance(node, ScalarNode) and node.tag == yamlfile.INT:
        try:
            value = int(str(node.value).replace("_", ""), 0)
        except ValueError:
            value = -1
        if low <= value <= MAX_RATE:
            return value
    reader.err(node, key, f"expected a whole number from {low} to {MAX_RATE}, e.g. 600")
    return None


def _number(reader: yamlfile.YamlChecker, node: Node, key: str) -> float | None:
    if isinstance(node, ScalarNode) and node.tag in (yamlfile.INT, yamlfile.FLOAT):
        try:
            return float(str(node.value).replace("_", ""))
        except ValueError:
            pass
    reader.err(node, key, "expected a number, e.g. 10")
    return None


def _failure(reader: yamlfile.YamlChecker, node: Node, where: str) -> FailureMode | None:
    key = f"{where}.on_backend_failure"
    if isinstance(node, ScalarNode) and node.tag == yamlfile.STR:
        try:
            return FailureMode(str(node.value))
        except ValueError:
            pass
    if isinstance(node, ScalarNode) and node.tag == yamlfile.BOOL:
        reader.err(node, key, "write closed or open (quote nothing: 'on'/'off' are booleans)")
        return None
    reader.err(node, key, "expected closed (refuse while the backend is down) or open (allow)")
    return None
