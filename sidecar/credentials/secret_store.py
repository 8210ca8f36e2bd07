"""Provider keys: where they come from, and a wrapper that never shows them.

Sources, in order of precedence:

1. A directory of files, one file per secret, named after the secret (`openai`,
   `azure-openai`, ...). This is how Kubernetes mounts a Secret volume::

       /var/run/secrets/egress-sidecar/openai -> ..data/openai
       /var/run/secrets/egress-sidecar/..data -> ..2026_11_22_10_00_00.123456789
       /var/run/secrets/egress-sidecar/..2026_11_22_10_00_00.123456789/openai

   An update writes a new timestamped directory and atomically renames the `..data`
   symlink onto it; the old directory is then deleted. The store reads through the
   resolved `..data` target, so one refresh sees one consistent generation of the
   Secret, and it detects the swap by comparing the `..data` link and the stat of
   every resolved file.

2. Environment variables `EGRESS_SIDECAR_SECRET_<NAME>` (upper-cased, `-` and `.`
   become `_`), only if the store is given an environment mapping. This is the
   weaker option: any process in the container (and anything that can read
   `/proc/<pid>/environ`) sees the value, and it cannot rotate without a restart.
   For local use and development only. A file of the same name wins over the variable.

Values: one trailing newline (`\\n` or `\\r\\n`) is removed; a value that is empty, has
leading/trailing spaces, contains CR, LF, NUL or any other control character, is not
ASCII, or is larger than 16 KiB is refused: the secret is treated as missing and
`problems()` says why, naming the secret and never showing its value.

`get()` is a dictionary lookup on an immutable snapshot that `refresh()` swaps in one
assignment: readers never see a half-updated store, and a reader always gets either
the old or the new value, never a partial or empty one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

__all__ = [
    "ENV_PREFIX",
    "MAX_SECRET_BYTES",
    "Secret",
    "SecretError",
    "SecretStore",
    "env_var_name",
    "validate_secret_document",
    "validate_secret_value",
]

log = logging.getLogger("sidecar.credentials")

ENV_PREFIX = "EGRESS_SIDECAR_SECRET_"
MAX_SECRET_BYTES = 16 * 1024
DATA_LINK = "..data"
# Same rule as the policy loader's secret names.
_SECRET_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SecretError(ValueError):
    """A secret could not be used. The message names the secret, never its value."""


class Secret:
    """A secret value that does not show itself.

    `repr()`, `str()` and `format()` give `Secret(name='openai', sha256=1a2b3c4d5e6f…)`
    (a 48-bit fingerprint of a high-entropy key: enough to tell two versions apart in
    a log, useless to recover the key). The value is only available through
    `reveal()`. Pickling is refused; `copy` returns the same (immutable) object.
    """

    __slots__ = ("__value", "_fingerprint", "_name")

    def __init__(self, name: str, value: str) -> None:
        self._name = name
        self.__value = value
        self._fingerprint = hashlib.sha256(value.encode("utf-8")).hexdigest()[:12]

    @property
    def name(self) -> str:
        return self._name

    @property
    def fingerprint(self) -> str:
        """First 12 hex digits of the value's SHA-256: safe to log."""
        return self._fingerprint

    def reveal(self) -> str:
        """The value. Call it only where the value is written to the wire."""
        return self.__value

    def reveal_bytes(self) -> bytes:
        return self.__value.encode("ascii")

    def __repr__(self) -> str:
        return f"Secret(name={self._name!r}, sha256={self._fingerprint}…)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self._name == other._name and hmac.compare_digest(
            self.__value.encode(), other.__value.encode()
        )

    def __hash__(self) -> int:
        return hash((self._name, self._fingerprint))

    def __copy__(self) -> Secret:
        return self  # immutable

    def __deepcopy__(self, memo: object) -> Secret:
        return self

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{self!r} cannot be pickled")

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError(f"{self!r} cannot be pickled")

    def __getstate__(self) -> NoReturn:
        raise TypeError(f"{self!r} cannot be pickled")


def env_var_name(name: str) -> str:
    """`azure-openai` -> `EGRESS_SIDECAR_SECRET_AZURE_OPENAI`."""
    return ENV_PREFIX + name.upper().replace("-", "_").replace(".", "_")


def validate_secret_value(name: str, raw: bytes) -> str:
    """Decode and check one secret value; raise `SecretError` naming only `name`."""
    if len(raw) > MAX_SECRET_BYTES:
        raise SecretError(
            f"secret {name!r} is larger than {MAX_SECRET_BYTES} bytes; a provider key is one line"
        )
    if raw.endswith(b"\r\n"):
        raw = raw[:-2]
    elif raw.endswith(b"\n"):
        raw = raw[:-1]
    if not raw:
        raise SecretError(f"secret {name!r} is empty")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise SecretError(f"secret {name!r} contains non-ASCII bytes") from None
    if _CONTROL.search(text):
        raise SecretError(
            f"secret {name!r} contains CR, LF, NUL or another control character "
            "(after removing one trailing newline); refusing it"
        )
    if text != text.strip():
        raise SecretError(f"secret {name!r} has leading or trailing spaces")
    return text


def validate_secret_document(name: str, raw: bytes) -> str:
    """A multi-line JSON object (a cloud credential file: a service-account key, an
    AWS access key); raise `SecretError` naming only `name`. Such a value is never
    written into a header as it is: `SecretStore.get()` does not return it."""
    if len(raw) > MAX_SECRET_BYTES:
        raise SecretError(f"secret {name!r} is larger than {MAX_SECRET_BYTES} bytes")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise SecretError(f"secret {name!r} contains non-ASCII bytes") from None
    if _CONTROL.search(text.replace("\n", "").replace("\r", "").replace("\t", "")):
        raise SecretError(f"secret {name!r} contains NUL or another control character")
    try:
        parsed = json.loads(text)
    except ValueError:
        raise SecretError(
            f"secret {name!r} spans several lines and is not a JSON object: a provider "
            "key is one line; a cloud credential file is JSON"
        ) from None
    if not isinstance(parsed, dict):
        raise SecretError(f"secret {name!r} is JSON but not an object")
    return text.strip()


@dataclass(frozen=True, slots=True)
class _Snapshot:
    secrets: Mapping[str, Secret]
    problems: Mapping[str, str]  # secret name -> safe description
    signature: tuple[object, ...]
    documents: Mapping[str, Secret] = field(default_factory=dict)  # multi-line JSON


_EMPTY = _Snapshot(secrets={}, problems={}, signature=())
_MAX_DERIVED = 256  # a key's private key lines and a few generations of tokens


class SecretStore:
    """Provider keys from a Kubernetes-style secrets directory and/or the environment.

    `get()` never does I/O. Call `refresh()` periodically (it costs one `readlink`,
    one `scandir` and one `stat` per file when nothing changed, so every 250 ms is
    fine); it returns the names whose value appeared, changed or disappeared.

    Previous values are kept (for `redaction_values()` only, never for `get()`) for
    `keep_previous_seconds` after a rotation, so that a response to a request that
    was sent with the old key is still redacted if it echoes it.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        keep_previous_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._directory = Path(directory) if directory is not None else None
        self._environ = environ
        self._keep_previous = keep_previous_seconds
        self._clock = clock
        self._lock = threading.Lock()  # serializes refresh(); get() takes no lock
        self._snap: _Snapshot = _EMPTY
        self._previous: dict[tuple[str, str], tuple[Secret, float]] = {}
        self._derived: dict[tuple[str, str], tuple[Secret, float]] = {}
        self._generation = 0
        self._owners: tuple[int, dict[str, str]] | None = None  # owners_by_value's
        self._reported: dict[str, str] = {}
        self.refresh()

    # -- hot path -------------------------------------------------------------

    def get(self, name: str) -> Secret | None:
        """The current value of secret `name`, or None if missing or refused."""
        secrets = self._snap.secrets
        found = secrets.get(name)
        if found is None and self._environ is not None:
            found = secrets.get(_ENV_KEY + _canon(name))
        return found

    def get_document(self, name: str) -> Secret | None:
        """Secret `name` as a credential file (JSON, possibly several lines), or None.
        A one-line value (e.g. from the environment) is returned too."""
        return self._snap.documents.get(name) or self.get(name)

    def missing(self, names: Iterable[str]) -> set[str]:
        """Which of `names` have no usable value (for readiness and start-up checks)."""
        return {name for name in names if self.get_document(name) is None}

    def remember(self, secret: Secret) -> None:
        """A value derived from a secret (a minted OAuth token, STS session credentials,
        the secret key inside a JSON credential): redacted and refused like the secrets
        themselves, for `keep_previous_seconds` after it was last remembered."""
        key = (secret.name, secret.fingerprint)
        with self._lock:
            known = key in self._derived
            self._derived[key] = (secret, self._clock() + self._keep_previous)
            if len(self._derived) > _MAX_DERIVED:  # oldest expiry first
                oldest = min(self._derived, key=lambda k: self._derived[k][1])
                del self._derived[oldest]
            if not known:
                self._generation += 1

    def names(self) -> frozenset[str]:
        """Names with a usable value (env ones as "env:<name_with_underscores>")."""
        return frozenset(self._snap.secrets)

    def problems(self) -> dict[str, str]:
        """Secrets present but refused, with a safe reason each (never the value)."""
        return dict(self._snap.problems)

    @property
    def generation(self) -> int:
        """Increases whenever a value changes: cache compiled redactors on it."""
        return self._generation

    def owners_by_value(self) -> dict[str, str]:
        """Every `redaction_values()` value (revealed) -> its secret name; built once per
        generation (a request that carries an `Authorization` header asks)."""
        # The generation is read before the values: the refresh thread may install new
        # ones meanwhile, and values read before a change must not be filed after it.
        generation, cached = self._generation, self._owners
        if cached is None or cached[0] != generation:
            owners = {s.reveal(): s.name for s in self.redaction_values()}
            cached = self._owners = (generation, owners)
        return cached[1]

    def redaction_values(self) -> tuple[Secret, ...]:
        """Every value the reflection guard must catch: current ones and recently
        rotated-out ones (kept for `keep_previous_seconds`)."""
        current = tuple(self._snap.secrets.values())
        # tuple(dict.values()) copies in C, under the GIL: the refresh thread may add and
        # drop entries meanwhile, which a Python-level loop over the live dict raises on.
        old = tuple(secret for secret, _ in tuple(self._previous.values()))
        derived = tuple(secret for secret, _ in tuple(self._derived.values()))
        return current + old + derived

    # -- polling --------------------------------------------------------------

    def refresh(self) -> set[str]:
        """Re-read the sources if anything changed; return the names that changed."""
        with self._lock:
            return self._refresh_locked()

    def _refresh_locked(self) -> set[str]:
        now = self._clock()
        for kept in (self._previous, self._derived):
            expired = [k for k, (_, until) in kept.items() if until <= now]
            for key in expired:
                del kept[key]
            if expired:  # what is redacted and refused changed: caches on it rebuild
                self._generation += 1
        env_items = self._env_items()
        for _attempt in range(5):
            try:
                signature, base = self._signature(env_items)
            except OSError as exc:
                return self._directory_unreadable(exc, env_items)
            if signature == self._snap.signature:
                return set()
            try:
                values, problems = self._read(base, env_items)
            except _Raced:
                continue  # the `..data` link moved while we read: read again
            # A swap between signature and read would show up here.
            try:
                after, _ = self._signature(env_items)
            except OSError:
                continue
            if after != signature:
                continue
            return self._install(values, problems, signature, now)
        log.warning("secrets directory kept changing while being read; will retry")
        return set()

    def _directory_unreadable(
        self, exc: OSError, env_items: tuple[tuple[str, str], ...]
    ) -> set[str]:
        # The directory vanished or is unreadable: secrets from it are gone (fail
        # closed: a provider without its key refuses requests), env ones remain.
        values, problems = self._read(None, env_items)
        name = self._directory.name if self._directory else "?"
        problems = dict(problems)
        problems[f"<directory {name}>"] = f"secrets directory unreadable: {exc.strerror}"
        signature: tuple[object, ...] = ("unreadable", exc.errno, env_items_sig(env_items))
        if signature == self._snap.signature:
            return set()
        return self._install(values, problems, signature, self._clock())

    def _env_items(self) -> tuple[tuple[str, str], ...]:
        if self._environ is None:
            return ()
        return tuple(sorted((k, v) for k, v in self._environ.items() if k.startswith(ENV_PREFIX)))

    def _signature(
        self, env_items: tuple[tuple[str, str], ...]
    ) -> tuple[tuple[object, ...], Path | None]:
        """What changes when any secret changes, without reading a value."""
        if self._directory is None:
            return ("env", env_items_sig(env_items)), None
        directory = self._directory
        data_link = directory / DATA_LINK
        target: str | None
        try:
            target = os.readlink(data_link)
        except FileNotFoundError:
            target = None
        except OSError:  # `..data` exists but is not a link: read the directory as is
            target = None
        base = directory / target if target is not None else directory
        entries: list[tuple[object, ...]] = []
        with os.scandir(directory) as it:
            names = sorted(e.name for e in it if not e.name.startswith("."))
        for name in names:
            path = directory / name
            try:
                st = path.stat()  # follows `name -> ..data/name`
            except FileNotFoundError:
                entries.append((name, None))
                continue
            entries.append((name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return ("dir", target, tuple(entries), env_items_sig(env_items)), base

    def _read(
        self, base: Path | None, env_items: tuple[tuple[str, str], ...]
    ) -> tuple[dict[str, str], dict[str, str]]:
        values: dict[str, str] = {}
        problems: dict[str, str] = {}
        for key, env_value in env_items:
            # Stored under "env:<canonical name>"; get() falls back to it.
            canon = key[len(ENV_PREFIX) :].lower()
            try:
                values[_ENV_KEY + canon] = validate_secret_value(key, env_value.encode("utf-8"))
            except SecretError as exc:
                problems[key] = str(exc)
        if base is None or self._directory is None:
            return values, problems
        directory = self._directory
        with os.scandir(directory) as it:
            names = sorted(e.name for e in it if not e.name.startswith("."))
        for name in names:
            if not _SECRET_NAME.match(name):
                problems[name] = f"file {name!r} is not a valid secret name; ignored"
                continue
            # Read through the resolved `..data` target when there is one, so that
            # all values come from one generation of the Secret.
            path = base / name
            try:
                raw = _read_limited(path)
            except FileNotFoundError:
                if base != directory:
                    raise _Raced() from None
                continue
            except IsADirectoryError:
                continue
            except OSError as exc:
                problems[name] = f"secret {name!r} unreadable: {exc.strerror}"
                values.pop(_ENV_KEY + _canon(name), None)
                continue
            try:
                values[name] = validate_secret_value(name, raw)
            except SecretError as exc:
                try:
                    values[_DOC_KEY + name] = validate_secret_document(name, raw)
                except SecretError:
                    problems[name] = str(exc)
                values.pop(_ENV_KEY + _canon(name), None)  # no fallback to env
            else:
                problems.pop(name, None)
        return values, problems

    def _install(
        self,
        values: dict[str, str],
        problems: dict[str, str],
        signature: tuple[object, ...],
        now: float,
    ) -> set[str]:
        old = {**self._snap.secrets, **{_DOC_KEY + k: v for k, v in self._snap.documents.items()}}
        new: dict[str, Secret] = {}
        changed: set[str] = set()
        for name, value in values.items():
            plain = name.removeprefix(_ENV_KEY).removeprefix(_DOC_KEY)
            before = old.get(name)
            if before is not None and before.reveal() == value:
                new[name] = before
            else:
                new[name] = Secret(plain, value)
                changed.add(plain)
        for name, before in old.items():
            if name not in new or new[name] is not before:
                changed.add(name.removeprefix(_ENV_KEY).removeprefix(_DOC_KEY))
                if not name.startswith(_DOC_KEY):  # a whole file is no redaction pattern
                    self._previous[(name, before.fingerprint)] = (
                        before,
                        now + self._keep_previous,
                    )
        for name, problem in problems.items():
            if self._reported.get(name) != problem:
                log.error("%s", problem)
        self._reported = dict(problems)
        self._snap = _Snapshot(
            secrets={k: v for k, v in new.items() if not k.startswith(_DOC_KEY)},
            problems=problems,
            signature=signature,
            documents={k[len(_DOC_KEY) :]: v for k, v in new.items() if k.startswith(_DOC_KEY)},
        )
        if changed:
            self._generation += 1
        return changed

    def __repr__(self) -> str:
        where = str(self._directory) if self._directory else "environment"
        return f"SecretStore({where}, secrets={sorted(self._snap.secrets)})"


_ENV_KEY = "env:"
_DOC_KEY = "doc:"  # multi-line JSON credential files: get_document() only


def _canon(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


class _Raced(Exception):
    pass


def env_items_sig(env_items: tuple[tuple[str, str], ...]) -> str:
    """A digest of the env secrets, so signatures never hold values."""
    h = hashlib.sha256()
    for key, value in env_items:
        h.update(key.encode() + b"\0" + value.encode("utf-8", "replace") + b"\0")
    return h.hexdigest()


def _read_limited(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(MAX_SECRET_BYTES + 1)
