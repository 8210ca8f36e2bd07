"""The egress-sidecar kustomize component on a Deployment it did not write: a stand-in for
LiteLLM's official Helm chart output (tests/k8s/fixtures/litellm-helm.yaml), through the
Helm post-renderer k8s/helm-post-renderer.sh, rendered by the real kustomize.

What is tested: the script and the component on chart-shaped manifests. What is not: helm
itself (not installable here) and the chart's real output, which the fixture copies by
hand from the chart's templates (docs/deployment.md says so).
"""

from __future__ import annotations

import ipaddress

import kubernetes_validate
import pytest
import yaml

from sidecar.netguard import METADATA_ADDRESSES
from tests.k8s.helpers import (
    HELM_CHART_OUTPUT,
    INIT_IMAGE,
    SIDECAR_IMAGE,
    Obj,
    all_containers,
    container,
    helm_rendered,
    mounts_of_volume,
    one,
    pod_spec,
    post_render,
    rendered,
    volumes,
)

K8S_VERSION = kubernetes_validate.latest_version()
SIDECAR, INIT, BUNDLE, GATEWAY = "egress-sidecar", "egress-init", "gateway-ca-bundle", "litellm"
ENFORCED = "egress-sidecar/enforced"
KEY_SECRET, CA_SECRET = "llm-provider-keys", "egress-sidecar-ca"


def chart_objects() -> list[Obj]:
    return [d for d in yaml.safe_load_all(HELM_CHART_OUTPUT.read_text()) if d]


def chart_text(objects: list[Obj]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False)


def test_helm_output_gets_the_sidecar_in_front_of_the_chart_pod() -> None:
    spec = pod_spec(helm_rendered(), "litellm")
    assert [c["name"] for c in spec["initContainers"]] == [INIT, BUNDLE, SIDECAR]
    assert [c["name"] for c in spec["containers"]] == [GATEWAY]
    assert container(spec, SIDECAR)["restartPolicy"] == "Always"
    assert container(spec, SIDECAR)["image"] == SIDECAR_IMAGE
    assert container(spec, BUNDLE)["image"] == SIDECAR_IMAGE
    assert container(spec, INIT)["image"] == INIT_IMAGE
    assert container(spec, SIDECAR)["securityContext"]["runAsUser"] == 1337
    assert spec["securityContext"]["fsGroup"] == 1337
    assert spec["shareProcessNamespace"] is False and spec["hostNetwork"] is False


def test_helm_gateway_cannot_run_as_root_or_as_the_sidecar_uid() -> None:
    """The chart's default securityContext is `{}`: the image's user, possibly root, which
    could setuid to 1337 and leave unredirected. The component sets what the boundary needs."""
    gateway = container(pod_spec(helm_rendered(), "litellm"), GATEWAY)
    sc = gateway["securityContext"]
    assert sc["runAsUser"] == 1000 and sc["runAsNonRoot"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_helm_gateway_keeps_its_own_env_and_mounts_and_trusts_the_sidecar_ca() -> None:
    chart_gateway = container(pod_spec(chart_objects(), "litellm"), GATEWAY)
    gateway = container(pod_spec(helm_rendered(), "litellm"), GATEWAY)
    env = {e["name"]: e for e in gateway["env"]}
    for mine in chart_gateway["env"]:
        assert env[mine["name"]] == mine  # HOST, PORT, PROXY_MASTER_KEY untouched
    for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        assert env[var]["value"] == "/etc/egress-ca/ca-bundle.pem"
    assert env["NODE_EXTRA_CA_CERTS"]["value"] == "/etc/egress-ca/sidecar-ca.pem"
    mounts = {m["name"]: m for m in gateway["volumeMounts"]}
    assert mounts["litellm-config"] == chart_gateway["volumeMounts"][0]  # subPath kept
    assert mounts[BUNDLE] == {"name": BUNDLE, "mountPath": "/etc/egress-ca", "readOnly": True}
    for key in ("image", "args", "ports", "livenessProbe", "readinessProbe", "startupProbe"):
        assert gateway[key] == chart_gateway[key], key


def test_helm_keys_and_ca_key_reach_only_the_sidecar() -> None:
    spec = pod_spec(helm_rendered(), "litellm")
    vols = volumes(spec)
    for secret in (KEY_SECRET, CA_SECRET):
        names = [n for n, v in vols.items() if v.get("secret", {}).get("secretName") == secret]
        assert len(names) == 1, secret
        assert [c for c, _ in mounts_of_volume(spec, names[0])] == [SIDECAR], secret
    for c in all_containers(spec):
        if c["name"] != SIDECAR:
            refs = [e for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
            assert all(
                e["valueFrom"]["secretKeyRef"]["name"] not in (KEY_SECRET, CA_SECRET) for e in refs
            ), c["name"]


def test_helm_network_policy_selects_the_patched_pods() -> None:
    objects = helm_rendered()
    policy = one(objects, "NetworkPolicy", "egress-sidecar-pods")["spec"]
    labels = one(objects, "Deployment", "litellm")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"] == {ENFORCED: "true"}
    assert labels[ENFORCED] == "true"
    https = [r for r in policy["egress"] if r["ports"] == [{"protocol": "TCP", "port": 443}]]
    excepted = [
        ipaddress.ip_network(e)
        for r in https
        for p in r["to"]
        for e in p["ipBlock"].get("except", [])
    ]
    for address in METADATA_ADDRESSES:
        assert any(address in net for net in excepted), address


def test_helm_output_validates_strictly_and_the_rest_is_untouched() -> None:
    objects = helm_rendered()
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    before = {(o["kind"], o["metadata"]["name"]): o for o in chart_objects()}
    for obj in objects:
        if obj["kind"] in ("Service", "ConfigMap", "Secret"):
            assert obj == before[(obj["kind"], obj["metadata"]["name"])]
    assert sorted(k for k, _ in before) == sorted(
        o["kind"] for o in objects if o["kind"] != "NetworkPolicy"
    )


def test_deployment_without_the_label_is_left_alone() -> None:
    """Opt-in: only Deployments labelled egress-sidecar/inject=true get the sidecar."""
    objects = chart_objects()
    deployment = one(objects, "Deployment", "litellm")
    del deployment["metadata"]["labels"]["egress-sidecar/inject"]
    out = one(helm_rendered(chart_text(objects)), "Deployment", "litellm")
    del deployment["metadata"]["annotations"]  # the chart's `annotations: {}`: kustomize drops it
    assert out == deployment


def test_chart_init_containers_run_after_the_redirect_rules() -> None:
    """An init container of the chart's (extraInitContainers) must not run before the
    iptables rules: it would have the pod's network unconfined."""
    objects = chart_objects()
    spec = one(objects, "Deployment", "litellm")["spec"]["template"]["spec"]
    spec["initContainers"] = [
        {"name": "wait-for-db", "image": "busybox:1.36", "command": ["sh", "-c", "true"]}
    ]
    out = pod_spec(helm_rendered(chart_text(objects)), "litellm")
    assert [c["name"] for c in out["initContainers"]] == [INIT, BUNDLE, SIDECAR, "wait-for-db"]


def test_gateway_without_env_fails_the_render_instead_of_going_untrusted() -> None:
    """The JSON patch appends to the first container's env: a workload without one makes
    kustomize fail loudly (never a gateway silently without the CA bundle)."""
    objects = chart_objects()
    gateway = one(objects, "Deployment", "litellm")["spec"]["template"]["spec"]["containers"][0]
    del gateway["env"]
    out = post_render(chart_text(objects))
    assert out.returncode != 0 and "env" in out.stderr, out.stderr


@pytest.mark.parametrize("variable", ["EGRESS_SIDECAR_IMAGE", "EGRESS_SIDECAR_INIT_IMAGE"])
def test_post_renderer_refuses_a_missing_or_untagged_image(variable: str) -> None:
    missing = post_render(HELM_CHART_OUTPUT.read_text(), **{variable: ""})
    assert missing.returncode != 0 and variable in missing.stderr
    untagged = post_render(
        HELM_CHART_OUTPUT.read_text(),
        **{variable: "registry.example.com:5000/platform/egress-sidecar"},
    )
    assert untagged.returncode == 64 and "no tag or digest" in untagged.stderr


def test_example_overlay_uses_the_component() -> None:
    """k8s/overlays/example is k8s/base plus the component: the sidecar comes from there."""
    base = pod_spec(rendered("base"))
    assert "initContainers" not in base
    assert [c["name"] for c in pod_spec(rendered())["initContainers"]] == [INIT, BUNDLE, SIDECAR]
