"""k8s/prometheus-rule.yaml and k8s/alertmanager-example.yaml are valid (promtool,
amtool), their unit tests pass, and their reason lists agree with the alert model."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.alerts.model import SEVERITY_BY_REASON
from sidecar.decision import Severity

ROOT = Path(__file__).resolve().parents[2]
RULE = ROOT / "k8s" / "prometheus-rule.yaml"
RULE_TEST = ROOT / "k8s" / "tests" / "prometheus-rule.test.yaml"
AM_EXAMPLE = ROOT / "k8s" / "alertmanager-example.yaml"


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} not found: apt-get install -y {package}"
    if os.environ.get("CI"):
        pytest.fail(message + " -- required under CI")
    pytest.skip(message)


def rules_spec() -> dict[str, Any]:
    doc = yaml.safe_load(RULE.read_text())
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["kind"] == "PrometheusRule"
    spec: dict[str, Any] = doc["spec"]
    return spec


def extract(tmp_path: Path) -> Path:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rules_spec(), sort_keys=False))
    shutil.copy(RULE_TEST, tmp_path / RULE_TEST.name)
    return rules


def test_promtool_check_rules(tmp_path: Path) -> None:
    promtool = tool("promtool", "prometheus")
    rules = extract(tmp_path)
    out = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


def test_promtool_test_rules(tmp_path: Path) -> None:
    promtool = tool("promtool", "prometheus")
    extract(tmp_path)
    out = subprocess.run(
        [promtool, "test", "rules", RULE_TEST.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_test_rules_can_fail(tmp_path: Path) -> None:
    """A broken rule makes the unit tests fail (the tests are not vacuous)."""
    promtool = tool("promtool", "prometheus")
    extract(tmp_path)
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules.read_text().replace("metadata_address|", "", 1))
    out = subprocess.run(
        [promtool, "test", "rules", RULE_TEST.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0


def test_amtool_check_config() -> None:
    amtool = tool("amtool", "prometheus-alertmanager")
    out = subprocess.run(
        [amtool, "check-config", str(AM_EXAMPLE)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_severity_summary_and_known_metric() -> None:
    known = (
        "egress_sidecar_decisions_total",
        "egress_sidecar_policy_reload_total",
        "egress_sidecar_policy_last_reload_success",
        "egress_sidecar_alerts_",
        "egress_sidecar_usage_backend_up",  # issue 15
        "up{",
    )
    for group in rules_spec()["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert rule["annotations"]["summary"]
            assert any(m in rule["expr"] for m in known), rule["alert"]


def test_rule_reason_lists_match_the_model() -> None:
    rules = {r["alert"]: r for g in rules_spec()["groups"] for r in g["rules"]}
    critical = re.search(r'reason=~"([^"]+)"', rules["EgressSidecarCriticalRefusal"]["expr"])
    assert critical is not None
    model_critical = {r.value for r, s in SEVERITY_BY_REASON.items() if s is Severity.CRITICAL}
    assert set(critical.group(1).split("|")) == model_critical
    excluded = re.search(r'reason!~"([^"]+)"', rules["EgressSidecarBlockedEgress"]["expr"])
    assert excluded is not None
    model_not_warning = {
        r.value for r, s in SEVERITY_BY_REASON.items() if s is not Severity.WARNING
    }
    assert set(excluded.group(1).split("|")) == model_not_warning


def test_the_deployed_rule_is_the_checked_one() -> None:
    """What `kubectl kustomize k8s/overlays/example` deploys is the rule promtool checks
    above (kustomize adds only the namespace and the common labels)."""
    from tests.k8s.helpers import one, rendered

    deployed = one(rendered(), "PrometheusRule", "egress-sidecar")
    assert deployed["spec"] == rules_spec()
    assert deployed["metadata"]["namespace"] == "llm-gateway"
