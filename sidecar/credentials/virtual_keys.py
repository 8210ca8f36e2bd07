"""Virtual keys: per-tenant stand-ins the gateway sends instead of provider keys.

The gateway is configured with a virtual key per tenant (`vk-` + 43 random URL-safe
characters, 256 bits). The sidecar maps it to a tenant, checks that the tenant may
use the provider of the vetted destination, and adds that provider's real key (or the
tenant's own secret for that provider). Only hashes of virtual keys are stored::

    # virtual-keys.yaml (JSON works too)
    version: 1
    tenants:
      team-search:
        keys:
          - sha256:3f0a...                       # current key
          - {hash: "sha256:9b1c...", revoked: true}  # the key it replaced
        providers:
          openai: {}                              # the provider's own secret
          anthropic: {secret: anthropic-search}   # a secret of its own
      team-legacy:
        revoked: true                             # every key of the tenant refused
        keys: [sha256:77aa...]
        providers: [openai]                       # a list means "default secrets"

Why plain SHA-256 and not a keyed or slow hash: slow hashes (bcrypt, argon2) and keyed
hashes (HMAC with a pepper) exist to protect *guessable* secrets such as passwords.
Virtual keys are not guessable: `generate_virtual_key()` draws 256 bits, and
`hash_virtual_key()` refuses keys with fewer than 128 bits' worth of characters, so
inverting a SHA-256 digest is out of reach and the file may live in a ConfigMap
without a second secret (a pepper) to distribute and rotate. A slow hash would also
cost milliseconds on every request. The lookup hashes the presented key once and looks
the digest up in a dictionary, then confirms with `hmac.compare_digest`; timing reveals
nothing useful because an attacker learns at most something about a digest, not a key.

Run `python -m sidecar.credentials new` to create a key and its hash, or
`... hash` to hash a key read from stdin (never pass keys as arguments: they end up in
shell history and `ps`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "VIRTUAL_KEY_PREFIX",
    "Tenant",
    "VirtualKeyError",
    "VirtualKeySource",
    "VirtualKeys",
    "generate_virtual_key",
    "hash_virtual_key",
    "is_virtual_key",
    "load_virtual_keys",
    "parse_virtual_keys",
]

VIRTUAL_KEY_PREFIX = "vk-"
MIN_KEY_CHARS = 22  # after the prefix: 22 URL-safe base64 chars = 132 bits
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
_TENANT = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_KEY_CHARS = re.compile(r"^[A-Za-z0-9_-]+$")


class VirtualKeyError(ValueError):
    """The virtual keys file is invalid. Messages name the file and key, never a key."""


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    providers: Mapping[str, str | None]  # provider -> secret name (None: provider's own)
    revoked: bool = False

    def may_use(self, provider: str) -> bool:
        return provider in self.providers

    def secret_for(self, provider: str, default: str) -> str:
        """The secret to inject for `provider`: the tenant's own or the default."""
        own = self.providers.get(provider)
        return own if own is not None else default


@dataclass(frozen=True, slots=True)
class VirtualKeys:
    """An immutable, loaded virtual keys file."""

    tenants: Mapping[str, Tenant]
    # digest -> (digest, tenant, key revoked)
    _by_digest: Mapping[str, tuple[str, Tenant, bool]] = field(repr=False)
    source: str = ""

    def lookup(self, presented: str) -> Tenant | None:
        """The tenant for a presented virtual key; None if unknown or revoked."""
        tenant, _ = self.explain(presented)
        return tenant

    def explain(self, presented: str) -> tuple[Tenant | None, str]:
        """Like `lookup`, with a safe reason when it fails ("unknown", "revoked")."""
        digest = _digest(presented)
        entry = self._by_digest.get(digest)
        if entry is None:
            return None, "unknown virtual key"
        stored, tenant, key_revoked = entry
        if not hmac.compare_digest(stored, digest):  # pragma: no cover - dict hit
            return None, "unknown virtual key"
        if tenant.revoked:
            return None, f"tenant {tenant.name!r} is revoked"
        if key_revoked:
            return None, f"this virtual key of tenant {tenant.name!r} is revoked"
        return tenant, "ok"


def is_virtual_key(value: str) -> bool:
    """Does `value` have the shape of a virtual key (not whether it is known)?"""
    return value.startswith(VIRTUAL_KEY_PREFIX) and bool(
        _KEY_CHARS.match(value[len(VIRTUAL_KEY_PREFIX) :])
    )


def generate_virtual_key() -> str:
    return VIRTUAL_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_virtual_key(key: str) -> str:
    """`sha256:<hex>` for the virtual keys file. Refuses short or malformed keys."""
    key = key.strip()
    if not is_virtual_key(key):
        raise VirtualKeyError(
            f"a virtual key starts with {VIRTUAL_KEY_PREFIX!r} followed by letters, digits, "
            "'-' or '_'"
        )
    if len(key) - len(VIRTUAL_KEY_PREFIX) < MIN_KEY_CHARS:
        raise VirtualKeyError(
            f"a virtual key needs at least {MIN_KEY_CHARS} random characters after "
            f"{VIRTUAL_KEY_PREFIX!r}; use generate_virtual_key()"
        )
    return "sha256:" + hashlib.sha256(key.encode("ascii")).hexdigest()


def _digest(presented: str) -> str:
    return "sha256:" + hashlib.sha256(presented.encode("utf-8", "surrogateescape")).hexdigest()


# -- loading --------------------------------------------------------------------


def load_virtual_keys(path: str | os.PathLike[str]) -> VirtualKeys:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise VirtualKeyError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise VirtualKeyError(f"{path}: not UTF-8") from None
    return parse_virtual_keys(text, source=str(path))


def parse_virtual_keys(text: str, *, source: str = "<virtual keys>") -> VirtualKeys:
    try:
        if source.endswith(".json"):
            doc = json.loads(text)
        else:
            doc = yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise VirtualKeyError(f"{source}: not valid YAML/JSON: {type(exc).__name__}") from None
    err = _Errors(source)
    if not isinstance(doc, dict):
        raise err.at("", "the file must be a mapping with 'version' and 'tenants'")
    _only(err, "", doc, {"version", "tenants"})
    if doc.get("version") != 1:
        raise err.at("version", "must be 1")
    raw_tenants = doc.get("tenants")
    if not isinstance(raw_tenants, dict):
        raise err.at("tenants", "must be a mapping of tenant name to tenant")
    tenants: dict[str, Tenant] = {}
    by_digest: dict[str, tuple[str, Tenant, bool]] = {}
    owners: dict[str, str] = {}
    for name, body in raw_tenants.items():
        where = f"tenants.{name}"
        if not isinstance(name, str) or not _TENANT.match(name):
            raise err.at(where, "tenant names use lower-case letters, digits, '_', '.', '-'")
        if not isinstance(body, dict):
            raise err.at(where, "must be a mapping with 'keys' and 'providers'")
        _only(err, where, body, {"keys", "providers", "revoked"})
        revoked = body.get("revoked", False)
        if not isinstance(revoked, bool):
            raise err.at(f"{where}.revoked", "must be true or false")
        providers = _providers(err, f"{where}.providers", body.get("providers"))
        tenant = Tenant(name=name, providers=providers, revoked=revoked)
        keys = body.get("keys")
        if not isinstance(keys, list) or not keys:
            raise err.at(f"{where}.keys", "must be a non-empty list of 'sha256:<hex>' hashes")
        for i, item in enumerate(keys):
            kwhere = f"{where}.keys[{i}]"
            key_revoked = False
            if isinstance(item, dict):
                _only(err, kwhere, item, {"hash", "revoked"})
                key_revoked = item.get("revoked", False)
                if not isinstance(key_revoked, bool):
                    raise err.at(f"{kwhere}.revoked", "must be true or false")
                item = item.get("hash")
            if not isinstance(item, str) or not _HASH.match(item):
                hint = ""
                if isinstance(item, str) and item.startswith(VIRTUAL_KEY_PREFIX):
                    hint = " (this looks like a key itself: store only its hash)"
                raise err.at(kwhere, f"must be 'sha256:' and 64 lower-case hex digits{hint}")
            if item in owners:
                raise err.at(kwhere, f"the same hash is already listed under {owners[item]}")
            owners[item] = kwhere
            by_digest[item] = (item, tenant, key_revoked)
        tenants[name] = tenant
    return VirtualKeys(tenants=tenants, _by_digest=by_digest, source=source)


def _providers(err: _Errors, where: str, node: Any) -> dict[str, str | None]:
    result: dict[str, str | None] = {}
    if isinstance(node, list):
        for i, name in enumerate(node):
            if not isinstance(name, str) or not _NAME.match(name):
                raise err.at(f"{where}[{i}]", "must be a provider name")
            result[name] = None
    elif isinstance(node, dict):
        for name, body in node.items():
            if not isinstance(name, str) or not _NAME.match(name):
                raise err.at(f"{where}.{name}", "must be a provider name")
            if body is None:
                body = {}
            if not isinstance(body, dict):
                raise err.at(f"{where}.{name}", "must be a mapping, e.g. {} or {secret: name}")
            _only(err, f"{where}.{name}", body, {"secret"})
            secret = body.get("secret")
            if secret is not None and (not isinstance(secret, str) or not _NAME.match(secret)):
                raise err.at(f"{where}.{name}.secret", "must be a secret name")
            result[name] = secret
    else:
        raise err.at(where, "must list the providers the tenant may use")
    if not result:
        raise err.at(where, "must list at least one provider")
    return result


class _Errors:
    def __init__(self, source: str) -> None:
        self.source = source

    def at(self, where: str, problem: str) -> VirtualKeyError:
        return VirtualKeyError(f"{self.source}: {where or '<top>'}: {problem}")


def _only(err: _Errors, where: str, node: dict[Any, Any], allowed: set[str]) -> None:
    for key in node:
        if key not in allowed:
            raise err.at(f"{where}.{key}" if where else str(key), f"unknown key {key!r}")


class VirtualKeySource:
    """A virtual keys file, reloaded when it changes; keeps the last good version.

    `refresh()` polls by stat (follows the ConfigMap/Secret `..data` symlink) and
    returns True when a new version was installed; a bad new version raises
    `VirtualKeyError` and the previous one stays in force (fail closed only at start).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stat = self._stat_key()
        self.current: VirtualKeys = load_virtual_keys(self.path)

    def _stat_key(self) -> tuple[int, int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def refresh(self) -> bool:
        key = self._stat_key()
        if key == self._stat:
            return False
        self._stat = key
        self.current = load_virtual_keys(self.path)
        return True
