"""What a valid policy turns into: exact `Endpoint`s, defaults, merge order, directories."""

from __future__ import annotations

import hashlib
import ipaddress
import os
from pathlib import Path

import pytest
from policy_helpers import REPO, WriteFiles, problems_of

from sidecar.policy.errors import Problem
from sidecar.policy.loader import (
    find_policy_files,
    load_policy,
    load_policy_bytes,
)
from sidecar.policy.model import ANY_PATH, CredentialSpec, Endpoint, Mode, PathRules, SourceRef

FULL = """\
version: 1
mode: audit
providers:
  openai:
    hosts: [api.openai.com, eu.openai.example.com]
    ports: [443, 8443]
    paths: [/v1/models, "/v1/chat/*", "/v2/"]
    methods: [GET, POST, DELETE]
    addresses: [10.20.0.0/16, "fd12:3456::/32"]
    credential: {header: authorization, format: "Bearer {secret}", secret: openai}
  anthropic:
    hosts: [api.anthropic.com, "*.anthropic.example.com"]
allow:
  - name: otel
    host: otel-collector.monitoring.svc.cluster.local
    ports: [4318]
    addresses: [10.0.0.0/8]
  - cidrs: [10.1.2.0/24, "fd00:1::/64"]
    ports: [9000]
    paths: ["/*"]
    methods: [PUT]
  - hosts: [a.internal.example, b.internal.example]
    ports: [80, 8080]
"""


def test_full_policy_maps_to_exact_endpoints(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(FULL)
    policy = load_policy([path])
    f = str(path)
    net = ipaddress.ip_network
    assert policy.mode is Mode.AUDIT
    assert policy.files == (f,)
    assert policy.endpoints == (
        Endpoint(
            rule="providers.openai",
            provider="openai",
            hosts=("api.openai.com", "eu.openai.example.com"),
            cidrs=(),
            ports=frozenset({443, 8443}),
            paths=PathRules(
                exact=frozenset({"/v1/models", "/v2/"}), prefixes=frozenset({"/v1/chat/"})
            ),
            methods=frozenset({"GET", "POST", "DELETE"}),
            addresses=(net("10.20.0.0/16"), net("fd12:3456::/32")),
            tls_required=True,
            credential=CredentialSpec("authorization", "Bearer {secret}", "openai"),
            source=SourceRef(f, 4),
        ),
        Endpoint(
            rule="providers.anthropic",
            provider="anthropic",
            hosts=("api.anthropic.com", "*.anthropic.example.com"),
            cidrs=(),
            ports=frozenset({443}),
            paths=ANY_PATH,
            methods=frozenset({"GET", "POST"}),
            addresses=(),
            tls_required=True,
            credential=None,
            source=SourceRef(f, 11),
        ),
        Endpoint(
            rule="allow.otel",
            provider=None,
            hosts=("otel-collector.monitoring.svc.cluster.local",),
            cidrs=(),
            ports=frozenset({4318}),
            paths=ANY_PATH,
            methods=None,
            addresses=(net("10.0.0.0/8"),),
            tls_required=False,
            credential=None,
            source=SourceRef(f, 14),
        ),
        Endpoint(
            rule="allow[1]",
            provider=None,
            hosts=(),
            cidrs=(net("10.1.2.0/24"), net("fd00:1::/64")),
            ports=frozenset({9000}),
            paths=ANY_PATH,
            methods=frozenset({"PUT"}),
            addresses=(),
            tls_required=False,
            credential=None,
            source=SourceRef(f, 18),
        ),
        Endpoint(
            rule="allow[2]",
            provider=None,
            hosts=("a.internal.example", "b.internal.example"),
            cidrs=(),
            ports=frozenset({80, 8080}),
            paths=ANY_PATH,
            methods=None,
            addresses=(),
            tls_required=False,
            credential=None,
            source=SourceRef(f, 22),
        ),
    )
    assert policy.provider("openai") is policy.endpoints[0]
    assert policy.endpoints[3].paths.allows_any


def test_digest_is_sha256_over_length_framed_files_in_order(write_files: WriteFiles) -> None:
    a, b = write_files(("a.yaml", "version: 1\n"), ("b.yaml", "version: 1\nmode: audit\n"))
    expected = hashlib.sha256()
    for path in (a, b):
        data = path.read_bytes()
        expected.update(len(data).to_bytes(8, "big") + data)
    assert load_policy([a, b]).digest == expected.hexdigest()
    assert load_policy([b, a]).digest != expected.hexdigest()


def test_digest_changes_when_bytes_move_between_files() -> None:
    one = load_policy_bytes([("a", b"version: 1\n"), ("b", b"version: 1\n\n")])
    two = load_policy_bytes([("a", b"version: 1\n\n"), ("b", b"version: 1\n")])
    assert one.digest != two.digest


@pytest.mark.parametrize(
    ("modes", "expected"),
    [
        pytest.param([None, None], Mode.ENFORCE, id="default_enforce"),
        pytest.param(["audit", None], Mode.AUDIT, id="one_file_sets_audit"),
        pytest.param([None, "audit"], Mode.AUDIT, id="later_file_sets_audit"),
        pytest.param(["audit", "audit"], Mode.AUDIT, id="files_agree"),
        pytest.param(["enforce", None], Mode.ENFORCE, id="explicit_enforce"),
    ],
)
def test_mode_merge(modes: list[str | None], expected: Mode) -> None:
    sources = [
        (f"f{i}.yaml", (f"version: 1\nmode: {m}\n" if m else "version: 1\n").encode())
        for i, m in enumerate(modes)
    ]
    assert load_policy_bytes(sources).mode is expected


def test_provider_and_allow_entries_merge_in_file_order(write_files: WriteFiles) -> None:
    a, b = write_files(
        ("a.yaml", "version: 1\nproviders:\n  z: {hosts: [z.example.com]}\n"),
        (
            "b.yaml",
            "version: 1\nproviders:\n  a: {hosts: [a.example.com]}\n"
            "allow:\n  - {host: c.example.com, ports: [1]}\n",
        ),
    )
    policy = load_policy([a, b])
    assert [(e.rule, e.source) for e in policy.endpoints] == [
        ("providers.z", SourceRef(str(a), 3)),
        ("providers.a", SourceRef(str(b), 3)),
        ("allow[0]", SourceRef(str(b), 5)),
    ]


def test_aliases_are_followed(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\nproviders:\n  a:\n    hosts: [a.example.com]\n    paths: &p ['/v1/*']\n"
        "  b:\n    hosts: [b.example.com]\n    paths: *p\n"
    )
    policy = load_policy([path])
    assert policy.endpoints[1].paths == PathRules(frozenset(), frozenset({"/v1/"}))


def test_providers_may_be_empty_mapping(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nproviders: {}\n")
    assert load_policy([path]).endpoints == ()


# --- files and directories ---------------------------------------------------------


def _configmap_mount(root: Path) -> Path:
    """The layout kubelet makes for a ConfigMap volume: ..data -> ..<timestamp>/, symlinks."""
    mount = root / "policy"
    real = mount / "..2024_01_01_00_00_00.000000001"
    real.mkdir(parents=True)
    (real / "10-providers.yaml").write_text(
        "version: 1\nproviders:\n  a: {hosts: [a.example.com]}\n"
    )
    (real / "20-extra.yml").write_text(
        "version: 1\nallow:\n  - {host: b.example.com, ports: [1]}\n"
    )
    (real / "README.txt").write_text("not a policy")
    os.symlink(real.name, mount / "..data")
    for name in ("10-providers.yaml", "20-extra.yml", "README.txt"):
        os.symlink(f"..data/{name}", mount / name)
    return mount


def test_configmap_mount_loads_visible_symlinks_only(tmp_path: Path) -> None:
    mount = _configmap_mount(tmp_path)
    assert find_policy_files([mount]) == [mount / "10-providers.yaml", mount / "20-extra.yml"]
    policy = load_policy([mount])
    assert policy.files == (str(mount / "10-providers.yaml"), str(mount / "20-extra.yml"))
    assert [e.rule for e in policy.endpoints] == ["providers.a", "allow[0]"]


def test_directory_is_sorted_non_recursive_and_skips_dotfiles(
    write_files: WriteFiles, tmp_path: Path
) -> None:
    write_files(
        ("d/b.yaml", "version: 1\n"),
        ("d/a.yml", "version: 1\n"),
        ("d/.hidden.yaml", "garbage: ["),
        ("d/notes.txt", "garbage: ["),
        ("d/sub/c.yaml", "garbage: ["),
        ("d/x.YAML", "garbage: ["),
    )
    (tmp_path / "d" / "dir.yaml").mkdir()
    assert find_policy_files([tmp_path / "d"]) == [tmp_path / "d/a.yml", tmp_path / "d/b.yaml"]


def test_explicit_file_is_loaded_whatever_its_extension(write_files: WriteFiles) -> None:
    (path,) = write_files(("policy.conf", "version: 1\n"))
    assert load_policy([path]).files == (str(path),)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        pytest.param("missing", "no such file or directory", id="nonexistent_path"),
        pytest.param("dangling", "dangling symlink", id="dangling_symlink"),
        pytest.param("empty_dir", "no *.yaml or *.yml policy files found", id="empty_directory"),
    ],
)
def test_path_problems(tmp_path: Path, setup: str, message: str) -> None:
    target = tmp_path / "x"
    if setup == "dangling":
        os.symlink(tmp_path / "nowhere.yaml", target)
    elif setup == "empty_dir":
        target.mkdir()
    assert problems_of([target]) == [Problem(str(target), 0, "", message)]


def test_no_paths_at_all() -> None:
    assert problems_of([]) == [Problem("<nothing>", 0, "", "no *.yaml or *.yml policy files found")]


def test_same_file_twice_is_an_error(write_files: WriteFiles, tmp_path: Path) -> None:
    (path,) = write_files(("d/a.yaml", "version: 1\n"))
    problems = problems_of([tmp_path / "d", path])
    assert problems == [Problem(str(path), 0, "", f"same file as {path}: each file is loaded once")]


def test_missing_and_present_paths_report_only_the_missing(
    write_files: WriteFiles, tmp_path: Path
) -> None:
    (path,) = write_files(("a.yaml", "version: 1\n"))
    assert problems_of([path, tmp_path / "gone.yaml"]) == [
        Problem(str(tmp_path / "gone.yaml"), 0, "", "no such file or directory")
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(write_files: WriteFiles) -> None:
    (path,) = write_files(("a.yaml", "version: 1\n"))
    path.chmod(0)
    problems = problems_of([path])
    assert [(p.file, p.line) for p in problems] == [(str(path), 0)]
    assert problems[0].message.startswith("cannot read file")


def test_unreadable_file_via_read_error(
    write_files: WriteFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    (path,) = write_files(("a.yaml", "version: 1\n"))

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    assert problems_of([path]) == [Problem(str(path), 0, "", "cannot read file: Permission denied")]


# --- the shipped default -------------------------------------------------------------

DEFAULT_PROVIDERS = {
    "openai": ["api.openai.com"],
    "azure-openai": ["*.openai.azure.com"],
    "anthropic": ["api.anthropic.com"],
    "gemini": ["generativelanguage.googleapis.com"],
    "vertex-ai": ["aiplatform.googleapis.com"]
    + [
        f"{r}-aiplatform.googleapis.com"
        for r in (
            "us-central1",
            "us-east1",
            "us-east4",
            "us-east5",
            "us-west1",
            "us-west4",
            "europe-west1",
            "europe-west4",
            "europe-west9",
            "asia-northeast1",
            "asia-southeast1",
        )
    ],
    "bedrock": [
        f"bedrock-runtime.{r}.amazonaws.com"
        for r in (
            "us-east-1",
            "us-east-2",
            "us-west-2",
            "eu-central-1",
            "eu-west-1",
            "eu-west-3",
            "ap-northeast-1",
            "ap-south-1",
            "ap-southeast-1",
            "ap-southeast-2",
        )
    ],
    "mistral": ["api.mistral.ai"],
    "cohere": ["api.cohere.com", "api.cohere.ai"],
    "groq": ["api.groq.com"],
    "together": ["api.together.xyz"],
    "openrouter": ["openrouter.ai"],
    "deepseek": ["api.deepseek.com"],
    "xai": ["api.x.ai"],
    "fireworks": ["api.fireworks.ai"],
}

DEFAULT_CREDENTIALS = {
    "openai": ("authorization", "Bearer {secret}"),
    "anthropic": ("x-api-key", "{secret}"),
    "gemini": ("x-goog-api-key", "{secret}"),
    "mistral": ("authorization", "Bearer {secret}"),
    "cohere": ("authorization", "Bearer {secret}"),
    "groq": ("authorization", "Bearer {secret}"),
    "together": ("authorization", "Bearer {secret}"),
    "openrouter": ("authorization", "Bearer {secret}"),
    "deepseek": ("authorization", "Bearer {secret}"),
    "xai": ("authorization", "Bearer {secret}"),
    "fireworks": ("authorization", "Bearer {secret}"),
}


def test_default_policy_allows_exactly_the_major_providers_on_443() -> None:
    policy = load_policy([REPO / "policies" / "default.yaml"])
    assert policy.mode is Mode.ENFORCE
    assert {e.provider: list(e.hosts) for e in policy.endpoints} == DEFAULT_PROVIDERS
    for endpoint in policy.endpoints:
        assert endpoint.rule == f"providers.{endpoint.provider}"
        assert endpoint.ports == frozenset({443}), endpoint.rule
        assert endpoint.tls_required, endpoint.rule
        assert endpoint.cidrs == () and endpoint.addresses == (), endpoint.rule
        assert not endpoint.paths.allows_any, f"{endpoint.rule} allows any path"
        assert "CONNECT" not in (endpoint.methods or ())


def test_default_policy_credentials_are_bound_to_their_own_provider() -> None:
    policy = load_policy([REPO / "policies" / "default.yaml"])
    creds = {
        e.provider: (e.credential.header, e.credential.format)
        for e in policy.endpoints
        if e.credential is not None
    }
    assert creds == DEFAULT_CREDENTIALS
    for endpoint in policy.endpoints:
        if endpoint.credential is not None:
            assert endpoint.credential.secret == endpoint.provider
    # Vertex and Bedrock sign or mint tokens: a static header would be wrong.
    assert policy.provider("vertex-ai").credential is None  # type: ignore[union-attr]
    assert policy.provider("bedrock").credential is None  # type: ignore[union-attr]
    assert policy.provider("vertex-ai").secret_name == "vertex"  # type: ignore[union-attr]
    assert policy.provider("bedrock").secret_name == "bedrock"  # type: ignore[union-attr]


def test_default_policy_never_widens_to_shared_hosting_domains() -> None:
    text = (REPO / "policies" / "default.yaml").read_text()
    policy = load_policy([REPO / "policies" / "default.yaml"])
    hosts = [h for e in policy.endpoints for h in e.hosts]
    for forbidden in ("*.amazonaws.com", "*.googleapis.com", "*.azure.com", "*.ai"):
        assert forbidden not in hosts
    assert [h for h in hosts if h.startswith("*.")] == ["*.openai.azure.com"]
    assert "REPLACE THE WILDCARD WITH YOUR OWN RESOURCE NAME" in text
    # The wildcard carries no key: the loader refuses credentials on wildcard hosts.
    assert policy.provider("azure-openai").credential is None  # type: ignore[union-attr]


EXAMPLES = REPO / "policies" / "examples"


def test_add_on_examples_merge_with_the_default() -> None:
    policy = load_policy(
        [REPO / "policies", EXAMPLES / "telemetry.yaml", EXAMPLES / "internal-cidr.yaml"]
    )
    assert [e.rule for e in policy.endpoints][-2:] == ["allow.otel", "allow.vector-db"]


def test_pinned_azure_example_replaces_rather_than_adds() -> None:
    pinned = load_policy([EXAMPLES / "azure-openai-pinned.yaml"])
    assert pinned.endpoints[0].hosts == (
        "contoso-prod-eastus.openai.azure.com",
        "contoso-prod-swedencentral.openai.azure.com",
    )
    problems = problems_of([REPO / "policies", EXAMPLES / "azure-openai-pinned.yaml"])
    assert [p.key for p in problems] == [
        "providers.azure-openai",
        "providers.azure-openai.hosts[0]",
        "providers.azure-openai.hosts[1]",
    ]


def test_shipped_policy_files_all_load() -> None:
    # policies/tests/ holds `policy test` case files; the overrides example changes the
    # default, so it loads on top of it.
    files = sorted(p for p in (REPO / "policies").rglob("*.yaml") if p.parent.name != "tests")
    assert REPO / "policies" / "default.yaml" in files
    overrides = EXAMPLES / "overrides.yaml"
    for path in files:
        load_policy([REPO / "policies" / "default.yaml", path] if path == overrides else [path])
