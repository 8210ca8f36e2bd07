"""The rendered k8s/ manifests: valid (strict, offline), and the pod contract holds
(docs/pod-contract.md C1-C8) with keys only in the sidecar."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sidecar.netguard import METADATA_ADDRESSES
from tests.k8s.helpers import (
    EGRESS_SIDECAR,
    KUSTOMIZATIONS,
    ROOT,
    Obj,
    all_containers,
    container,
    flag_values,
    images_module,
    kubectl,
    mounts_of_volume,
    one,
    pod_spec,
    rendered,
    volumes,
)

K8S_VERSION = kubernetes_validate.latest_version()  # the newest schemas the package ships
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
SIDECAR_UID, GATEWAY_UID = 1337, 1000
KEY_SECRET, CA_SECRET = "llm-provider-keys", "egress-sidecar-ca"
SIDECAR, GATEWAY, INIT, BUNDLE = "egress-sidecar", "gateway", "egress-init", "gateway-ca-bundle"
ENFORCED = "egress-sidecar/enforced"  # the pod label the component adds

BOTH = pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))


def secret_volume_names(spec: Obj, secret_name: str) -> set[str]:
    names = set()
    for name, vol in volumes(spec).items():
        if vol.get("secret", {}).get("secretName") == secret_name:
            names.add(name)
        for source in vol.get("projected", {}).get("sources", []):
            if source.get("secret", {}).get("name") == secret_name:
                names.add(name)
    return names


def secret_refs_in_env(c: Obj) -> set[str]:
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    refs |= {e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e}
    return refs


def help_flags(*command: str) -> set[str]:
    out = subprocess.run(
        [str(EGRESS_SIDECAR), *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", out.stdout)) - {"--help"}


# --- validity ---------------------------------------------------------------------------------


@BOTH
def test_every_object_validates_strictly_offline(name: str) -> None:
    checked = 0
    for obj in rendered(name):
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{obj['kind']}/{obj['metadata']['name']} against {K8S_VERSION}: "
                f"{exc.message} at {'.'.join(map(str, exc.path))}"
            )
        checked += 1
    # base: ServiceAccount, Deployment, 2 Services; the overlay adds the Namespace, three
    # ConfigMaps and two NetworkPolicies (the component's and the Alertmanager one).
    assert checked == {"base": 4, "overlays/example": 10}[name]


def test_strict_validation_is_not_a_no_op() -> None:
    deployment = one(rendered(), "Deployment", "litellm-gateway")
    container(deployment["spec"]["template"]["spec"], SIDECAR)["restartPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = one(rendered(), "Deployment", "litellm-gateway")
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_kubernetes_validate_cli_strict(tmp_path: Path) -> None:
    """The same through the command line CI users run by hand."""
    docs = [o for o in rendered() if (o["apiVersion"], o["kind"]) not in CRDS]
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    out = subprocess.run(
        [
            str(ROOT / ".venv/bin/kubernetes-validate"),
            "--strict",
            "-k",
            K8S_VERSION,
            "--quiet",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _structural(obj: Obj, spec_keys: set[str]) -> None:
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}, set(obj)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])
    for key in ("labels", "annotations"):
        assert all(isinstance(v, str) for v in obj["metadata"].get(key, {}).values())
    assert set(obj["spec"]) <= spec_keys, set(obj["spec"]) - spec_keys


def test_crds_structurally() -> None:
    """ServiceMonitor and PrometheusRule: no schema offline, so a minimal check of our own."""
    objects = rendered()
    monitor = one(objects, "ServiceMonitor", "egress-sidecar")
    _structural(
        monitor,
        {
            "selector",
            "endpoints",
            "namespaceSelector",
            "jobLabel",
            "targetLabels",
            "podTargetLabels",
            "sampleLimit",
        },
    )
    service = one(objects, "Service", "egress-sidecar")
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scheme", "scrapeTimeout"}
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    # prometheus-rule.yaml's alerts use job="egress-sidecar": the ServiceMonitor's job label
    # is the Service's name unless jobLabel says otherwise.
    assert "jobLabel" not in monitor["spec"] and service["metadata"]["name"] == "egress-sidecar"

    rule = one(objects, "PrometheusRule", "egress-sidecar")
    _structural(rule, {"groups"})
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "rules", "interval"} and group["rules"]
        for r in group["rules"]:
            assert set(r) <= {"alert", "expr", "for", "labels", "annotations", "record"}
            assert ("alert" in r) != ("record" in r) and isinstance(r["expr"], str)
            assert 'job="egress-sidecar"' in r["expr"] or "job=" not in r["expr"]


def test_prometheus_rule_is_one_file() -> None:
    """k8s/prometheus-rule.yaml (promtool tests, docs) is the base's file, not a copy."""
    top = ROOT / "k8s" / "prometheus-rule.yaml"
    assert top.resolve() == (ROOT / "k8s" / "base" / "prometheus-rule.yaml").resolve()


def test_kubectl_is_kustomize_v5() -> None:
    """The renderer is the real kustomize, new enough for components (kustomize >= v5)."""
    out = subprocess.run(
        [kubectl(), "version", "--client"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    found = re.search(r"Kustomize Version: v(\d+)\.", out.stdout)
    assert found and int(found[1]) >= 5, out.stdout


def test_missing_kubectl_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI must render with the real kustomize: a missing kubectl is a failure there."""
    from tests.k8s import helpers

    monkeypatch.setattr(helpers, "_find_kubectl", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="kubectl not found"):
        helpers.kubectl()
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="kubectl not found"):
        helpers.kubectl()


def test_images_lock_and_kustomize_block_agree() -> None:
    images = images_module()
    assert images.check() == []
    lock = {i.name: i for i in images.load()}
    gateway = container(pod_spec(rendered()), GATEWAY)
    assert gateway["image"] == lock["litellm"].reference.replace(
        lock["litellm"].image, lock["litellm"].repository
    )
    # Never a guessed digest: a real one, or the placeholder no kubelet pulls.
    assert re.fullmatch(r"[^@]+@sha256:([0-9a-f]{64}|UNPINNED)", gateway["image"])


def test_build_args_refuse_unpinned_images(tmp_path: Path) -> None:
    images = images_module()
    lock = tmp_path / "images.lock"
    lock.write_text(
        "python docker.io/library/python:3.12-slim-bookworm UNPINNED\n"
        "litellm ghcr.io/berriai/litellm:main-stable UNPINNED\n"
    )
    unpinned = images.load(lock)
    assert not any(i.pinned for i in unpinned)
    lock.write_text(
        "python docker.io/library/python:3.12-slim-bookworm sha256:abc\n"
        "litellm ghcr.io/berriai/litellm:main-stable UNPINNED\n"
    )
    with pytest.raises(images.LockError, match="never a guessed digest"):
        images.load(lock)
    out = subprocess.run(
        [sys.executable, str(ROOT / "k8s" / "images.py"), "build-args"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    pinned = all(i.pinned for i in images.load() if i.name in images.BUILD_ARGS)
    if pinned:
        assert out.returncode == 0 and "--build-arg=PYTHON_IMAGE=" in out.stdout
    else:
        assert out.returncode == 1 and "not pinned yet" in out.stderr


# --- the pod contract -------------------------------------------------------------------------


def test_sidecar_is_a_native_sidecar_probed_on_readyz() -> None:
    spec = pod_spec(rendered())
    names = [c["name"] for c in spec["initContainers"]]
    assert names == [INIT, BUNDLE, SIDECAR], "rules first, then the bundle, then the sidecar"
    sidecar = container(spec, SIDECAR)
    assert sidecar["restartPolicy"] == "Always"
    admin_port = {p["name"]: p["containerPort"] for p in sidecar["ports"]}["admin"]
    for probe in ("startupProbe", "readinessProbe"):
        assert sidecar[probe]["httpGet"]["path"] == "/readyz"
        assert sidecar[probe]["httpGet"]["port"] in ("admin", admin_port)
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for c in spec["initContainers"]:
        if c["name"] != SIDECAR:
            assert "restartPolicy" not in c


def test_sidecar_probes_read_an_answer_so_an_impostor_cannot_pass_them() -> None:
    """docs/pod-contract.md: the init rules stop every byte an impostor on the admin
    port would send, but a bare TCP connect can still succeed under SYN cookies, so
    the sidecar's probes must be httpGet (and on the port the init rules protect)."""
    spec = pod_spec(rendered())
    sidecar = container(spec, SIDECAR)
    admin_port = {p["name"]: p["containerPort"] for p in sidecar["ports"]}["admin"]
    init_args = container(spec, INIT)["args"]
    assert init_args[init_args.index("--admin-port") + 1] == str(admin_port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert set(sidecar[probe]) & {"tcpSocket", "exec", "grpc"} == set(), probe
        assert "httpGet" in sidecar[probe], probe


def test_uids_differ_and_no_container_but_the_sidecar_runs_as_1337() -> None:
    spec = pod_spec(rendered())
    uids = {c["name"]: c["securityContext"]["runAsUser"] for c in all_containers(spec)}
    assert uids[SIDECAR] == SIDECAR_UID and uids[GATEWAY] == GATEWAY_UID
    assert uids[INIT] == 0
    for name, uid in uids.items():
        if name not in (SIDECAR, BUNDLE):  # the bundle step is the sidecar image, same UID
            assert uid != SIDECAR_UID, name
    assert "runAsUser" not in spec.get("securityContext", {})


def test_restricted_security_contexts_everywhere_but_the_init_rules() -> None:
    spec = pod_spec(rendered())
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in all_containers(spec):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc.get("privileged", False) is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
        if c["name"] == INIT:  # the documented exception: root with NET_ADMIN + NET_RAW
            assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False
            assert sorted(sc["capabilities"]["add"]) == ["NET_ADMIN", "NET_RAW"]
        else:
            assert sc["runAsNonRoot"] is True, c["name"]
            assert "add" not in sc["capabilities"], c["name"]


def test_gateway_has_no_capabilities_no_keys_no_ca_key_no_token() -> None:
    spec = pod_spec(rendered())
    gateway = container(spec, GATEWAY)
    assert "add" not in gateway["securityContext"]["capabilities"]
    assert spec["automountServiceAccountToken"] is False
    account = one(rendered(), "ServiceAccount", spec["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    assert spec.get("shareProcessNamespace", False) is False
    assert spec.get("hostNetwork", False) is False and spec.get("hostPID", False) is False

    mounted = {m["name"] for m in gateway.get("volumeMounts", [])}
    vols = volumes(spec)
    for name in mounted:
        kind = set(vols[name]) - {"name"}
        assert kind <= {"emptyDir", "configMap"}, f"gateway mounts {name}: {kind}"
    for secret in (KEY_SECRET, CA_SECRET):
        assert secret not in secret_refs_in_env(gateway)
    # Its env holds no provider key: only the dummies of the LiteLLM config, and its own
    # master key from a Secret that is not the provider keys.
    for env in gateway.get("env", []):
        assert not re.search(r"(OPENAI|ANTHROPIC|GEMINI|AZURE|MISTRAL|GROQ).*KEY", env["name"])


def test_provider_keys_only_in_the_sidecar_as_a_directory() -> None:
    spec = pod_spec(rendered())
    names = secret_volume_names(spec, KEY_SECRET)
    assert len(names) == 1
    mounts = [m for vol in names for m in mounts_of_volume(spec, vol)]
    assert [c for c, _ in mounts] == [SIDECAR]
    for _, mount in mounts:
        assert "subPath" not in mount and "subPathExpr" not in mount, "rotation needs a dir"
        assert mount["readOnly"] is True
    assert secret_volume_names(spec, KEY_SECRET).isdisjoint(
        {m["name"] for m in container(spec, GATEWAY).get("volumeMounts", [])}
    )
    for c in all_containers(spec):
        if c["name"] != SIDECAR:
            assert KEY_SECRET not in secret_refs_in_env(c), c["name"]


def test_ca_key_only_in_the_sidecar_and_the_gateway_trusts_the_certificate() -> None:
    spec = pod_spec(rendered())
    ca_volumes = secret_volume_names(spec, CA_SECRET)
    assert len(ca_volumes) == 1
    assert [c for v in ca_volumes for c, _ in mounts_of_volume(spec, v)] == [SIDECAR]
    for v in ca_volumes:
        items = {i["key"] for i in volumes(spec)[v]["secret"]["items"]}
        assert items == {"mitmproxy-ca.pem", "mitmproxy-dhparam.pem"}, "read-only CA dir"
    # The gateway gets the bundle, built from the certificate ConfigMap (never the Secret).
    bundle_step = container(spec, BUNDLE)
    cert_volumes = {m["name"] for m in bundle_step["volumeMounts"]}
    assert cert_volumes.isdisjoint(secret_volume_names(spec, CA_SECRET))
    assert volumes(spec)["ca-cert"]["configMap"]["name"] == "egress-sidecar-ca-cert"
    gateway = container(spec, GATEWAY)
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    bundle_mount = next(m for m in gateway["volumeMounts"] if m["name"] == "gateway-ca-bundle")
    assert bundle_mount["readOnly"] is True
    for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        assert env[var] == f"{bundle_mount['mountPath']}/ca-bundle.pem"
    assert env["NODE_EXTRA_CA_CERTS"] == f"{bundle_mount['mountPath']}/sidecar-ca.pem"
    script = " ".join(bundle_step["command"])
    assert "ca-bundle.pem" in script and "sidecar-ca.pem" in script and "certifi" in script


def test_writable_paths_are_volumes() -> None:
    """readOnlyRootFilesystem everywhere: whatever a container writes is an emptyDir."""
    spec = pod_spec(rendered())
    vols = volumes(spec)
    for c in all_containers(spec):
        for m in c.get("volumeMounts", []):
            if not m.get("readOnly"):
                assert "emptyDir" in vols[m["name"]], f"{c['name']} writes {m['name']}"
    sidecar = {
        m["mountPath"] for m in container(spec, SIDECAR)["volumeMounts"] if not m.get("readOnly")
    }
    assert {"/tmp", "/var/spool/egress-sidecar"} <= sidecar
    # The image declares the same writable places.
    dockerfile = (ROOT / "Dockerfile").read_text()
    declared = re.search(r"^VOLUME (\[.*\])$", dockerfile, re.M)
    assert declared and {"/tmp", "/var/spool/egress-sidecar"} <= set(yaml.safe_load(declared[1]))


def test_network_policy_denies_metadata_and_allows_dns_and_443() -> None:
    objects = rendered()
    policy = one(objects, "NetworkPolicy", "egress-sidecar-pods")["spec"]
    assert policy["policyTypes"] == ["Egress"]
    assert policy["podSelector"]["matchLabels"] == {ENFORCED: "true"}
    # ...the label the component puts on the gateway's pods, and on no other pod.
    pods = [
        o["spec"]["template"]["metadata"]["labels"]
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")
    ]
    assert [labels.get(ENFORCED) for labels in pods] == ["true"]
    dns = [r for r in policy["egress"] if any(p["port"] == 53 for p in r["ports"])]
    assert len(dns) == 1
    assert {p["protocol"] for p in dns[0]["ports"]} == {"UDP", "TCP"}
    assert dns[0]["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    https = [r for r in policy["egress"] if r["ports"] == [{"protocol": "TCP", "port": 443}]]
    assert len(https) == 1
    blocks = [peer["ipBlock"] for peer in https[0]["to"]]
    assert {b["cidr"] for b in blocks} == {"0.0.0.0/0", "::/0"}
    for address in METADATA_ADDRESSES:
        for block in blocks:
            if address in ipaddress.ip_network(block["cidr"]):
                excepted = [ipaddress.ip_network(e) for e in block.get("except", [])]
                assert any(address in e for e in excepted), f"{address} not excepted"
    for rule in policy["egress"]:  # no rule without ports or peers (that would allow all)
        assert rule.get("ports") and rule.get("to")


def test_sidecar_args_are_flags_egress_sidecar_run_accepts() -> None:
    spec = pod_spec(rendered())
    args: list[str] = container(spec, SIDECAR)["args"]
    assert args[0] == "run"
    flags = {a.split("=", 1)[0] for a in args[1:] if a.startswith("--")}
    unknown = flags - help_flags("run")
    assert not unknown, f"egress-sidecar run --help does not list {unknown}"
    # ...and the real parser resolves them (no env var leaks in from this test's environment).
    from sidecar.cli import build_parser
    from sidecar.settings import resolve

    env = {k: v for k, v in os.environ.items() if k.startswith("EGRESS_SIDECAR_")}
    for k in env:
        del os.environ[k]
    try:
        settings: Any = resolve(build_parser().parse_args(args))
    finally:
        os.environ.update(env)
    assert settings.proxy_listen is None
    assert settings.transparent == (("127.0.0.1", 15001), ("::1", 15001))
    assert settings.dns == (("127.0.0.1", 15053), ("::1", 15053))
    assert settings.admin_listen == ("0.0.0.0", 15020)  # probes and Prometheus reach it

    # Every path the sidecar is given is where the pod mounts it.
    mounts = {m["name"]: m["mountPath"] for m in container(spec, SIDECAR)["volumeMounts"]}
    assert settings.secrets_dir == mounts[next(iter(secret_volume_names(spec, KEY_SECRET)))]
    assert settings.ca_dir == mounts[next(iter(secret_volume_names(spec, CA_SECRET)))]
    assert settings.policies == (mounts["policies"],)
    assert settings.alerts_config == mounts["alerts-config"] + "/alerts.yaml"
    assert settings.alert_spool_dir == mounts["alert-spool"]
    assert settings.usage.state_dir == mounts["sidecar-state"]  # issue 15
    # ... and `kubectl exec ... egress-sidecar keys` (no flags) looks there for the token.
    env = {e["name"]: e.get("value") for e in container(spec, SIDECAR)["env"]}
    assert env["EGRESS_SIDECAR_STATE_DIR"] == mounts["sidecar-state"]


def test_init_args_are_flags_egress_sidecar_init_accepts_and_agree_with_the_sidecar() -> None:
    spec = pod_spec(rendered())
    init, sidecar = container(spec, INIT), container(spec, SIDECAR)
    args: list[str] = init["args"]
    assert args[0] == "init"
    flags = {a.split("=", 1)[0] for a in args[1:] if a.startswith("--")}
    assert not flags - help_flags("init"), flags - help_flags("init")
    assert not {"--dry-run", "--verify"} & flags
    assert flag_values(args, "--proxy-uid") == [str(sidecar["securityContext"]["runAsUser"])]
    ports = {int(v.rsplit(":", 1)[1]) for v in flag_values(sidecar["args"], "--transparent")}
    assert ports == {int(flag_values(args, "--proxy-port")[0])}
    ports = {int(v.rsplit(":", 1)[1]) for v in flag_values(sidecar["args"], "--dns")}
    assert ports == {int(flag_values(args, "--dns-port")[0])}
    admin = int(flag_values(sidecar["args"], "--admin")[0].rsplit(":", 1)[1])
    assert admin == int(flag_values(args, "--admin-port")[0])
    # The real command accepts them: --dry-run prints the rules it would install.
    out = subprocess.run(
        [str(EGRESS_SIDECAR), *args, "--dry-run"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "--uid-owner 1337" in out.stdout and "--to-ports 15001" in out.stdout
    assert "--to-ports 15053" in out.stdout and "--dport 15020" in out.stdout


def test_policy_and_alerts_configmaps_load(tmp_path: Path) -> None:
    objects = rendered()
    policies = one(objects, "ConfigMap", "egress-sidecar-policies")["data"]
    for name, text in policies.items():
        (tmp_path / name).write_text(text)
    out = subprocess.run(
        [str(EGRESS_SIDECAR), "policy", "check", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # The credentials the policy names are the files the key Secret must hold (the guide
    # creates exactly these).
    secrets = set(re.findall(r"secret: (\w[\w-]*)", "\n".join(policies.values())))
    assert secrets == {"openai", "anthropic"}
    guide = (ROOT / "docs" / "deployment.md").read_text()
    for secret in secrets:
        assert f"--from-file={secret}=" in guide

    from sidecar.alerts.config import load_config

    alerts = tmp_path / "alerts.yaml"
    alerts.write_text(one(objects, "ConfigMap", "egress-sidecar-alerts")["data"]["alerts.yaml"])
    config = load_config(str(alerts))
    assert [s.name for s in config.sinks] == ["alertmanager"]


def test_litellm_config_holds_only_dummy_keys() -> None:
    config = yaml.safe_load(one(rendered(), "ConfigMap", "litellm-config")["data"]["config.yaml"])
    keys = {m["litellm_params"].get("api_key") for m in config["model_list"]}
    assert keys == {"sk-dummy"}
    assert config["general_settings"]["master_key"] == "os.environ/LITELLM_MASTER_KEY"


def test_overlay_names_its_namespace_and_images() -> None:
    objects = rendered()
    namespaced = [o for o in objects if o["kind"] != "Namespace"]
    assert {o["metadata"]["namespace"] for o in namespaced} == {"llm-gateway"}
    ns = one(objects, "Namespace", "llm-gateway")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    spec = pod_spec(objects)
    assert container(spec, SIDECAR)["image"].startswith("registry.example.com/")
    assert container(spec, INIT)["image"].startswith("registry.example.com/")
    assert container(spec, INIT)["image"] != container(spec, SIDECAR)["image"]


def test_deployment_guide_uses_the_manifests_names() -> None:
    guide = (ROOT / "docs" / "deployment.md").read_text()
    objects = rendered()
    for name in (
        "llm-gateway",
        KEY_SECRET,
        CA_SECRET,
        "egress-sidecar-ca-cert",
        "litellm-master-key",
        "egress-sidecar-policies",
        "litellm-gateway",
        "kubectl apply -k k8s/overlays/example",
        "-c egress-sidecar",
        "egress_sidecar_secret_changes_total",
        "egress_sidecar_policy_last_reload_success",
        "mitmproxy-dhparam.pem",
        "python3 k8s/images.py refresh",
        "kubectl kustomize k8s/overlays/example",
        "k8s/components/egress-sidecar",
        "k8s/helm-post-renderer.sh",
        "egress-sidecar/inject",
    ):
        assert name in guide, name
    for obj in objects:
        if obj["kind"] in ("Deployment", "Service", "NetworkPolicy"):
            assert obj["metadata"]["name"] in guide, obj["metadata"]["name"]
