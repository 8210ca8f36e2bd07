"""Shared fixtures for the integration tests: a fake internet on loopback.

- a test CA (trustme) that signs the fake provider's certificate; the sidecar gets
  it as its extra upstream CA;
- a fake provider (TLS, OpenAI- and Anthropic-shaped, streaming) on 127.0.0.1;
- a fake DNS server that maps provider names to it;
- `start_sidecar(policy_text)`: the real `egress-sidecar run` process.

Provider entries in test policies allow `addresses: [127.0.0.0/8]`: the fake
internet lives on loopback, and loopback answers are otherwise refused (S3).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.fakes import BackgroundLoop, FakeDNS, FakeProvider
from tests.support.keys import KEYS, SecretMount, key_policy
from tests.support.ports import free_port
from tests.support.sidecar import SidecarProcess, loopback_args

PROVIDER_NAMES = [
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "myres.openai.azure.com",
    "rebind.openai.com",
    "meta.openai.com",
    "unlisted.example.com",
    "api.mistral.ai",
]


@pytest.fixture(scope="session")
def bg() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def test_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def test_ca_file(test_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("testca") / "ca.pem"
    test_ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="session")
def provider(bg: BackgroundLoop, test_ca: trustme.CA) -> Iterator[FakeProvider]:
    fake = FakeProvider(bg, test_ca, PROVIDER_NAMES).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def dns_server(bg: BackgroundLoop) -> Iterator[FakeDNS]:
    fake = FakeDNS(bg).start()
    fake.records.update(
        {
            "api.openai.com": ["127.0.0.1"],
            "api.anthropic.com": ["127.0.0.1"],
            "generativelanguage.googleapis.com": ["127.0.0.1"],
            "myres.openai.azure.com": ["127.0.0.1"],
            "unlisted.example.com": ["127.0.0.1"],
            "api.mistral.ai": ["127.0.0.1"],
            # DNS rebinding: allowed names whose answers point inside.
            "rebind.openai.com": ["10.0.0.5"],
            "meta.openai.com": ["169.254.169.254"],
            "mixed.openai.com": ["127.0.0.1", "192.168.1.10"],
        }
    )
    yield fake
    fake.stop()


def provider_policy(port: int, mode: str = "enforce", extra: str = "") -> str:
    return (
        textwrap.dedent(
            f"""\
        version: 1
        mode: {mode}
        providers:
          openai:
            hosts: [api.openai.com, rebind.openai.com, meta.openai.com, mixed.openai.com]
            ports: [{port}]
            paths: [/v1/*]
            methods: [GET, POST]
            addresses: [127.0.0.0/8]
          anthropic:
            hosts: [api.anthropic.com]
            ports: [{port}]
            paths: [/v1/messages, /v1/models]
            addresses: [127.0.0.0/8]
          gemini:
            hosts: [generativelanguage.googleapis.com]
            ports: [{port}]
            addresses: [127.0.0.0/8]
          azure:
            hosts: ["*.openai.azure.com"]
            ports: [{port}]
            addresses: [127.0.0.0/8]
        """
        )
        + extra
    )


@pytest.fixture(scope="session")
def sidecar_ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sidecar-ca")  # one CA for all: clients trust one file


# Module scope: a module's sidecars stop when the module is done. Kept for the whole
# session, ~90 idle sidecars (each polling its policy and secrets) added up to more
# than the machine's two cores by the last third of the suite.
@pytest.fixture(scope="module")
def start_sidecar(
    tmp_path_factory: pytest.TempPathFactory,
    provider: FakeProvider,
    dns_server: FakeDNS,
    test_ca_file: str,
    sidecar_ca_dir: Path,
) -> Iterator[Callable[..., SidecarProcess]]:
    started: list[SidecarProcess] = []
    ca_dir = sidecar_ca_dir

    def start(
        policy_text: str | None = None,
        *,
        policy_path: Path | None = None,
        reverse: tuple[str, ...] = (),
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> SidecarProcess:
        if policy_path is None:
            policy_path = tmp_path_factory.mktemp("policy") / "policy.yaml"
            policy_path.write_text(policy_text or provider_policy(provider.port))
        args = loopback_args(policy_path, ca_dir, dns_server.port, upstream_ca=test_ca_file)
        args += ["--reload-interval", "0.2"]
        for name in reverse:
            args += ["--reverse", f"{name}@127.0.0.1:{free_port()}"]
        sidecar = SidecarProcess([*args, *extra_args], env=env).start()
        started.append(sidecar)
        return sidecar

    yield start
    failures = []
    for sidecar in started:  # every one, even if stopping another failed
        try:
            sidecar.stop()
        except Exception as exc:  # reported below, after the others
            failures.append(repr(exc))
    assert not failures, failures


@pytest.fixture(scope="module")
def sidecar(start_sidecar: Callable[..., SidecarProcess]) -> SidecarProcess:
    """Enforcing sidecar on the test provider policy, explicit and reverse listeners."""
    return start_sidecar(reverse=("openai", "anthropic"))


@pytest.fixture(scope="module")
def secrets(tmp_path_factory) -> SecretMount:
    return SecretMount(tmp_path_factory.mktemp("secrets") / "mount", dict(KEYS))


@pytest.fixture(scope="module")
def keyed(start_sidecar, provider, secrets) -> SidecarProcess:
    return start_sidecar(
        key_policy(provider.port),
        reverse=("openai",),
        extra_args=("--secrets-dir", str(secrets.root)),
    )
