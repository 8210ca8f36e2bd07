"""Fixtures for the decision-core tests: real policies through the real loader."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable

import pytest

from sidecar.engine import PolicyEngine
from sidecar.hostnames import IPAddress
from sidecar.policy.errors import PolicyError
from sidecar.policy.loader import load_policy

MakeEngine = Callable[..., PolicyEngine]
LoadProblems = Callable[[str], list[str]]

# A policy exercising every kind of entry the engine indexes.
CORE_POLICY = """\
version: 1
mode: {mode}
providers:
  openai:
    hosts: [api.openai.com]
    paths: ["/v1/*"]
    methods: [GET, POST]
  anthropic:
    hosts: [api.anthropic.com]
    paths: [/v1/messages, "/v1/models/*"]
  azure:
    hosts: ["*.openai.azure.com"]
    paths: ["/openai/*"]
  wide:
    hosts: ["*.example.com"]
  narrow:
    hosts: ["*.deep.example.org", "*.example.org"]
  internal-ai:
    hosts: [ai.corp.example.net]
    addresses: [10.20.0.0/16]
allow:
  - name: otel
    host: otel.example.net
    ports: [4318]
  - name: wild
    hosts: ["*.wild.example.net", exact.wild.example.net]
    ports: [9443]
  - name: lan
    cidrs: [10.1.0.0/16, 10.1.2.0/24]
    ports: [9000]
  - name: lan-host
    cidr: 10.2.2.3/32
    ports: [9001]
  - name: public-block
    cidr: 203.0.113.0/24
    ports: [443]
  - name: v6
    cidr: 2001:db8:1::/48
    ports: [443]
"""


@pytest.fixture(scope="session")
def make_engine(tmp_path_factory: pytest.TempPathFactory) -> MakeEngine:
    """make_engine(policy_text, own=()) -> PolicyEngine, via `load_policy` on a file."""
    cache: dict[tuple[str, frozenset[IPAddress]], PolicyEngine] = {}

    def make(text: str, own: Iterable[IPAddress] = ()) -> PolicyEngine:
        key = (text, frozenset(own))
        if key not in cache:
            path = tmp_path_factory.mktemp("policy") / "policy.yaml"
            path.write_text(textwrap.dedent(text), encoding="utf-8")
            cache[key] = PolicyEngine(load_policy([path]), own_addresses=own)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def load_problems(tmp_path_factory: pytest.TempPathFactory) -> LoadProblems:
    """load_problems(policy_text) -> the loader's problem messages (must fail)."""

    def problems(text: str) -> list[str]:
        path = tmp_path_factory.mktemp("bad-policy") / "policy.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        with pytest.raises(PolicyError) as info:
            load_policy([path])
        return [p.message for p in info.value.problems]

    return problems


@pytest.fixture(scope="session")
def engine(make_engine: MakeEngine) -> PolicyEngine:
    return make_engine(CORE_POLICY.format(mode="enforce"))


@pytest.fixture(scope="session")
def audit_engine(make_engine: MakeEngine) -> PolicyEngine:
    return make_engine(CORE_POLICY.format(mode="audit"))
