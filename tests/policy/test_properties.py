"""Property tests: generated valid policies round-trip exactly; anything else is refused
with a `PolicyError` (never another exception)."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import jsonschema
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_helpers import REPO

from sidecar.policy.errors import PolicyError
from sidecar.policy.loader import (
    ALLOWED_METHODS,
    DEFAULT_PROVIDER_METHODS,
    DEFAULT_PROVIDER_PORTS,
    load_policy_bytes,
)
from sidecar.policy.model import ANY_PATH, CredentialSpec, Endpoint, PathRules, SourceRef

SCHEMA = json.loads((REPO / "sidecar" / "policy" / "policy.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
segments = st.from_regex(r"[A-Za-z0-9_~-]{1,8}", fullmatch=True)
ports = st.sets(st.integers(1, 65535), min_size=1, max_size=4)
methods = st.sets(st.sampled_from(ALLOWED_METHODS), min_size=1)
paths = st.dictionaries(segments, st.booleans(), min_size=1, max_size=4)  # seg -> is prefix
credentials = st.tuples(
    st.sampled_from(["authorization", "x-api-key", "api-key", "x-goog-api-key"]),
    st.sampled_from(["Bearer {secret}", "{secret}", "Token {secret}", "Key={secret};"]),
)


@st.composite
def provider_fields(draw: st.DrawFn, index: int) -> dict[str, Any]:
    suffix = f"p{index}.example"
    names = draw(st.lists(labels, min_size=1, max_size=4, unique=True))
    wild = draw(st.lists(st.booleans(), min_size=len(names), max_size=len(names)))
    fields: dict[str, Any] = {
        "hosts": [
            f"*.{n}.{suffix}" if w else f"{n}.{suffix}" for n, w in zip(names, wild, strict=True)
        ]
    }
    if draw(st.booleans()):
        fields["ports"] = sorted(draw(ports))
    if draw(st.booleans()):
        fields["paths"] = [f"/{s}/*" if p else f"/{s}" for s, p in draw(paths).items()]
    if draw(st.booleans()):
        fields["methods"] = sorted(draw(methods))
    if draw(st.booleans()):
        fields["addresses"] = [f"10.{index}.0.0/16"]
    return fields


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": 1}
    if draw(st.booleans()):
        doc["mode"] = draw(st.sampled_from(["enforce", "audit"]))
    names = draw(
        st.lists(
            st.from_regex(r"[a-z0-9][a-z0-9_-]{0,12}", fullmatch=True), unique=True, max_size=4
        )
    )
    providers: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        fields = draw(provider_fields(i))
        # A credential is only valid on exact hosts (never bound to a wildcard, S7).
        if draw(st.booleans()) and not any(h.startswith("*.") for h in fields["hosts"]):
            header, fmt = draw(credentials)
            fields["credential"] = {"header": header, "format": fmt, "secret": name}
        providers[name] = fields
    if draw(st.booleans()) or providers:
        doc["providers"] = providers
    allow: list[dict[str, Any]] = []
    for j in range(draw(st.integers(0, 3))):
        entry: dict[str, Any] = {}
        if draw(st.booleans()):
            entry["name"] = f"n{j}"
        if draw(st.booleans()):
            hosts = draw(st.lists(labels, min_size=1, max_size=3, unique=True))
            if len(hosts) == 1 and draw(st.booleans()):
                entry["host"] = f"{hosts[0]}.a{j}.example"
            else:
                entry["hosts"] = [f"{h}.a{j}.example" for h in hosts]
        else:
            subnets = draw(st.sets(st.integers(0, 255), min_size=1, max_size=3))
            entry["cidrs"] = [f"172.16.{j * 64 + s % 64}.0/24" for s in sorted(subnets)]
            entry["cidrs"] = sorted(set(entry["cidrs"]))
        entry["ports"] = sorted(draw(ports))
        if draw(st.booleans()):
            entry["methods"] = sorted(draw(methods))
        allow.append(entry)
    if allow:
        doc["allow"] = allow
    return doc


def _path_rules(items: list[str] | None) -> PathRules:
    if items is None:
        return ANY_PATH
    return PathRules(
        exact=frozenset(p for p in items if not p.endswith("/*")),
        prefixes=frozenset(p[:-1] for p in items if p.endswith("/*")),
    )


def _expected(doc: dict[str, Any]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for name, f in doc.get("providers", {}).items():
        cred = f.get("credential")
        out.append(
            (
                f"providers.{name}",
                name,
                tuple(f["hosts"]),
                (),
                frozenset(f["ports"]) if "ports" in f else DEFAULT_PROVIDER_PORTS,
                _path_rules(f.get("paths")),
                frozenset(f["methods"]) if "methods" in f else DEFAULT_PROVIDER_METHODS,
                tuple(ipaddress.ip_network(a) for a in f.get("addresses", [])),
                True,
                CredentialSpec(**cred) if cred else None,
            )
        )
    for j, e in enumerate(doc.get("allow", [])):
        hosts = [e["host"]] if "host" in e else e.get("hosts", [])
        out.append(
            (
                f"allow.{e['name']}" if "name" in e else f"allow[{j}]",
                None,
                tuple(hosts),
                tuple(ipaddress.ip_network(c) for c in e.get("cidrs", [])),
                frozenset(e["ports"]),
                ANY_PATH,
                frozenset(e["methods"]) if "methods" in e else None,
                (),
                False,
                None,
            )
        )
    return out


def _facts(endpoint: Endpoint) -> tuple[Any, ...]:
    return (
        endpoint.rule,
        endpoint.provider,
        endpoint.hosts,
        endpoint.cidrs,
        endpoint.ports,
        endpoint.paths,
        endpoint.methods,
        endpoint.addresses,
        endpoint.tls_required,
        endpoint.credential,
    )


def _dump(doc: dict[str, Any]) -> bytes:
    return yaml.safe_dump(doc, sort_keys=False).encode()


@SETTINGS
@given(policies())
def test_generated_valid_policies_round_trip(doc: dict[str, Any]) -> None:
    VALIDATOR.validate(doc)
    policy = load_policy_bytes([("p.yaml", _dump(doc))])
    assert [_facts(e) for e in policy.endpoints] == _expected(doc)
    assert policy.mode.value == doc.get("mode", "enforce")
    assert all(isinstance(e.source, SourceRef) and e.source.line >= 1 for e in policy.endpoints)


@SETTINGS
@given(policies(), st.data())
def test_any_key_outside_the_schema_is_refused(doc: dict[str, Any], data: st.DataObject) -> None:
    places: list[tuple[str, dict[str, Any]]] = [("", doc)]
    for name, fields in doc.get("providers", {}).items():
        places.append((f"providers.{name}", fields))
        if "credential" in fields:
            places.append((f"providers.{name}.credential", fields["credential"]))
    for j, entry in enumerate(doc.get("allow", [])):
        places.append((f"allow[{j}]", entry))
    prefix, target = data.draw(st.sampled_from(places))
    key = data.draw(
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,12}", fullmatch=True).filter(
            lambda k: (
                k not in target
                and k
                not in {
                    "version",
                    "mode",
                    "providers",
                    "allow",
                    "hosts",
                    "host",
                    "cidr",
                    "cidrs",
                    "ports",
                    "paths",
                    "methods",
                    "addresses",
                    "credential",
                    "name",
                    "header",
                    "format",
                    "secret",
                }
            )
        )
    )
    target[key] = data.draw(st.sampled_from([1, "x", [], {}, None, True]))
    assert not VALIDATOR.is_valid(doc)
    try:
        load_policy_bytes([("p.yaml", _dump(doc))])
    except PolicyError as exc:
        full = f"{prefix}.{key}" if prefix else key
        assert [p.key for p in exc.problems] == [full]
        assert exc.problems[0].message.startswith(f"unknown key {key!r}")
    else:
        raise AssertionError(f"unknown key {key!r} at {prefix or 'top level'} was accepted")


DEFAULT_TEXT = (REPO / "policies" / "default.yaml").read_text()


def _load_or_refuse(text: str) -> None:
    try:
        load_policy_bytes([("p.yaml", text.encode("utf-8", "surrogatepass"))])
    except PolicyError as exc:
        lines = text.count("\n") + 2
        for problem in exc.problems:
            assert problem.file == "p.yaml"
            assert 0 <= problem.line <= lines
            assert "\n" not in str(problem)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_never_crashes(text: str) -> None:
    _load_or_refuse(text)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(DEFAULT_TEXT)), st.integers(0, 40), st.text(max_size=5))
def test_mangled_default_policy_never_crashes(start: int, length: int, insert: str) -> None:
    _load_or_refuse(DEFAULT_TEXT[:start] + insert + DEFAULT_TEXT[start + length :])
