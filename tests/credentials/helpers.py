"""Shared helpers for credential tests: realistic fake keys, Kubernetes-style secret dirs."""

from __future__ import annotations

import base64
import dataclasses
import os
import secrets
import string
from collections.abc import Callable
from functools import cache
from pathlib import Path

from sidecar.policy.loader import load_policy
from sidecar.policy.model import Endpoint, Policy

REPO = Path(__file__).resolve().parents[2]
B62 = string.ascii_letters + string.digits
URLSAFE = B62 + "-_"


def rand(n: int, alphabet: str = B62) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def hexs(n: int) -> str:
    return secrets.token_hex(n // 2)


# Realistic shapes of real provider keys (random each run, never real).
def openai_project_key() -> str:
    return "sk-proj-" + rand(156, URLSAFE)


def openai_svcacct_key() -> str:
    return "sk-svcacct-" + rand(100, URLSAFE)


def anthropic_key() -> str:
    return "sk-ant-api03-" + rand(93, URLSAFE) + "AA"


def anthropic_admin_key() -> str:
    return "sk-ant-admin01-" + rand(93, URLSAFE) + "AA"


def google_key() -> str:
    return "AIza" + rand(35, URLSAFE)


def groq_key() -> str:
    return "gsk_" + rand(52)


def xai_key() -> str:
    return "xai-" + rand(80)


def openrouter_key() -> str:
    return "sk-or-v1-" + hexs(64)


def fireworks_key() -> str:
    return "fw_" + rand(24)


def aws_key_id() -> str:
    return "AKIA" + rand(16, string.ascii_uppercase + string.digits)


def _caught(make: Callable[[], str], body: Callable[[str], str] = lambda k: k) -> str:
    """A random key of that shape that the generic rule catches. Generic (unprefixed)
    rules miss about 1% of random keys by design (see test_detect); tests of the
    request path use keys from the other 99%."""
    from sidecar.credentials.detect import looks_random

    while True:
        key = make()
        if looks_random(body(key)):
            return key


def deepseek_key() -> str:
    return _caught(lambda: "sk-" + hexs(32), lambda k: k[3:])


def azure_key() -> str:
    return hexs(32)


def mistral_key() -> str:
    return _caught(lambda: rand(32))


def jwt() -> str:
    return "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ" + rand(40, URLSAFE) + "." + rand(86, URLSAFE)


@cache
def default_policy() -> Policy:
    return load_policy([REPO / "policies" / "default.yaml"])


@cache
def azure_pinned_policy() -> Policy:
    return load_policy([REPO / "policies" / "examples" / "azure-openai-pinned.yaml"])


def provider(name: str) -> Endpoint:
    """A provider entry of the shipped default policy (Azure: the pinned example, since
    the default's wildcard Azure entry carries no key)."""
    policy = azure_pinned_policy() if name == "azure-openai" else default_policy()
    ep = policy.provider(name)
    assert ep is not None, name
    return ep


def allow_endpoint() -> Endpoint:
    """An `allow:` entry: no provider, no credential."""
    return dataclasses.replace(
        provider("openai"),
        rule="allow[0]",
        provider=None,
        hosts=("otel-collector.monitoring.svc.cluster.local",),
        credential=None,
    )


# -- Kubernetes Secret volume layout (what kubelet's AtomicWriter does) ------------

_counter = [0]


def _ts_dir_name() -> str:
    _counter[0] += 1
    return f"..2026_11_22_10_00_00.{os.getpid()}{_counter[0]:06d}"


def k8s_write(directory: Path, values: dict[str, str | bytes]) -> None:
    """Create or atomically update a Kubernetes-style secret volume at `directory`.

    New timestamped dir with the files -> `..data_tmp` symlink -> rename over `..data`
    -> top-level `name -> ..data/name` links for new names, stale ones removed ->
    old timestamped dir deleted.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ts = directory / _ts_dir_name()
    ts.mkdir()
    for name, value in values.items():
        data = value.encode() if isinstance(value, str) else value
        (ts / name).write_bytes(data)
    data_link = directory / "..data"
    old_target = os.readlink(data_link) if data_link.is_symlink() else None
    tmp = directory / "..data_tmp"
    os.symlink(ts.name, tmp)
    os.rename(tmp, data_link)
    for name in values:
        link = directory / name
        if not link.is_symlink():
            os.symlink(f"..data/{name}", link)
    for entry in os.listdir(directory):
        if not entry.startswith(".") and entry not in values:
            os.unlink(directory / entry)
    if old_target is not None:
        old = directory / old_target
        for f in old.iterdir():
            f.unlink()
        old.rmdir()


def google_oauth_token() -> str:
    return "ya29.a0" + rand(150, URLSAFE)


def bedrock_api_key() -> str:
    """Bedrock's long-term API key: "ABSK" + base64 of "BedrockAPIKey-..." + random."""
    return "ABSK" + base64.b64encode(b"BedrockAPIKey-" + secrets.token_bytes(60)).decode()
