"""The published JSON Schema: shipped files validate; bad documents are refused.

The loader is the authority and always refuses a bad document; the schema (for editors
and CI linters) refuses it too wherever JSON Schema can express the rule.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from policy_helpers import REPO

from sidecar.policy.errors import PolicyError
from sidecar.policy.loader import load_policy_bytes

SCHEMA_PATH = REPO / "sidecar" / "policy" / "policy.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)

# policies/tests/ holds `policy test` case files, not policies.
SHIPPED = sorted(p for p in (REPO / "policies").rglob("*.y*ml") if p.parent.name != "tests")
DEFAULT = REPO / "policies" / "default.yaml"


def test_schema_is_valid_draft_2020_12() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def _objects(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if node.get("type") == "object":
            found.append(node)
        for value in node.values():
            found.extend(_objects(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_objects(value))
    return found


def test_every_object_in_the_schema_is_closed() -> None:
    objects = _objects(SCHEMA)
    # root, providers map, credential, its aws_sigv4 (with web_identity) and google_oauth
    # forms, provider, allowEntry, overrides, relay tenants map, relayTenant; tools, a
    # {pattern:} rule, the tools.tenants map and a tenant's entry; dlp, dlp actions,
    # dlp allow; usage_limits, its tenants and providers maps, anomaly, usageLimit
    assert len(objects) == 23
    for obj in objects:
        extra = obj.get("additionalProperties")
        assert extra is False or (isinstance(extra, dict) and "$ref" in extra), obj


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO)) for p in SHIPPED])
def test_shipped_files_validate(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    VALIDATOR.validate(document)
    # An overrides file changes another file's entries: it loads on top of the default.
    base = [(str(DEFAULT), DEFAULT.read_bytes())] if "overrides" in document else []
    load_policy_bytes([*base, (str(path), path.read_bytes())])


GOOD = [
    ("minimal", {"version": 1}),
    ("provider", {"version": 1, "providers": {"p": {"hosts": ["a.example.com"]}}}),
    ("wildcard", {"version": 1, "providers": {"p": {"hosts": ["*.a.example.com"]}}}),
    ("single_label_service", {"version": 1, "allow": [{"host": "otel", "ports": [4318]}]}),
    (
        "paths_forms",
        {
            "version": 1,
            "providers": {
                "p": {"hosts": ["a.example.com"], "paths": ["/", "/v1/*", "/v2/x", "/v3/"]}
            },
        },
    ),
    ("path_any", {"version": 1, "providers": {"p": {"hosts": ["a.example.com"], "paths": ["/*"]}}}),
    ("cidr_bare_address", {"version": 1, "allow": [{"cidr": "10.0.0.5", "ports": [1]}]}),
    ("cidr_v6", {"version": 1, "allow": [{"cidrs": ["fd12::/16"], "ports": [1]}]}),
    (
        "credential",
        {
            "version": 1,
            "providers": {
                "p": {
                    "hosts": ["a.example.com"],
                    "credential": {"header": "x-api-key", "format": "{secret}", "secret": "p"},
                }
            },
        },
    ),
    ("audit", {"version": 1, "mode": "audit"}),
    (
        "usage_limits",
        {
            "version": 1,
            "providers": {"p": {"hosts": ["a.example.com"]}},
            "usage_limits": {
                "on_backend_failure": "open",
                "tenants": {
                    "team-a": {"requests_per_minute": 5, "on_backend_failure": "closed"},
                    "*": {"tokens_per_day": 1000},
                },
                "providers": {"p": {"tokens_per_minute": 100}},
                "anomaly": {"factor": 8.5, "warmup_minutes": 0, "floor_tokens_per_minute": 0},
            },
        },
    ),
]


@pytest.mark.parametrize("doc", [d for _, d in GOOD], ids=[i for i, _ in GOOD])
def test_good_documents_pass_schema_and_loader(doc: dict[str, Any]) -> None:
    VALIDATOR.validate(doc)
    load_policy_bytes([("p.yaml", yaml.safe_dump(doc).encode())])


def _p(**fields: Any) -> dict[str, Any]:
    return {"version": 1, "providers": {"p": {"hosts": ["a.example.com"], **fields}}}


def _a(**fields: Any) -> dict[str, Any]:
    return {"version": 1, "allow": [{"host": "a.example.com", "ports": [1], **fields}]}


def _cred(**fields: Any) -> dict[str, Any]:
    base = {"header": "authorization", "format": "Bearer {secret}", "secret": "p"}
    return _p(credential={**base, **fields})


# (id, document, whether the schema can express the rule)
BAD = [
    ("version_missing", {"providers": {}}, True),
    ("version_2", {"version": 2}, True),
    ("version_string", {"version": "1"}, True),
    ("mode_unknown", {"version": 1, "mode": "block"}, True),
    ("unknown_top_key", {"version": 1, "provider": {}}, True),
    ("unknown_provider_key", _p(hostz=["b.example.com"]), True),
    ("unknown_allow_key", _a(credential={}), True),
    ("unknown_credential_key", _cred(value="sk-1"), True),
    ("usage_rpm_typo", {"version": 1, "usage_limits": {"tenants": {"a": {"rpm": 5}}}}, True),
    ("usage_empty_entry", {"version": 1, "usage_limits": {"tenants": {"a": {}}}}, True),
    ("usage_zero", {"version": 1, "usage_limits": {"tenants": {"a": {"tokens_per_day": 0}}}}, True),
    ("usage_fail_mode", {"version": 1, "usage_limits": {"on_backend_failure": "maybe"}}, True),
    ("usage_factor_one", {"version": 1, "usage_limits": {"anomaly": {"factor": 1}}}, True),
    (
        "usage_unknown_provider",
        {"version": 1, "usage_limits": {"providers": {"p": {"requests_per_minute": 1}}}},
        False,
    ),
    ("provider_name_upper", {"version": 1, "providers": {"OpenAI": {"hosts": ["a.b.c"]}}}, True),
    ("provider_without_hosts", {"version": 1, "providers": {"p": {"ports": [443]}}}, True),
    ("hosts_string", {"version": 1, "providers": {"p": {"hosts": "a.example.com"}}}, True),
    ("hosts_empty", {"version": 1, "providers": {"p": {"hosts": []}}}, True),
    ("wildcard_star_alone", {"version": 1, "providers": {"p": {"hosts": ["*"]}}}, True),
    ("wildcard_tld", {"version": 1, "providers": {"p": {"hosts": ["*.com"]}}}, True),
    ("wildcard_in_middle", {"version": 1, "providers": {"p": {"hosts": ["api.*.com"]}}}, True),
    ("ip_literal_host", {"version": 1, "providers": {"p": {"hosts": ["10.0.0.1"]}}}, True),
    ("ip_literal_hex", {"version": 1, "providers": {"p": {"hosts": ["0x7f000001"]}}}, True),
    ("host_upper_case", {"version": 1, "providers": {"p": {"hosts": ["API.openai.com"]}}}, True),
    ("host_trailing_dot", {"version": 1, "providers": {"p": {"hosts": ["a.example.com."]}}}, True),
    ("host_duplicate", {"version": 1, "providers": {"p": {"hosts": ["a.b.c", "a.b.c"]}}}, True),
    ("port_zero", _p(ports=[0]), True),
    ("port_too_big", _p(ports=[65536]), True),
    ("port_string", _p(ports=["443"]), True),
    ("port_bool", _p(ports=[True]), True),
    ("port_duplicate", _p(ports=[443, 443]), True),
    ("path_no_slash", _p(paths=["v1"]), True),
    ("path_star_middle", _p(paths=["/v1/*/x"]), True),
    ("path_dotdot", _p(paths=["/v1/../x"]), True),
    ("path_double_slash", _p(paths=["/v1//x"]), True),
    ("path_percent", _p(paths=["/v1%2f"]), True),
    ("path_query", _p(paths=["/v1?x"]), True),
    ("path_space", _p(paths=["/v1 x"]), True),
    ("method_lower", _p(methods=["get"]), True),
    ("method_connect", _p(methods=["CONNECT"]), True),
    ("format_two_placeholders", _cred(format="{secret}{secret}"), True),
    ("format_crlf", _cred(format="Bearer {secret}\r\nX: y"), True),
    ("format_braces", _cred(format="{secret} {x}"), True),
    ("header_host", _cred(header="host"), True),
    ("header_upper", _cred(header="Authorization"), True),
    ("secret_traversal", _cred(secret="../x"), True),
    ("credential_missing_secret", _p(credential={"header": "a", "format": "{secret}"}), True),
    ("allow_missing_ports", {"version": 1, "allow": [{"host": "a.example.com"}]}, True),
    ("allow_host_and_cidr", _a(cidr="10.0.0.0/8"), True),
    ("allow_no_destination", {"version": 1, "allow": [{"ports": [1]}]}, True),
    (
        "allow_addresses_with_cidr",
        {
            "version": 1,
            "allow": [{"cidr": "10.0.0.0/8", "ports": [1], "addresses": ["10.0.0.0/8"]}],
        },
        True,
    ),
    # Rules only the loader knows: CIDR semantics and cross-entry conflicts.
    ("cidr_host_bits", {"version": 1, "allow": [{"cidr": "10.1.2.3/8", "ports": [1]}]}, False),
    ("metadata_cidr", {"version": 1, "allow": [{"cidr": "169.254.0.0/16", "ports": [80]}]}, False),
    ("metadata_all", {"version": 1, "allow": [{"cidr": "0.0.0.0/0", "ports": [80]}]}, False),
    (
        "host_in_two_providers",
        {
            "version": 1,
            "providers": {"a": {"hosts": ["x.example.com"]}, "b": {"hosts": ["x.example.com"]}},
        },
        False,
    ),
    (
        "exact_shadowed_by_wildcard",
        {
            "version": 1,
            "providers": {"a": {"hosts": ["*.example.com"]}, "b": {"hosts": ["x.example.com"]}},
        },
        False,
    ),
    ("path_covered_by_prefix", _p(paths=["/v1/*", "/v1/x"]), False),
    (
        "secret_shared",
        {
            "version": 1,
            "providers": {
                "a": {
                    "hosts": ["a.example.com"],
                    "credential": {"header": "x-api-key", "format": "{secret}", "secret": "k"},
                },
                "b": {
                    "hosts": ["b.example.com"],
                    "credential": {"header": "x-api-key", "format": "{secret}", "secret": "k"},
                },
            },
        },
        False,
    ),
]


@pytest.mark.parametrize(("doc", "schema_rejects"), [pytest.param(d, s, id=i) for i, d, s in BAD])
def test_bad_documents(doc: dict[str, Any], schema_rejects: bool) -> None:
    with pytest.raises(PolicyError):
        load_policy_bytes([("p.yaml", yaml.safe_dump(doc).encode())])
    assert (not VALIDATOR.is_valid(doc)) is schema_rejects
