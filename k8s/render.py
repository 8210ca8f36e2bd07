#!/usr/bin/env python3
"""A minimal kustomize: renders the kustomizations under k8s/ without the kustomize binary.

    python3 k8s/render.py k8s/overlays/example   # a YAML stream, like `kubectl kustomize`

CI has no kustomize (no package for it in the registries it can reach), so this implements
exactly the features k8s/ uses, with kustomize's semantics, and refuses everything else:

  resources            files (multi-document YAML) and directories holding a kustomization;
                       a file must lie inside the kustomization's directory (kustomize's
                       default load restrictor)
  namespace            set on every namespaced object (cluster-scoped kinds keep none)
  labels               pairs added to metadata.labels; includeTemplates also adds them to pod
                       templates; includeSelectors must be false (selectors stay untouched)
  images               name -> newName, newTag, digest (the digest wins over the tag)
  configMapGenerator,  files (KEY=PATH or PATH), literals (KEY=VALUE); only with
  secretGenerator      generatorOptions.disableNameSuffixHash: true (no name hashes, so no
                       name references to rewrite)

Each kustomization renders its resources (sub-kustomizations fully rendered first), adds its
generated objects, then applies namespace, labels and images to all of them. Output is in
kustomize's default ("legacy") kind order. tests/k8s compares this output with
`kubectl kustomize` whenever that binary is present.
"""

from __future__ import annotations

import base64
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "images",
             "configMapGenerator", "secretGenerator", "generatorOptions"}
CLUSTER_SCOPED = {
    "Namespace", "Node", "PersistentVolume", "StorageClass", "CustomResourceDefinition",
    "ClusterRole", "ClusterRoleBinding", "PriorityClass", "RuntimeClass", "IngressClass",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "APIService",
    "CSIDriver", "CSINode", "VolumeAttachment", "ClusterIssuer",
}
# kustomize's "legacy" output order: these kinds first, in this order, then every other kind
# by group/version/kind, then the webhook configurations.
ORDER_FIRST = [
    "Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition", "ServiceAccount",
    "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding",
    "ConfigMap", "Secret", "Endpoints", "Service", "LimitRange", "PriorityClass",
    "PersistentVolume", "PersistentVolumeClaim", "Deployment", "StatefulSet", "CronJob",
    "PodDisruptionBudget",
]
ORDER_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
WORKLOADS_WITH_TEMPLATE = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job",
                           "ReplicationController"}


class RenderError(Exception):
    pass


def find_kustomization(directory: Path) -> Path:
    for name in KUSTOMIZATION_NAMES:
        if (directory / name).is_file():
            return directory / name
    raise RenderError(f"{directory}: no kustomization.yaml")


def inside(root: Path, relative: str) -> Path:
    """A file a kustomization may load: in or below its directory, symlinks resolved."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise RenderError(f"{root}: {relative!r} is not in or below {root} "
                          "(kustomize's load restrictor refuses it too)")
    return path


def load_documents(path: Path) -> list[Obj]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "metadata" not in doc:
            raise RenderError(f"{path}: every document must be a Kubernetes object")
        if doc["kind"].endswith("List"):
            raise RenderError(f"{path}: List objects are not supported")
    return docs


def render(directory: Path | str, _stack: tuple[Path, ...] = ()) -> list[Obj]:
    directory = Path(directory).resolve()
    if directory in _stack:
        raise RenderError(f"cycle: {' -> '.join(str(p) for p in (*_stack, directory))}")
    kfile = find_kustomization(directory)
    k = yaml.safe_load(kfile.read_text()) or {}
    unsupported = set(k) - SUPPORTED
    if unsupported:
        raise RenderError(f"{kfile}: not supported by k8s/render.py: {sorted(unsupported)} "
                          "(extend the renderer, its tests and the README, or avoid it)")
    if k.get("kind", "Kustomization") != "Kustomization":
        raise RenderError(f"{kfile}: kind {k['kind']!r} (components are not supported)")

    objects: list[Obj] = []
    for entry in k.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            objects.extend(render(target, (*_stack, directory)))
        else:
            objects.extend(load_documents(inside(directory, entry)))
    objects.extend(generate(directory, k, kfile))

    if "namespace" in k:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = k["namespace"]
    for spec in k.get("labels", []):
        apply_labels(objects, spec, kfile)
    for image in k.get("images", []):
        apply_image(objects, image, kfile)

    seen: set[tuple[str, str, str, str]] = set()
    for obj in objects:
        key = identity(obj)
        if key in seen:
            raise RenderError(f"{kfile}: {key} defined twice")
        seen.add(key)
    return sort_legacy(objects)


def identity(obj: Obj) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return (obj.get("apiVersion", ""), obj["kind"], meta.get("namespace", ""), meta["name"])


def generate(directory: Path, k: Obj, kfile: Path) -> list[Obj]:
    generators = [("ConfigMap", g) for g in k.get("configMapGenerator", [])]
    generators += [("Secret", g) for g in k.get("secretGenerator", [])]
    if not generators:
        return []
    options = k.get("generatorOptions", {})
    if set(options) - {"disableNameSuffixHash"} or options.get("disableNameSuffixHash") is not True:
        raise RenderError(f"{kfile}: generators need generatorOptions: "
                          "{disableNameSuffixHash: true} and nothing else (name hashes and "
                          "the name references they rewrite are not implemented)")
    out = []
    for kind, gen in generators:
        allowed = {"name", "files", "literals"} | ({"type"} if kind == "Secret" else set())
        if set(gen) - allowed or gen.get("behavior", "create") != "create":
            raise RenderError(f"{kfile}: {kind} generator {gen.get('name')!r}: only "
                              f"{sorted(allowed)} are supported")
        data: dict[str, str] = {}
        for item in gen.get("files", []):
            key, _, path = item.rpartition("=") if "=" in item else ("", "", item)
            key = key or Path(path).name
            if key in data:
                raise RenderError(f"{kfile}: {gen['name']}: key {key!r} twice")
            data[key] = inside(directory, path).read_text()
        for item in gen.get("literals", []):
            key, sep, value = item.partition("=")
            if not sep or key in data:
                raise RenderError(f"{kfile}: {gen['name']}: bad or repeated literal {key!r}")
            data[key] = value
        obj: Obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": gen["name"]}}
        if kind == "Secret":
            obj["type"] = gen.get("type", "Opaque")
            obj["data"] = {key: base64.b64encode(v.encode()).decode() for key, v in data.items()}
        else:
            obj["data"] = data
        out.append(obj)
    return out


def apply_labels(objects: list[Obj], spec: Obj, kfile: Path) -> None:
    if set(spec) - {"pairs", "includeSelectors", "includeTemplates"} or spec.get(
        "includeSelectors", False
    ):
        raise RenderError(f"{kfile}: labels: only pairs, includeTemplates and "
                          "includeSelectors: false are supported")
    pairs = {str(a): str(b) for a, b in spec["pairs"].items()}
    for obj in objects:
        obj["metadata"].setdefault("labels", {}).update(pairs)
        if spec.get("includeTemplates") and obj["kind"] in WORKLOADS_WITH_TEMPLATE:
            template = obj["spec"]["template"].setdefault("metadata", {})
            template.setdefault("labels", {}).update(pairs)


def split_image(image: str) -> tuple[str, str]:
    """'repo/name:tag@sha256:...' -> ('repo/name', ':tag@sha256:...')."""
    at = image.find("@")
    head, digest = (image[:at], image[at:]) if at >= 0 else (image, "")
    colon = head.rfind(":")
    if colon > head.rfind("/"):
        return head[:colon], head[colon:] + digest
    return head, digest


def apply_image(objects: list[Obj], spec: Obj, kfile: Path) -> None:
    if set(spec) - {"name", "newName", "newTag", "digest"}:
        raise RenderError(f"{kfile}: images: only name, newName, newTag, digest")

    def rewrite(image: str) -> str:
        name, suffix = split_image(image)
        if name != spec["name"]:
            return image
        new = spec.get("newName", name)
        if "digest" in spec:
            return f"{new}@{spec['digest']}"
        if "newTag" in spec:
            return f"{new}:{spec['newTag']}"
        return new + suffix

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers", "ephemeralContainers") and isinstance(
                    value, list
                ):
                    for container in value:
                        if isinstance(container, dict) and "image" in container:
                            container["image"] = rewrite(str(container["image"]))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for obj in objects:
        walk(obj.get("spec"))


def sort_legacy(objects: list[Obj]) -> list[Obj]:
    def key(obj: Obj) -> tuple[int, str, str, str]:
        kind = obj["kind"]
        group_version = obj.get("apiVersion", "")
        group, _, version = group_version.rpartition("/")
        if kind in ORDER_FIRST:
            rank, gvk = ORDER_FIRST.index(kind), ""
        elif kind in ORDER_LAST:
            rank, gvk = 1000 + ORDER_LAST.index(kind), ""
        else:
            rank, gvk = len(ORDER_FIRST), f"{group}_{version}_{kind}"
        meta = obj["metadata"]
        return (rank, gvk, meta.get("namespace", ""), meta["name"])

    return sorted(copy.deepcopy(objects), key=key)


def to_yaml(objects: list[Obj]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=True, default_flow_style=False)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        sys.stdout.write(to_yaml(render(argv[1])))
    except (RenderError, OSError, yaml.YAMLError) as exc:
        print(f"render.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
