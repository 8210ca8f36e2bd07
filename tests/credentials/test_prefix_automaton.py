"""The reflection guard's prefix automaton answers exactly what re-reading the buffer did."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.credentials.reflection import compile_patterns

SMALL = st.binary(min_size=1, max_size=12).map(lambda b: bytes(x % 3 + 97 for x in b))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(SMALL, min_size=1, max_size=5),
    st.lists(
        st.tuples(
            st.binary(max_size=30).map(lambda b: bytes(x % 4 + 97 for x in b)), st.integers(0, 40)
        ),
        min_size=1,
        max_size=30,
    ),
)
def test_pending_matches_the_buffer_rescan(needles, feeds):
    """Overlapping needles over a tiny alphabet ('d' is in none), arbitrary chunks, and a
    held-back tail of any length up to what was seen: the two answers agree."""
    patterns = compile_patterns(needles)
    assert patterns.automaton is not None
    state, stream = 0, b""
    for chunk, keep in feeds:
        stream += chunk
        state = patterns.automaton.advance(state, chunk)
        buf = stream[len(stream) - min(len(stream), len(chunk) + keep) :]
        assert patterns.automaton.pending(state, len(buf)) == patterns.pending(buf)
