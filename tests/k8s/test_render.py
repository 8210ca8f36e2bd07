"""k8s/render.py implements the kustomize features k8s/ uses, and refuses the rest."""

from __future__ import annotations

import base64
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.k8s.helpers import OVERLAY, ROOT, render_module

render = render_module()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


DEPLOY = """\
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: app, labels: {a: "1"}}
    spec:
      selector: {matchLabels: {a: "1"}}
      template:
        metadata: {labels: {a: "1"}}
        spec:
          initContainers: [{name: i, image: "tool:1.0"}]
          containers: [{name: c, image: "registry.example/app:old"}]
    """


def test_namespace_labels_images_generators(tmp_path: Path) -> None:
    write(tmp_path / "base/deploy.yaml", DEPLOY)
    write(tmp_path / "base/ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
    write(tmp_path / "base/kustomization.yaml", """\
        resources: [deploy.yaml, ns.yaml]
        labels:
          - pairs: {team: llm}
            includeTemplates: true
        images:
          - {name: tool, newTag: "2.0"}
        """)
    write(tmp_path / "overlay/files/p.yaml", "version: 1\n")
    write(tmp_path / "overlay/kustomization.yaml", """\
        namespace: prod
        resources: [../base]
        images:
          - {name: registry.example/app, newName: mirror.example/app, digest: "sha256:ab"}
        generatorOptions: {disableNameSuffixHash: true}
        configMapGenerator:
          - {name: policies, files: [files/p.yaml, other=files/p.yaml], literals: [k=v]}
        secretGenerator:
          - {name: s, literals: [token=t0k]}
        """)
    objects = render.render(tmp_path / "overlay")
    kinds = [o["kind"] for o in objects]
    assert kinds == ["Namespace", "ConfigMap", "Secret", "Deployment"]  # legacy order
    ns, cm, secret, deploy = objects
    assert "namespace" not in ns["metadata"]  # cluster-scoped
    assert {o["metadata"]["namespace"] for o in objects[1:]} == {"prod"}
    assert deploy["metadata"]["labels"] == {"a": "1", "team": "llm"}
    assert deploy["spec"]["template"]["metadata"]["labels"] == {"a": "1", "team": "llm"}
    assert deploy["spec"]["selector"]["matchLabels"] == {"a": "1"}  # selectors untouched
    assert "team" not in cm["metadata"].get("labels", {})  # base labels stay in the base
    pod = deploy["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["image"] == "tool:2.0"
    assert pod["containers"][0]["image"] == "mirror.example/app@sha256:ab"
    assert cm["data"] == {"p.yaml": "version: 1\n", "other": "version: 1\n", "k": "v"}
    assert secret["type"] == "Opaque"
    assert base64.b64decode(secret["data"]["token"]) == b"t0k"


@pytest.mark.parametrize("kustomization, message", [
    ("resources: [d.yaml]\npatches: [{path: p.yaml}]\n", "not supported"),
    ("resources: [d.yaml]\nnamePrefix: x-\n", "not supported"),
    ("resources: [../outside.yaml]\n", "not in or below"),
    ("configMapGenerator: [{name: c, literals: [a=b]}]\n", "disableNameSuffixHash"),
    ("generatorOptions: {disableNameSuffixHash: true}\n"
     "configMapGenerator: [{name: c, behavior: merge, literals: [a=b]}]\n", "only"),
    ("resources: [d.yaml]\nlabels: [{pairs: {a: b}, includeSelectors: true}]\n",
     "includeSelectors"),
    ("resources: [d.yaml, d.yaml]\n", "twice"),
    ("kind: Component\n", "components"),
])
def test_refuses_what_it_does_not_implement(tmp_path: Path, kustomization: str,
                                            message: str) -> None:
    write(tmp_path / "outside.yaml", DEPLOY)
    write(tmp_path / "k/d.yaml", DEPLOY)
    write(tmp_path / "k/kustomization.yaml", kustomization)
    with pytest.raises(render.RenderError, match=message):
        render.render(tmp_path / "k")


def test_refuses_a_symlink_out_of_the_kustomization(tmp_path: Path) -> None:
    write(tmp_path / "outside.yaml", DEPLOY)
    (tmp_path / "k").mkdir()
    (tmp_path / "k/d.yaml").symlink_to(tmp_path / "outside.yaml")
    write(tmp_path / "k/kustomization.yaml", "resources: [d.yaml]\n")
    with pytest.raises(render.RenderError, match="not in or below"):
        render.render(tmp_path / "k")


def test_command_line_prints_the_overlay() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "k8s" / "render.py"), str(OVERLAY)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert {d["kind"] for d in docs} >= {"Deployment", "NetworkPolicy", "ServiceMonitor",
                                        "PrometheusRule", "ConfigMap", "Namespace"}
    bad = subprocess.run([sys.executable, str(ROOT / "k8s" / "render.py"), str(ROOT)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "no kustomization.yaml" in bad.stderr
