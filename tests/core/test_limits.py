"""The pure limits core (issue 10): sizes, option parsing, the per-source counter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar import settings
from sidecar.limits import (
    MIB,
    OPTIONS,
    Budget,
    ConnectionCounter,
    LimitError,
    Limits,
    body_limit,
    from_values,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("65536", 65536),
        ("64k", 65536),
        ("32m", 32 * MIB),
        ("32MiB", 32 * MIB),
        ("1g", 1024 * MIB),
        ("2 MB", 2 * MIB),
        (4096, 4096),
    ],
)
def test_sizes_parse_in_binary_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "0", "-1", "1.5m", "ten", "12t", "0x10", True])
def test_bad_sizes_are_refused(text):
    with pytest.raises(LimitError):
        parse_size(text)


def test_defaults_are_the_documented_ones():
    limits = from_values({})
    assert limits == Limits()
    assert limits.request_header_bytes == 64 * 1024
    assert limits.request_body_bytes == 32 * MIB
    assert limits.max_connections_per_source <= limits.max_connections


def test_every_option_is_a_flag_and_an_environment_variable(monkeypatch):
    parser = __import__("argparse").ArgumentParser()
    settings.add_arguments(parser)
    monkeypatch.setenv("EGRESS_SIDECAR_MAX_REQUEST_HEADER_BYTES", "16k")
    monkeypatch.setenv("EGRESS_SIDECAR_IDLE_TIMEOUT", "5")
    args = parser.parse_args(["--max-connections", "10", "--idle-timeout", "7"])
    resolved = settings.resolve(args)
    assert resolved.limits.request_header_bytes == 16 * 1024  # from the environment
    assert resolved.limits.max_connections == 10
    assert resolved.limits.idle_timeout == 7.0  # the flag wins
    for flag, *_ in OPTIONS:
        assert flag.lstrip("-").replace("-", "_") in vars(args)


@pytest.mark.parametrize(
    ("flag", "value", "fragment"),
    [
        ("--max-connections", "0", "greater than 0"),
        ("--max-connections", "many", "whole"),
        ("--header-timeout", "0", "between"),
        ("--header-timeout", "soon", "not a number"),
        ("--max-request-body", "5g", "at most"),
        ("--max-request-header-bytes", "lots", "size"),
        ("--h2-window", "16k", "between 64k and 16m"),
        ("--h2-window", "1g", "between 64k and 16m"),
        ("--max-h2-streams-total", "0", "greater than 0"),
        ("--max-buffered-request-bytes", "some", "size"),
        ("--max-decoded-bytes", "8g", "at most"),
    ],
)
def test_bad_option_values_name_the_flag(flag, value, fragment):
    with pytest.raises(LimitError) as caught:
        from_values({flag: value})
    assert str(caught.value).startswith(flag)
    assert fragment in str(caught.value)


def test_counter_caps_per_source_and_in_total():
    counter = ConnectionCounter(total=5, per_source=2)
    assert counter.open("a") is None and counter.open("a") is None
    assert "from this source" in (counter.open("a") or "")
    assert counter.open("b") is None and counter.open("b") is None
    assert counter.open("c") is None
    assert "open connections, limit 5" in (counter.open("d") or "")
    counter.close("a")
    assert counter.open("d") is None
    counter.close("never-opened")  # ignored, never negative
    assert counter.total == 5


@given(st.lists(st.tuples(st.booleans(), st.sampled_from("abcd")), max_size=200))
def test_counter_never_exceeds_its_limits_and_forgets_empty_sources(ops):
    counter = ConnectionCounter(total=6, per_source=3)
    held: dict[str, int] = {}
    for opening, source in ops:
        if opening:
            if counter.open(source) is None:
                held[source] = held.get(source, 0) + 1
        elif held.get(source):
            counter.close(source)
            held[source] -= 1
        assert counter.total == sum(held.values()) <= 6
        assert all(counter.open_from(s) == n <= 3 for s, n in held.items())
    assert set(counter._by_source) == {s for s, n in held.items() if n}


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=200))
def test_budget_never_exceeds_its_limit_and_gives_back_exactly(ops):
    budget = Budget(100)
    held: list[int] = []
    for taking, amount in ops:
        if taking:
            if budget.take(amount):
                held.append(amount)
            else:
                assert sum(held) + amount > 100  # refused only when it would not fit
        elif held:
            budget.give(held.pop())
        assert budget.used == sum(held) <= 100
        assert budget.peak <= 100


def test_provider_body_limit_overrides_the_default():
    assert body_limit(32 * MIB, None) == 32 * MIB
    assert body_limit(32 * MIB, 1024) == 1024


def test_every_limit_and_reason_is_documented():
    """The options and reason codes are a public contract: README and docs/limits.md."""
    from pathlib import Path

    from sidecar.decision import Reason

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    limits_doc = (root / "docs" / "limits.md").read_text()
    for flag, env, *_ in OPTIONS:
        for doc in (readme, limits_doc):
            assert f"`{flag}" in doc and f"EGRESS_SIDECAR_{env}`" in doc, flag
    for reason in (
        "request_headers_too_large",
        "response_headers_too_large",
        "request_body_too_large",
        "request_timeout",
        "idle_timeout",
        "too_many_connections",
        "too_many_streams",
        "sidecar_busy",
    ):
        assert Reason(reason)
        assert f"| `{reason}` |" in readme and f"`{reason}`" in limits_doc
