"""Rendered manifests for the k8s tests: k8s/render.py on the base and the example overlay."""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
KUSTOMIZATIONS = {"base": BASE, "overlays/example": OVERLAY}
EGRESS_SIDECAR = ROOT / ".venv" / "bin" / "egress-sidecar"

Obj = dict[str, Any]


def _module(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, K8S / f"{name.split('_', 1)[1]}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def render_module() -> ModuleType:
    return _module("k8s_render")


def images_module() -> ModuleType:
    return _module("k8s_images")


@cache
def _rendered(name: str) -> tuple[Obj, ...]:
    return tuple(render_module().render(KUSTOMIZATIONS[name]))


def rendered(name: str = "overlays/example") -> list[Obj]:
    import copy

    return copy.deepcopy(list(_rendered(name)))


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(objects: list[Obj]) -> Obj:
    spec: Obj = one(objects, "Deployment", "litellm-gateway")["spec"]["template"]["spec"]
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
    return [(c["name"], m) for c in all_containers(spec)
            for m in c.get("volumeMounts", []) if m["name"] == volume]


def flag_values(args: list[str], flag: str) -> list[str]:
    values = []
    for i, arg in enumerate(args):
        if arg == flag:
            values.append(args[i + 1])
        elif arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
    return values
