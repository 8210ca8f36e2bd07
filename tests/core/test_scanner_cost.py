"""Issue 10, bounded detector cost: adversarial inputs, and the *work* each scanner does.

Work is counted, not timed (`tests.support.work.WorkCounter`: Python-level steps in the
`sidecar` package), so the bounds hold on a busy machine. Each property: the steps
spent on an input are at most a small constant per input byte plus a constant per
call. Before issue 10 the generic key detector sampled a Monte-Carlo entropy bar per
new (length, alphabet) pair: ~200 steps per byte of a header of medium tokens, which
these tests reject.
"""

from __future__ import annotations

import base64
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.credentials.detect import scan_generic, scan_prefixed
from sidecar.credentials.reflection import StreamRedactor, compile_patterns
from sidecar.dnsguard import DnsTunnelDetector
from tests.support.work import WorkCounter

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Steps per input byte and per call. The measured worst cases are well below
# (bench.scanners prints them); the old sampler needed ~200 per byte.
# Per call: a decoded `Basic` value that is just a key prefix runs every family the
# prefix triggers (~660 steps for `Basic c2stcHJvai0=`, found by hypothesis).
DETECT_PER_BYTE, DETECT_PER_CALL = 8, 1000
DNS_PER_BYTE, DNS_PER_QUESTION = 4, 400
REDACT_PER_BYTE, REDACT_PER_CHUNK = 4, 8  # per chunk: times the longest needle (see below)

ALPHABETS = [
    "0123456789abcdef",
    string.ascii_lowercase + string.digits,
    string.ascii_letters + string.digits,
    string.ascii_letters + string.digits + "_-.~+/",
    "ab1",  # low entropy: the 743 ms header of issue 10
    "aA0",
]
PREFIXES = ["", "sk-", "sk-proj-", "sk-ant-api03-", "AIza", "gsk_", "eyJ", "vk-", "xai-"]


@st.composite
def tokens(draw: st.DrawFn) -> str:
    alphabet = draw(st.sampled_from(ALPHABETS))
    length = draw(st.integers(0, 600))
    seed = draw(st.integers(0, 2**32 - 1))
    body = "".join(
        alphabet[(seed >> (i % 29) ^ i * 2654435761) % len(alphabet)] for i in range(length)
    )
    return draw(st.sampled_from(PREFIXES)) + body


@st.composite
def header_values(draw: st.DrawFn) -> str:
    parts = draw(st.lists(tokens(), min_size=1, max_size=120))
    sep = draw(st.sampled_from([" ", ",", ".", "", "="]))
    value = sep.join(parts)
    if draw(st.booleans()):
        value = "eyJ" * draw(st.integers(0, 3000)) + value  # quadratic for the plain JWT regex
    if draw(st.booleans()):
        value = "Basic " + base64.b64encode(value.encode()).decode()
    elif draw(st.booleans()):
        value = "Bearer " + value
    return value


def _bound(steps: int, size: int, per_byte: int, per_call: int) -> None:
    assert steps <= per_call + per_byte * size, (
        f"{steps} steps for {size} bytes: {steps / max(size, 1):.1f} per byte"
    )


@SETTINGS
@given(header_values(), st.sampled_from(["authorization", "x-api-key", "api-key"]))
def test_key_detection_work_is_bounded_per_byte(value: str, header: str) -> None:
    with WorkCounter() as work:
        scan_prefixed(value, f"header {header}")
        scan_generic(value, f"header {header}", header=header)
    _bound(work.steps, len(value), DETECT_PER_BYTE, DETECT_PER_CALL)


def test_many_medium_low_entropy_tokens_cost_little_per_byte() -> None:
    """The issue's 41 KB Authorization header: every (length, alphabet) pair new."""
    parts, size, n = [], 0, 0
    while size < 41_000:
        token = ("ab1" * 200)[: 32 + n % 480] + "Q" * (n % 3) + "_-.~+/"[: n % 7]
        parts.append(token)
        size += len(token) + 1
        n += 1
    value = "Bearer " + " ".join(parts)
    with WorkCounter() as work:
        assert scan_generic(value, "header authorization", header="authorization") == []
    _bound(work.steps, len(value), 2, DETECT_PER_CALL)


@st.composite
def dns_names(draw: st.DrawFn) -> str:
    labels = draw(
        st.lists(
            st.text(
                alphabet=string.ascii_lowercase + string.digits + "-_", min_size=1, max_size=63
            ),
            min_size=1,
            max_size=8,
        )
    )
    suffix = draw(st.sampled_from(["example", "svc.cluster.local", "co.uk", "t.attacker.example"]))
    return ".".join(labels)[:240] + "." + suffix


@SETTINGS
@given(
    st.lists(
        st.tuples(dns_names(), st.sampled_from([1, 16, 28, 255, 65399])), min_size=1, max_size=300
    )
)
def test_dns_tunnel_detector_work_is_bounded_per_byte(questions) -> None:
    detector = DnsTunnelDetector()
    size = sum(len(name) for name, _ in questions)
    with WorkCounter() as work:
        for i, (name, qtype) in enumerate(questions):
            detector.observe(name, qtype, client=f"10.0.0.{i % 3}", now=float(i) * 0.01)
    # Amortized over the sequence: window evictions are paid by the entries added.
    _bound(work.steps, size, DNS_PER_BYTE, DNS_PER_QUESTION * len(questions))


KEY = b"sk-proj-" + bytes(string.ascii_letters.encode()[i * 7 % 52] for i in range(156))
PATTERNS = compile_patterns([KEY])
PIECES = [
    KEY,
    KEY[:-1],
    KEY[: len(KEY) // 2],
    base64.b64encode(KEY),
    base64.b64encode(KEY)[:-5],
    b'data: {"delta": "hello"}\n\n',
    b"x" * 300,
    b".",
    b"\n",
]


@SETTINGS
@given(
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=60),
    st.lists(st.integers(1, 4096), min_size=1, max_size=400),
)
def test_reflection_redactor_work_is_bounded_per_byte_and_chunk(pieces, sizes) -> None:
    body = b"".join(pieces)
    chunks, pos, i = [], 0, 0
    while pos < len(body):
        chunks.append(body[pos : pos + sizes[i % len(sizes)]])
        pos += sizes[i % len(sizes)]
        i += 1
    redactor = StreamRedactor(PATTERNS)
    with WorkCounter() as work:
        out = b"".join(redactor.feed(c) for c in chunks) + redactor.finish()
    assert KEY not in out
    # Per chunk, the held-back tail (at most the longest needle) is re-examined.
    _bound(
        work.steps,
        len(body),
        REDACT_PER_BYTE,
        REDACT_PER_CHUNK * PATTERNS.max_len * len(chunks) + 200,
    )
