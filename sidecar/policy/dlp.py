"""The `dlp:` section of a policy file (request DLP, issue 13): model and reader.

Written at the top level (the default for every provider) and under a provider (its
own changes to that default). docs/policy-reference.md documents the keys:

    dlp:
      enabled: true          # default true; false: this provider's bodies are not scanned
      high: block            # action for high-confidence findings without their own
      low: alert             # ... and for low-confidence ones
      actions: {jwt: redact, env_dump: block}   # per kind: block | redact | alert | ignore
      allow:                 # known false positives: any match drops the finding
        - {kinds: [jwt], value: "eyJhbGciOiJub25lIn0.*"}   # glob over the secret
        - {sha256: "<hex digest of the secret>"}           # one known value
        - {kinds: [secret_assignment], field: "$.metadata.*"}  # glob over the JSON path

Pure: no mitmproxy, no network. The loader calls `read_dlp()`; `sidecar.dlp.rules`
turns the sections into the rules one request is judged by.
"""

from __future__ import annotations

import dataclasses
import re
from enum import StrEnum

from yaml.nodes import Node

from sidecar import yamlfile
from sidecar.dlp.kinds import SecretKind
from sidecar.policy.model import SourceRef

__all__ = ["Action", "AllowRule", "DlpRules", "read_dlp"]


class Action(StrEnum):
    BLOCK = "block"  # refused in the provider's error format (audit mode: redacted)
    REDACT = "redact"  # forwarded with the secret replaced by a marker
    ALERT = "alert"  # forwarded unchanged, logged and paged
    IGNORE = "ignore"  # not reported


# How strong an action is: a request takes the strongest action of its findings.
STRENGTH = {Action.IGNORE: 0, Action.ALERT: 1, Action.REDACT: 2, Action.BLOCK: 3}


@dataclasses.dataclass(frozen=True, slots=True)
class AllowRule:
    """A known false positive. Every given condition must hold for a hit to be dropped."""

    kinds: frozenset[SecretKind] | None  # None: any kind
    value: str | None  # glob (`*`, `?`) over the secret text
    sha256: str | None  # lower-case hex digest of the secret text (UTF-8)
    field: str | None  # glob over the location ("$.messages[0].content")
    source: SourceRef


@dataclasses.dataclass(frozen=True, slots=True)
class DlpRules:
    """One `dlp:` section as written; None fields inherit (provider <- top level <- default)."""

    enabled: bool | None = None
    high: Action | None = None
    low: Action | None = None
    actions: tuple[tuple[SecretKind, Action], ...] = ()
    allow: tuple[AllowRule, ...] = ()
    source: SourceRef | None = None


_KEYS = ("enabled", "high", "low", "actions", "allow")
_ALLOW_KEYS = ("kinds", "value", "sha256", "field")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Kinds a policy cannot change: the sidecar's own keys are always refused
# (gateway_holds_credential, S7), in audit mode too.
FIXED_KINDS = frozenset({SecretKind.SIDECAR_KEY})


def read_dlp(reader: yamlfile.YamlChecker, node: Node, key: str) -> DlpRules | None:
    """Read one `dlp:` mapping; problems go to `reader` (file:line: key: message)."""
    errors = len(reader.problems)
    fields = reader.mapping(node, key, _KEYS)
    if fields is None:
        return None
    enabled = None
    if "enabled" in fields:
        vnode = fields["enabled"][1]
        if getattr(vnode, "tag", None) == yamlfile.BOOL:
            enabled = str(vnode.value).lower() == "true"
        else:
            reader.err(vnode, f"{key}.enabled", f"expected true or false, got {_d(vnode)}")
    high = _action(reader, fields["high"][1], f"{key}.high") if "high" in fields else None
    low = _action(reader, fields["low"][1], f"{key}.low") if "low" in fields else None
    actions: list[tuple[SecretKind, Action]] = []
    if "actions" in fields:
        for name, (knode, vnode) in (
            reader.mapping(fields["actions"][1], f"{key}.actions", None) or {}
        ).items():
            kind = _kind(reader, knode, name, f"{key}.actions.{name}")
            action = _action(reader, vnode, f"{key}.actions.{name}")
            if kind is not None and action is not None:
                actions.append((kind, action))
    allow: list[AllowRule] = []
    if "allow" in fields:
        for index, item in enumerate(
            reader.seq(fields["allow"][1], f"{key}.allow", "allow pattern") or []
        ):
            rule = _allow(reader, item, f"{key}.allow[{index}]")
            if rule is not None:
                allow.append(rule)
    if len(reader.problems) != errors:
        return None
    return DlpRules(
        enabled,
        high,
        low,
        tuple(actions),
        tuple(allow),
        SourceRef(reader.file, yamlfile.line(node)),
    )


def _d(node: Node) -> str:
    return yamlfile.describe(node)


def _choices() -> str:
    return ", ".join(a.value for a in Action)


def _action(reader: yamlfile.YamlChecker, node: Node, key: str) -> Action | None:
    text = reader.string(node, key, f"one of {_choices()}")
    if text is None:
        return None
    try:
        return Action(text)
    except ValueError:
        reader.err(node, key, f"unknown action {text!r}; expected one of {_choices()}")
        return None


def _kind(reader: yamlfile.YamlChecker, node: Node, name: str, key: str) -> SecretKind | None:
    try:
        kind = SecretKind(name)
    except ValueError:
        known = ", ".join(k.value for k in SecretKind if k not in FIXED_KINDS)
        reader.err(node, key, f"unknown kind {name!r}; the kinds are: {known}")
        return None
    if kind in FIXED_KINDS:
        reader.err(
            node,
            key,
            "the sidecar's own keys are always refused (gateway_holds_credential), in audit "
            "mode too: remove this line",
        )
        return None
    return kind


def _allow(reader: yamlfile.YamlChecker, node: Node, key: str) -> AllowRule | None:
    errors = len(reader.problems)
    fields = reader.mapping(node, key, _ALLOW_KEYS)
    if fields is None:
        return None
    kinds: frozenset[SecretKind] | None = None
    if "kinds" in fields:
        found = set()
        for item in reader.seq(fields["kinds"][1], f"{key}.kinds", "kind") or []:
            name = reader.string(item, f"{key}.kinds", "a kind name")
            if name is not None:
                kind = _kind(reader, item, name, f"{key}.kinds")
                if kind is not None:
                    found.add(kind)
        kinds = frozenset(found)
    texts: dict[str, str | None] = {}
    for name in ("value", "sha256", "field"):
        texts[name] = None
        if name in fields:
            texts[name] = reader.string(fields[name][1], f"{key}.{name}")
    value, sha256, field = texts["value"], texts["sha256"], texts["field"]
    if value is not None and len(value.replace("*", "").replace("?", "")) < 4:
        reader.err(
            fields["value"][1],
            f"{key}.value",
            f"{value!r} would allow almost any secret: give at least 4 literal characters, "
            "or turn the kind off with 'actions: {KIND: ignore}'",
        )
    if sha256 is not None and not _SHA256.fullmatch(sha256):
        reader.err(
            fields["sha256"][1],
            f"{key}.sha256",
            "expected 64 lower-case hex digits (sha256sum of the secret, no newline)",
        )
    if value is None and sha256 is None and field is None and len(reader.problems) == errors:
        reader.err(
            node,
            key,
            "an allow pattern needs 'value', 'sha256' or 'field'; to stop reporting a kind "
            "altogether write 'actions: {KIND: ignore}'",
        )
    if len(reader.problems) != errors:
        return None
    return AllowRule(kinds, value, sha256, field, SourceRef(reader.file, yamlfile.line(node)))


def one_top_level_dlp(seen: list[DlpRules], new: DlpRules) -> list[yamlfile.Problem]:
    """Several files merge into one policy; only one of them may set the top-level
    `dlp:` (two would have to be merged by guessing)."""
    if not seen or new.source is None:
        return []
    first = seen[0].source
    return [
        yamlfile.Problem(
            new.source.file,
            new.source.line,
            "dlp",
            f"the top-level dlp section is also written at {first}; write it in one file "
            "(provider entries can each have their own)",
        )
    ]
