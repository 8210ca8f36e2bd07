"""DNS tunnel detector: real tunnel shapes must trigger, real names must not."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.dnsguard import (
    DnsGuardConfig,
    DnsTunnelDetector,
    base_domain,
    normalize_qname,
    qtype_number,
    shannon_entropy,
)

CLIENT = "10.0.0.7"
RNG = random.Random(20260322)
PAYLOAD = RNG.randbytes(400)


def b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def b64(data: bytes) -> str:
    # iodine's base64u alphabet: letters, digits, '-', '_' (case preserved on the wire)
    return base64.b64encode(data, altchars=b"-_").decode().rstrip("=")


def hexenc(data: bytes) -> str:
    return binascii.hexlify(data).decode()


def labels(text: str, size: int) -> str:
    return ".".join(text[i : i + size] for i in range(0, len(text), size))


# --- one question, no history ----------------------------------------------------------

TUNNEL_SHAPES: list[tuple[str, str, set[str]]] = [
    # (case, qname, rules of which at least one must fire)
    (
        "iodine base32 63-char labels",
        labels(b32(PAYLOAD[:110]), 63) + ".t.attacker.example",
        {"long_label", "long_name"},
    ),
    (
        "iodine base64u 63-char labels",
        "0" + labels(b64(PAYLOAD[:140]), 63)[:180] + ".t.attacker.example",
        {"long_label", "long_name", "high_entropy_label"},
    ),
    (
        "dnscat2 hex labels",
        labels(hexenc(PAYLOAD[:60]), 63) + ".dnscat.attacker.example",
        {"long_label", "hex_label"},
    ),
    (
        "hex label kept under the length limit",
        hexenc(PAYLOAD[:14]) + ".x.attacker.example",
        {"hex_label"},
    ),
    (
        "many 30-char labels up to the name limit",
        labels(b32(PAYLOAD[:150]), 30)[:200] + ".attacker.example",
        {"long_name"},
    ),
    (
        "name at 253 characters",
        ".".join(["a" * 20] * 11) + ".ex.com",
        {"long_name"},
    ),
]


@pytest.mark.parametrize(
    ("case", "qname", "rules"), TUNNEL_SHAPES, ids=[c for c, _, _ in TUNNEL_SHAPES]
)
def test_tunnel_shapes_trigger(case: str, qname: str, rules: set[str]) -> None:
    verdict = DnsTunnelDetector().observe(qname, "A", CLIENT, now=0.0)
    assert verdict.suspicious, (case, qname)
    assert rules & set(verdict.rules), (case, verdict.detail)
    assert verdict.base_domain.endswith("example") or verdict.base_domain == "ex.com"


@pytest.mark.parametrize(
    ("length", "encoder", "at_least"),
    [(40, b32, 0.2), (40, b64, 0.4), (50, b32, 0.6), (50, b64, 0.8), (63, b32, 0.9)],
)
def test_entropy_rule_detection_rate(length: int, encoder: object, at_least: float) -> None:
    """The entropy rule alone, per question, on random payloads (seeded): a signal that
    grows with label length; the window rules are what catch short-label tunnels."""
    rng = random.Random(length)
    cfg = DnsGuardConfig(max_label_len=63)  # keep long_label out of the way
    hits = 0
    for _ in range(500):
        label = encoder(rng.randbytes(60))[:length]  # type: ignore[operator]
        v = DnsTunnelDetector(cfg).observe(f"{label}.attacker.example", "A", CLIENT, now=0)
        hits += "high_entropy_label" in v.rules
    assert hits / 500 >= at_least


LEGIT = [
    "api.openai.com",
    "api.anthropic.com.",
    "API.OpenAI.com",
    "bedrock-runtime.us-east-1.amazonaws.com",
    "bedrock-agent-runtime.eu-central-1.amazonaws.com",
    "generativelanguage.googleapis.com",
    "europe-west4-aiplatform.googleapis.com",
    "my-resource-name-openai.openai.azure.com",
    "login.microsoftonline.com",
    "redis.default.svc.cluster.local",
    "redis-master-headless.cache-prod.svc.cluster.local",
    "otel-collector.monitoring.svc.cluster.local",
    "kube-dns.kube-system.svc.cluster.local",
    "api.openai.com.litellm-gateway.svc.cluster.local",  # search-path expansion
    "ip-10-0-12-34.us-west-2.compute.internal",
    "ec2-54-123-45-67.compute-1.amazonaws.com",
    "d111111abcdef8.cloudfront.net",
    "xn--bcher-kva.example",
    "prometheus-operator-kube-p-operator.monitoring.svc.cluster.local",
    "anthropic-generativelanguage-mysql.example.com",
    "storage-account-westeurope-backup.blob.core.windows.net",
    "_grpclb._tcp.api.example.com",
    "1.0.0.10.in-addr.arpa",
    "b.9.8.7.6.5.0.4.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
]


@pytest.mark.parametrize("qname", LEGIT)
@pytest.mark.parametrize("qtype", ["A", "AAAA", 65])
def test_legit_names_do_not_trigger(qname: str, qtype: int | str) -> None:
    verdict = DnsTunnelDetector().observe(qname, qtype, CLIENT, now=0.0)
    assert not verdict.suspicious, verdict.detail


def test_legit_traffic_over_time_does_not_trigger() -> None:
    """A gateway's real pattern: the same few names, search-path expansions, TXT rarely."""
    det = DnsTunnelDetector()
    names = [*LEGIT]
    search = ["litellm.svc.cluster.local", "svc.cluster.local", "cluster.local"]
    for i in range(3000):
        now = i * 0.05  # 20 questions a second for 150 s
        name = names[i % len(names)]
        if i % 3 == 0:
            name = f"{name}.{search[i % 3]}"
        qtype = "TXT" if i % 500 == 0 else ("AAAA" if i % 2 else "A")
        verdict = det.observe(name, qtype, CLIENT, now=now)
        assert not verdict.suspicious, (name, verdict.detail)


# --- over time ----------------------------------------------------------------------


def test_many_unique_subnames_under_one_domain() -> None:
    det = DnsTunnelDetector()
    fired = None
    for i in range(200):
        # short labels: no per-question rule can see these
        qname = f"{b32(RNG.randbytes(5))}.{i % 7}.t.attacker.example"
        v = det.observe(qname, "A", CLIENT, now=i * 0.1)
        if v.suspicious:
            fired = i
            assert v.rules == ("many_subnames",), v.detail
            assert v.base_domain == "attacker.example"
            break
    assert fired == DnsGuardConfig().max_unique_subnames - 1


def test_unique_subnames_window_slides() -> None:
    cfg = DnsGuardConfig(max_unique_subnames=10, window_seconds=10)
    det = DnsTunnelDetector(cfg)
    # 9 unique names every 10 s: never 10 within one window
    for i in range(100):
        v = det.observe(f"n{i}.slow.example", "A", CLIENT, now=i * 1.2)
        assert not v.suspicious, (i, v.detail)
    # the same, in a burst
    hits = [det.observe(f"m{i}.fast.example", "A", CLIENT, now=200 + i * 0.01) for i in range(10)]
    assert hits[-1].suspicious and not hits[-2].suspicious


def test_repeated_same_name_is_not_many_subnames() -> None:
    det = DnsTunnelDetector()
    for i in range(1000):
        assert not det.observe("api.openai.com", "A", CLIENT, now=i * 0.01).suspicious


def test_kubernetes_namespaces_are_separate_domains() -> None:
    assert base_domain("redis.default.svc.cluster.local", ("svc.cluster.local",)) == (
        "default.svc.cluster.local"
    )
    det = DnsTunnelDetector()
    # 60 services in 60 namespaces: many names under svc.cluster.local, few under each
    for i in range(60):
        v = det.observe(f"svc{i}.ns{i}.svc.cluster.local", "A", CLIENT, now=i * 0.1)
        assert not v.suspicious, v.detail


@pytest.mark.parametrize("qtype", ["TXT", "NULL", "ANY", 10, 16, 255, "PRIVATE"])
def test_rare_qtype_burst(qtype: int | str) -> None:
    det = DnsTunnelDetector()
    verdicts = [det.observe("x.example.org", qtype, CLIENT, now=i * 0.5) for i in range(10)]
    assert not any(v.suspicious for v in verdicts[:9])
    assert verdicts[9].rules == ("rare_qtype_burst",)
    # another client is counted on its own
    assert not det.observe("x.example.org", qtype, "10.0.0.8", now=5.0).suspicious


def test_rare_qtypes_spread_out_do_not_trigger() -> None:
    det = DnsTunnelDetector()
    for i in range(100):
        assert not det.observe("_dmarc.example.org", "TXT", CLIENT, now=i * 7.0).suspicious


def test_domain_spray_is_flagged() -> None:
    det = DnsTunnelDetector()
    hits = [det.observe(f"www.d{i}.example", "A", CLIENT, now=i * 0.01) for i in range(250)]
    first = next(i for i, v in enumerate(hits) if v.suspicious)
    assert first == DnsGuardConfig().max_new_domains - 1
    assert hits[first].rules == ("domain_spray",)


def test_exempt_suffixes_are_ignored() -> None:
    det = DnsTunnelDetector(DnsGuardConfig(exempt_suffixes=("elb.amazonaws.com",)))
    alb = "k8s-default-myingres-1a2b3c4d5e-1234567890.us-east-1.elb.amazonaws.com"
    assert DnsTunnelDetector().observe(alb, "A", CLIENT, now=0).suspicious  # a known FP shape
    assert not det.observe(alb, "A", CLIENT, now=0).suspicious
    assert det.tracked_domains == 0


def test_details_are_safe_to_log() -> None:
    nasty = "\x1b[31m" + "A" * 60 + "\n.attacker.example"
    v = DnsTunnelDetector().observe(nasty, "A", CLIENT, now=0)
    assert v.suspicious
    assert all(ch.isprintable() for ch in v.detail)
    assert len(v.detail) < 400


# --- memory bound -------------------------------------------------------------------


def test_a_million_unique_domains_stay_under_the_cap() -> None:
    cfg = DnsGuardConfig(max_tracked_domains=1000, max_tracked_clients=50)
    det = DnsTunnelDetector(cfg)
    started = time.monotonic()
    for i in range(1_000_000):
        det.observe(f"a{i}.s{i}.example", "TXT" if i % 3 == 0 else "A", f"c{i % 97}", now=i * 1e-4)
    assert det.tracked_domains == cfg.max_tracked_domains
    assert det.tracked_clients == cfg.max_tracked_clients
    assert det.tracked_entries() <= det.max_entries()
    assert time.monotonic() - started < 100


def test_a_tunnel_keeps_its_counter_while_domains_are_sprayed() -> None:
    cfg = DnsGuardConfig(max_tracked_domains=100)
    det = DnsTunnelDetector(cfg)
    flagged = set()
    for i in range(2000):
        det.observe(f"x.spray{i}.example", "A", "10.0.0.9", now=i * 0.001)
        if i % 20 == 0:  # a tunnel query in between every 20 spray queries
            v = det.observe(
                f"{b32(RNG.randbytes(5))}.t.attacker.example", "A", CLIENT, now=i * 0.001
            )
            flagged.update(v.rules)
    assert "many_subnames" in flagged


def test_many_subnames_per_domain_is_capped() -> None:
    det = DnsTunnelDetector()
    for i in range(10_000):
        det.observe(f"n{i}.one.example", "A", CLIENT, now=0.0)
    assert det.tracked_entries() <= 1 + DnsGuardConfig().max_unique_subnames + 2 + 1 + 1


# --- helpers and properties ----------------------------------------------------------


def test_helpers() -> None:
    assert normalize_qname("API.OpenAI.com.") == "api.openai.com"
    assert base_domain("a.b.example.co.uk", ("co.uk",)) == "example.co.uk"
    assert base_domain("example.com") == "example.com"
    assert base_domain("com") == "com"
    assert qtype_number("txt") == 16 and qtype_number(28) == 28 and qtype_number("TYPE99") == 99
    with pytest.raises(ValueError):
        qtype_number("BOGUS")
    assert shannon_entropy("") == 0.0 and shannon_entropy("aaaa") == 0.0
    assert math.isclose(shannon_entropy("abcd"), 2.0)
    with pytest.raises(ValueError):
        DnsGuardConfig(max_tracked_domains=0)


VOCAB = (
    "api openai anthropic bedrock runtime agent us east west north south central eu ap "
    "amazonaws googleapis generativelanguage aiplatform redis default svc cluster local kube "
    "dns prometheus operator otel collector monitoring management azure cognitiveservices "
    "microsoftonline login oauth2 storage account backup gateway litellm prod staging dev "
    "internal external proxy cache postgres mysql kafka broker metrics grafana loki tempo "
    "vault consul service headless primary replica worker queue inference router huggingface "
    "mistral cohere groq together fireworks deepseek models chat completions embeddings"
).split()

word_label = st.lists(st.sampled_from(VOCAB), min_size=1, max_size=4).map("-".join).filter(
    lambda s: len(s) <= 63
) | st.tuples(st.sampled_from(VOCAB), st.integers(0, 99)).map(lambda t: f"{t[0]}-{t[1]}")


@settings(max_examples=500, deadline=None)
@given(st.lists(word_label, min_size=1, max_size=4))
def test_property_word_labels_never_trigger_entropy(parts: list[str]) -> None:
    """Labels of up to four service words (the shape real host names have) stay below
    the entropy threshold: such labels top out near 4.33 bits/char, the limit is 4.4."""
    v = DnsTunnelDetector().observe(".".join([*parts, "example", "com"]), "A", CLIENT, now=0)
    assert "high_entropy_label" not in v.rules, v.detail


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-"),
        min_size=1,
        max_size=63,
    ).filter(lambda s: len(set(s)) < 2 ** DnsGuardConfig().entropy_threshold)
)
def test_property_few_distinct_characters_never_trigger_entropy(label: str) -> None:
    """Entropy is at most log2(distinct characters): the bound the threshold rests on."""
    assert shannon_entropy(label) <= math.log2(len(set(label))) + 1e-9
    v = DnsTunnelDetector().observe(f"{label}.example.com", "A", CLIENT, now=0)
    assert "high_entropy_label" not in v.rules


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=40, max_size=120))
def test_property_long_encoded_payloads_always_trigger(data: bytes) -> None:
    """Any payload of 40+ bytes, base32-encoded into 63-char labels, is flagged."""
    v = DnsTunnelDetector().observe(labels(b32(data), 63) + ".t.attacker.example", "A", CLIENT, 0)
    assert v.suspicious


def test_config_is_a_frozen_dataclass() -> None:
    cfg = DnsGuardConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_label_len = 99  # type: ignore[misc]
