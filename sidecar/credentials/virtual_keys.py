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

Run `egress-sidecar virtual-key new` to create a key and its hash, or
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sidecar import yamlfile
from sidecar.yamlfile import Problem

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
    """The virtual keys file is invalid. Messages name the file, line and key, never a key.

    `problems` lists every problem of the file (`file:line: key: message`, one a line).
    """

    def __init__(self, problems: str | Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = () if isinstance(problems, str) else tuple(problems)
        super().__init__(problems if isinstance(problems, str) else "\n".join(map(str, problems)))


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
#
# Read with the shared reader (sidecar/yamlfile.py): every problem of the file at once,
# each with its line; a tenant, key or provider written twice is refused (a plain YAML
# load would let the second `team-a:` replace the first without a word). Messages never
# repeat a value the user wrote (a key pasted where its hash belongs must not reach a
# log): they name the file, the line and the key path only.

_EMPTY = "empty file: a virtual keys file starts with 'version: 1'"


def load_virtual_keys(path: str | os.PathLike[str]) -> VirtualKeys:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VirtualKeyError(f"{path}: cannot read: {exc.strerror}") from None
    return _parse(data, str(path))


def parse_virtual_keys(text: str, *, source: str = "<virtual keys>") -> VirtualKeys:
    return _parse(text.encode("utf-8", "surrogatepass"), source)


def _parse(data: bytes, source: str) -> VirtualKeys:
    problems: list[Problem] = []
    if source.endswith(".json"):
        try:
            json.loads(data)
        except UnicodeDecodeError:
            pass  # reported by the reader, with its line
        except json.JSONDecodeError as exc:
            problem = Problem(source, exc.lineno, "", f"not valid JSON: {exc.msg}")
            raise VirtualKeyError([problem]) from None
        # Valid JSON is YAML but for tab indentation; a raw tab inside a JSON string is
        # invalid JSON, so every tab left is whitespace between tokens.
        data = data.replace(b"\t", b" ")
    root = yamlfile.compose(source, data, problems, empty=_EMPTY)
    keys = _FileReader(source, problems).read(root) if root is not None else None
    if problems or keys is None:
        raise VirtualKeyError(sorted(problems, key=lambda p: p.line))
    return keys


class _FileReader(yamlfile.YamlChecker):
    def __init__(self, file: str, problems: list[Problem]) -> None:
        super().__init__(file, problems)
        self.by_digest: dict[str, tuple[str, Tenant, bool]] = {}
        self.owners: dict[str, tuple[str, int]] = {}  # digest -> (key path, line)

    def read(self, root: Node) -> VirtualKeys | None:
        if not isinstance(root, MappingNode):
            self.err(root, "<top>", "the file must be a mapping with 'version' and 'tenants'")
            return None
        top = self.mapping(root, "", ("version", "tenants"))
        assert top is not None
        if "version" not in top:
            self.err(1, "version", "missing: the file starts with 'version: 1'")
        else:
            node = top["version"][1]
            if not (_scalar(node, yamlfile.INT) == "1"):
                self.err(node, "version", "must be 1")
        if "tenants" not in top:
            self.err(1, "tenants", "missing: a mapping of tenant name to tenant")
            return None
        node = top["tenants"][1]
        if not isinstance(node, MappingNode):
            self.err(node, "tenants", "must be a mapping of tenant name to tenant")
            return None
        tenants: dict[str, Tenant] = {}
        for name, (knode, body) in (self.mapping(node, "tenants", None) or {}).items():
            tenant = self._tenant(name, knode, body)
            if tenant is not None:
                tenants[name] = tenant
        return VirtualKeys(tenants=tenants, _by_digest=self.by_digest, source=self.file)

    def _tenant(self, name: str, knode: Node, body: Node) -> Tenant | None:
        where = f"tenants.{_shown(name)}"
        if not _TENANT.match(name):
            self.err(knode, where, "tenant names use lower-case letters, digits, '_', '.', '-'")
            return None
        if not isinstance(body, MappingNode):
            self.err(body, where, "must be a mapping with 'keys' and 'providers'")
            return None
        fields = self.mapping(body, where, ("keys", "providers", "revoked")) or {}
        revoked = False
        if "revoked" in fields:
            revoked = self._flag(fields["revoked"][1], f"{where}.revoked")
        if "providers" in fields:
            providers = self._providers(fields["providers"][1], f"{where}.providers")
        else:
            self.err(knode, f"{where}.providers", "missing: list the providers the tenant may use")
            providers = {}
        tenant = Tenant(name=name, providers=providers, revoked=revoked)
        keys = fields["keys"][1] if "keys" in fields else None
        if not isinstance(keys, SequenceNode) or not keys.value:
            self.err(
                keys if keys is not None else knode,
                f"{where}.keys",
                "must be a non-empty list of 'sha256:<hex>' hashes",
            )
            return tenant
        for i, item in enumerate(keys.value):
            self._key(tenant, item, f"{where}.keys[{i}]")
        return tenant

    def _key(self, tenant: Tenant, item: Node, where: str) -> None:
        key_revoked = False
        if isinstance(item, MappingNode):
            fields = self.mapping(item, where, ("hash", "revoked")) or {}
            if "revoked" in fields:
                key_revoked = self._flag(fields["revoked"][1], f"{where}.revoked")
            if "hash" not in fields:
                self.err(item, f"{where}.hash", "missing: 'sha256:' and 64 lower-case hex digits")
                return
            item = fields["hash"][1]
        text = _scalar(item, yamlfile.STR)
        if not isinstance(text, str) or not _HASH.match(text):
            hint = ""
            if isinstance(text, str) and text.strip().startswith(VIRTUAL_KEY_PREFIX):
                hint = " (this looks like a key itself: store only its hash)"
            self.err(item, where, f"must be 'sha256:' and 64 lower-case hex digits{hint}")
            return
        if text in self.owners:
            first, first_line = self.owners[text]
            message = f"the same hash is already listed under {first} (line {first_line})"
            self.err(item, where, message)
            return
        self.owners[text] = (where, yamlfile.line(item))
        self.by_digest[text] = (text, tenant, key_revoked)

    def _flag(self, node: Node, where: str) -> bool:
        if isinstance(node, ScalarNode) and node.tag == yamlfile.BOOL:
            return node.value.lower() in ("true", "yes", "on")
        self.err(node, where, "must be true or false")
        return False

    def _providers(self, node: Node, where: str) -> dict[str, str | None]:
        result: dict[str, str | None] = {}
        if isinstance(node, SequenceNode):

            def provider_name(item: Node, key: str) -> str | None:
                name = _scalar(item, yamlfile.STR)
                if name is None or not _NAME.match(name):
                    self.err(item, key, "must be a provider name")
                    return None
                return name

            listed = self.unique(node.value, where, False, provider_name, lambda n, _: repr(n))
            result = dict.fromkeys((name for name, _line, _key in listed), None)
        elif isinstance(node, MappingNode):
            for name, (knode, body) in (self.mapping(node, where, None) or {}).items():
                pwhere = f"{where}.{_shown(name)}"
                if not _NAME.match(name):
                    self.err(knode, pwhere, "must be a provider name")
                    continue
                result[name] = self._provider_secret(body, pwhere)
        else:
            self.err(node, where, "must list the providers the tenant may use")
            return result
        if not result and not node.value:
            self.err(node, where, "must list at least one provider")
        return result

    def _provider_secret(self, body: Node, where: str) -> str | None:
        if isinstance(body, ScalarNode) and body.tag == yamlfile.NULL:
            return None
        if not isinstance(body, MappingNode):
            self.err(body, where, "must be a mapping, e.g. {} or {secret: name}")
            return None
        fields = self.mapping(body, where, ("secret",)) or {}
        if "secret" not in fields:
            return None
        node = fields["secret"][1]
        secret = _scalar(node, yamlfile.STR)
        if not isinstance(secret, str) or not _NAME.match(secret):
            self.err(node, f"{where}.secret", "must be a secret name")
            return None
        return secret


def _scalar(node: Node, tag: str) -> str | None:
    """The text of a scalar YAML read with `tag` (e.g. a string, not `yes` or `443`)."""
    return str(node.value) if isinstance(node, ScalarNode) and node.tag == tag else None


def _shown(name: str) -> str:
    """A user-chosen name for a message, unless it looks like a key pasted in the wrong place."""
    return "<a virtual key>" if is_virtual_key(name) and len(name) > 20 else name


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
