"""Secret sources: Kubernetes secret volumes, env vars, value checks, rotation, hygiene."""

from __future__ import annotations

import copy
import logging
import pickle
import threading
import time
import traceback
from pathlib import Path

import pytest

from sidecar.credentials.secret_store import (
    MAX_SECRET_BYTES,
    Secret,
    SecretError,
    SecretStore,
    env_var_name,
    validate_secret_value,
)
from tests.credentials.helpers import anthropic_key, k8s_write, openai_project_key

KEY = openai_project_key()

# -- values -------------------------------------------------------------------------

VALUE_CASES = [
    # (attack / case, raw file bytes, accepted value or None when refused, error fragment)
    ("plain_key", KEY.encode(), KEY, ""),
    ("one_trailing_newline_stripped", KEY.encode() + b"\n", KEY, ""),
    ("one_trailing_crlf_stripped", KEY.encode() + b"\r\n", KEY, ""),
    ("crlf_in_secret_file", KEY.encode() + b"\r\nX-Evil: 1", None, "control character"),
    ("lf_header_injection", KEY.encode() + b"\nHost: evil.example", None, "control character"),
    ("two_trailing_newlines", KEY.encode() + b"\n\n", None, "control character"),
    ("bare_cr", KEY.encode() + b"\r", None, "control character"),
    ("nul_byte", KEY[:10].encode() + b"\0" + KEY[10:].encode(), None, "control character"),
    ("tab", KEY.encode() + b"\t", None, "control character"),
    ("escape_char", b"\x1b[2J" + KEY.encode(), None, "control character"),
    ("del_char", KEY.encode() + b"\x7f", None, "control character"),
    ("empty_file", b"", None, "empty"),
    ("only_newline", b"\n", None, "empty"),
    ("leading_space", b" " + KEY.encode(), None, "spaces"),
    ("trailing_space", KEY.encode() + b" \n", None, "spaces"),
    ("non_ascii", KEY.encode() + "é".encode(), None, "non-ASCII"),
    ("too_large", b"a" * (MAX_SECRET_BYTES + 1), None, "larger than"),
]


@pytest.mark.parametrize(
    ("raw", "expected", "fragment"),
    [c[1:] for c in VALUE_CASES],
    ids=[c[0] for c in VALUE_CASES],
)
def test_secret_value_rules(tmp_path: Path, raw: bytes, expected: str | None, fragment: str):
    (tmp_path / "openai").write_bytes(raw)
    store = SecretStore(tmp_path)
    secret = store.get("openai")
    if expected is None:
        assert secret is None
        assert store.missing(["openai"]) == {"openai"}
        problem = store.problems()["openai"]
        assert "'openai'" in problem and fragment in problem
        # The problem names the secret, never its value.
        assert KEY not in problem and KEY[:20] not in problem
        with pytest.raises(SecretError) as info:
            validate_secret_value("openai", raw)
        assert KEY not in str(info.value)
    else:
        assert secret is not None and secret.reveal() == expected
        assert store.problems() == {}


def test_refused_secret_is_logged_by_name_only(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    (tmp_path / "openai").write_bytes(KEY.encode() + b"\r\nX: y")
    with caplog.at_level(logging.DEBUG, logger="sidecar.credentials"):
        SecretStore(tmp_path)
    assert "'openai'" in caplog.text
    assert KEY not in caplog.text


# -- Kubernetes secret volume ---------------------------------------------------------


def test_kubernetes_secret_volume_layout(tmp_path: Path):
    a, b = openai_project_key(), anthropic_key()
    k8s_write(tmp_path, {"openai": a + "\n", "anthropic": b})
    store = SecretStore(tmp_path)
    assert store.get("openai") is not None and store.get("openai").reveal() == a  # type: ignore[union-attr]
    assert store.get("anthropic").reveal() == b  # type: ignore[union-attr]
    assert store.missing(["openai", "anthropic", "gemini"]) == {"gemini"}
    # `..data`, `..2026_...` and `..data_tmp` are never taken for secrets.
    assert store.names() == {"openai", "anthropic"}


def test_kubernetes_secret_symlink_swap(tmp_path: Path):
    old, new = openai_project_key(), openai_project_key()
    other = anthropic_key()
    k8s_write(tmp_path, {"openai": old, "anthropic": other})
    store = SecretStore(tmp_path)
    gen = store.generation
    assert store.refresh() == set()
    k8s_write(tmp_path, {"openai": new, "anthropic": other})
    assert store.refresh() == {"openai"}
    assert store.get("openai").reveal() == new  # type: ignore[union-attr]
    assert store.get("anthropic").reveal() == other  # type: ignore[union-attr]
    assert store.generation > gen
    assert store.refresh() == set()


def test_secret_removed_from_kubernetes_secret(tmp_path: Path):
    k8s_write(tmp_path, {"openai": openai_project_key(), "anthropic": anthropic_key()})
    store = SecretStore(tmp_path)
    k8s_write(tmp_path, {"anthropic": anthropic_key()})
    assert store.refresh() == {"openai", "anthropic"}
    assert store.get("openai") is None
    assert store.missing(["openai"]) == {"openai"}


def test_secret_added_later(tmp_path: Path):
    store = SecretStore(tmp_path)
    assert store.missing(["openai"]) == {"openai"}
    key = openai_project_key()
    (tmp_path / "openai").write_text(key)
    assert store.refresh() == {"openai"}
    assert store.get("openai").reveal() == key  # type: ignore[union-attr]


def test_plain_file_rewritten_atomically(tmp_path: Path):
    old, new = openai_project_key(), openai_project_key()
    (tmp_path / "openai").write_text(old)
    store = SecretStore(tmp_path)
    tmp = tmp_path / ".openai.tmp"
    tmp.write_text(new)
    tmp.rename(tmp_path / "openai")
    assert store.refresh() == {"openai"}
    assert store.get("openai").reveal() == new  # type: ignore[union-attr]


def test_secret_becoming_invalid_is_missing_not_stale(tmp_path: Path):
    k8s_write(tmp_path, {"openai": openai_project_key()})
    store = SecretStore(tmp_path)
    k8s_write(tmp_path, {"openai": "bad\r\nvalue"})
    assert store.refresh() == {"openai"}
    assert store.get("openai") is None
    assert "control character" in store.problems()["openai"]


def test_missing_directory_fails_closed(tmp_path: Path):
    store = SecretStore(tmp_path / "nope")
    assert store.get("openai") is None
    assert any("unreadable" in p for p in store.problems().values())
    (tmp_path / "nope").mkdir()
    key = openai_project_key()
    (tmp_path / "nope" / "openai").write_text(key)
    assert store.refresh() == {"openai"}
    assert store.get("openai").reveal() == key  # type: ignore[union-attr]


def test_refresh_is_cheap_when_nothing_changed(tmp_path: Path):
    k8s_write(tmp_path, {f"p{i}": openai_project_key() for i in range(12)})
    store = SecretStore(tmp_path)
    start = time.perf_counter()
    for _ in range(200):
        assert store.refresh() == set()
    per_call = (time.perf_counter() - start) / 200
    print(f"refresh() with 12 secrets, unchanged: {per_call * 1e6:.0f} µs")
    assert per_call < 0.005  # called every 250 ms: well under 2% of one core


def test_get_is_fast(tmp_path: Path):
    k8s_write(tmp_path, {"openai": openai_project_key()})
    store = SecretStore(tmp_path)
    start = time.perf_counter()
    for _ in range(100_000):
        store.get("openai")
    assert (time.perf_counter() - start) / 100_000 < 20e-6


# -- environment ----------------------------------------------------------------------


def test_env_var_names():
    assert env_var_name("openai") == "EGRESS_SIDECAR_SECRET_OPENAI"
    assert env_var_name("azure-openai") == "EGRESS_SIDECAR_SECRET_AZURE_OPENAI"
    assert env_var_name("team.a-key") == "EGRESS_SIDECAR_SECRET_TEAM_A_KEY"


def test_env_secrets_are_used_when_given(tmp_path: Path):
    key = openai_project_key()
    env = {"EGRESS_SIDECAR_SECRET_AZURE_OPENAI": key, "UNRELATED": "x"}
    store = SecretStore(None, environ=env)
    assert store.get("azure-openai").reveal() == key  # type: ignore[union-attr]
    assert store.missing(["azure-openai", "openai"]) == {"openai"}
    # Without an environ mapping, the environment is never read.
    assert SecretStore(tmp_path).get("azure-openai") is None


def test_env_secret_with_crlf_refused():
    env = {"EGRESS_SIDECAR_SECRET_OPENAI": KEY + "\r\nX: y"}
    store = SecretStore(None, environ=env)
    assert store.get("openai") is None
    assert all(KEY not in p for p in store.problems().values())


def test_file_wins_over_env_and_refused_file_does_not_fall_back(tmp_path: Path):
    file_key, env_key = openai_project_key(), openai_project_key()
    env = {"EGRESS_SIDECAR_SECRET_OPENAI": env_key}
    (tmp_path / "openai").write_text(file_key)
    store = SecretStore(tmp_path, environ=env)
    assert store.get("openai").reveal() == file_key  # type: ignore[union-attr]
    (tmp_path / "openai").write_text("bad\0")
    store.refresh()
    assert store.get("openai") is None


# -- rotation -------------------------------------------------------------------------


def test_rotation_under_concurrent_readers(tmp_path: Path):
    """Swap the Secret the Kubernetes way 10 times while readers call get() non-stop:
    every value returned is one of the values written, never partial, empty or None."""
    written = [openai_project_key() for _ in range(11)]
    k8s_write(tmp_path, {"openai": written[0] + "\n", "anthropic": anthropic_key()})
    store = SecretStore(tmp_path)
    allowed = set(written)
    seen: set[str] = set()
    bad: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            secret = store.get("openai")
            if secret is None:
                bad.append("None")
                continue
            value = secret.reveal()
            if value not in allowed:
                bad.append(f"unexpected value of length {len(value)}")
            seen.add(value)

    def poller() -> None:
        while not stop.is_set():
            store.refresh()
            time.sleep(0.001)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    threads.append(threading.Thread(target=poller))
    for t in threads:
        t.start()
    try:
        for value in written[1:]:
            k8s_write(tmp_path, {"openai": value + "\n", "anthropic": anthropic_key()})
            deadline = time.monotonic() + 1.0  # the bound: used within one second
            while time.monotonic() < deadline:
                got = store.get("openai")
                if got is not None and got.reveal() == value:
                    break
                time.sleep(0.001)
            else:
                pytest.fail("rotated value not picked up within one second")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert bad == []
    assert store.get("openai").reveal() == written[-1]  # type: ignore[union-attr]
    assert seen <= allowed and len(seen) >= 2


def test_rotation_previous_value_kept_for_redaction_then_dropped(tmp_path: Path):
    """The rotated-out value is redacted, and known as ours, until it expires. Dropping
    it starts a new generation: owners_by_value is cached per generation, and would
    otherwise go on naming a key no longer kept."""
    now = [1000.0]
    old, new = openai_project_key(), openai_project_key()
    k8s_write(tmp_path, {"openai": old})
    store = SecretStore(tmp_path, keep_previous_seconds=60, clock=lambda: now[0])
    k8s_write(tmp_path, {"openai": new})
    store.refresh()
    values = {s.reveal() for s in store.redaction_values()}
    assert values == {old, new}
    assert store.owners_by_value() == {old: "openai", new: "openai"}
    assert store.get("openai").reveal() == new  # type: ignore[union-attr]
    generation = store.generation
    now[0] += 61
    store.refresh()
    assert {s.reveal() for s in store.redaction_values()} == {new}
    assert store.generation > generation
    assert store.owners_by_value() == {new: "openai"}


# -- hygiene --------------------------------------------------------------------------


def test_repr_never_shows_secret(tmp_path: Path):
    key = openai_project_key()
    secret = Secret("openai", key)
    texts = [
        repr(secret),
        str(secret),
        f"{secret}",
        f"{secret!r}",
        f"{secret!s}",
        f"{secret:>300}",
        "%s %r" % (secret, secret),  # noqa: UP031
        format(secret, ""),
        repr([secret]),
        repr({"k": secret}),
        repr((secret,)),
    ]
    for text in texts:
        assert key not in text
        assert key[8:30] not in text
    assert repr(secret).startswith("Secret(name='openai', sha256=")
    assert secret.reveal() == key
    assert not hasattr(secret, "__dict__")
    with pytest.raises(TypeError) as info:
        pickle.dumps(secret)
    assert key not in str(info.value)
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError):
            pickle.dumps([secret], protocol=proto)
    # Copies are the same immutable object (so dataclasses.asdict works), still safe.
    assert copy.copy(secret) is secret and copy.deepcopy(secret) is secret
    (tmp_path / "openai").write_text(key)
    store = SecretStore(tmp_path)
    assert key not in repr(store)


def test_exception_tracebacks_never_show_secret():
    key = openai_project_key()
    secret = Secret("openai", key)
    try:
        raise RuntimeError(f"failed to use {secret}")
    except RuntimeError:
        text = traceback.format_exc()
    assert key not in text
    try:
        validate_secret_value("openai", key.encode() + b"\n\nboom")
    except SecretError:
        text = traceback.format_exc()
    assert key not in text


def test_secret_equality_and_hash():
    key = openai_project_key()
    a, b = Secret("openai", key), Secret("openai", key)
    assert a == b and hash(a) == hash(b)
    assert a != Secret("openai", key + "x")
    assert a != Secret("other", key)


class _RevealedSlowly(Secret):
    """A remembered value whose first reveal() waits for the test: the refresh thread's
    rotation lands while the proxy thread is reading the values (the GIL can switch
    there in production; here it does every time)."""

    def __init__(self, name: str, value: str, reading: threading.Event, go: threading.Event):
        super().__init__(name, value)
        self.reading, self.go = reading, go

    def reveal(self) -> str:
        if not self.reading.is_set():
            self.reading.set()
            assert self.go.wait(10)
        return super().reveal()


def test_a_key_rotated_in_while_owners_are_built_is_known_as_ours(tmp_path: Path):
    """runner's refresh loop rotates keys on a worker thread while requests read
    owners_by_value: a cache built from the values before the rotation must not be
    filed under the generation after it, or the new key is never recognised as ours
    (a gateway replaying it is not refused as holding the sidecar's own key)."""
    old, new = openai_project_key(), openai_project_key()
    k8s_write(tmp_path, {"openai": old})
    store = SecretStore(tmp_path, keep_previous_seconds=60)
    reading, go = threading.Event(), threading.Event()
    store.remember(_RevealedSlowly("derived", openai_project_key(), reading, go))
    built = threading.Thread(target=store.owners_by_value)
    built.start()
    try:
        assert reading.wait(10)  # the proxy thread is building the owners
        k8s_write(tmp_path, {"openai": new})
        assert store.refresh() == {"openai"}  # the refresh thread's rotation
    finally:
        go.set()
        built.join(10)
    assert store.owners_by_value().get(new) == "openai"
    assert store.owners_by_value().get(old) == "openai"  # kept for keep_previous_seconds


def test_values_are_read_whole_while_another_thread_changes_them():
    """runner's refresh loop drops expired values on a worker thread while requests
    read redaction_values (owners_by_value, the reflection guard): a read iterating the
    live dicts raised 'dictionary changed size during iteration' (a request or a
    response failed closed for nothing)."""
    import secrets as random_values
    import sys

    store = SecretStore(None, environ={})
    for _ in range(200):
        store.remember(Secret("derived", random_values.token_urlsafe(24)))
    stop = threading.Event()

    def changing() -> None:
        while not stop.is_set():
            store.remember(Secret("derived", random_values.token_urlsafe(24)))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # thread switches as often as the interpreter allows
    thread = threading.Thread(target=changing, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 1
        reads = 0
        while time.monotonic() < deadline:
            assert len(store.redaction_values()) >= 200
            reads += 1
    finally:
        stop.set()
        thread.join(10)
        sys.setswitchinterval(interval)
    assert reads > 10
