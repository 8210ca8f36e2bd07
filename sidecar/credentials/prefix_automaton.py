"""How much of a stream's end could still become a needle: an Aho-Corasick automaton.

The reflection guard holds back the longest suffix of what it has seen that is a proper
prefix of some needle (a key or one of its base64 forms). Recomputing that from the
buffer on every chunk costs up to (longest needle)^2 byte comparisons per chunk, which
a malicious upstream sending one-byte chunks turns into hundreds of Python steps per
byte. This automaton, built once per set of needles, carries its state from chunk to
chunk instead: one transition per new byte (amortized), at most the longest needle's
length per chunk, and nothing at all for a chunk that ends in a byte no needle
contains (an SSE event's "\\n\\n"). Issue 10, bounded detector cost. Pure.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

__all__ = ["PrefixAutomaton"]


class PrefixAutomaton:
    """States are trie nodes (0 = root); state s stands for the text `depth[s]` long."""

    __slots__ = ("_alphabet", "_children", "_depth", "_fail", "_internal", "max_len")

    def __init__(self, needles: Iterable[bytes]) -> None:
        children: list[dict[int, int]] = [{}]
        depth = [0]
        for needle in needles:
            node = 0
            for byte in needle:
                nxt = children[node].get(byte)
                if nxt is None:
                    nxt = len(children)
                    children[node][byte] = nxt
                    children.append({})
                    depth.append(depth[node] + 1)
                node = nxt
        fail = [0] * len(children)
        queue: deque[int] = deque(children[0].values())  # depth 1: fail to the root
        while queue:  # breadth first: a node's fail target is shallower, already done
            node = queue.popleft()
            for byte, child in children[node].items():
                target = fail[node]
                while target and byte not in children[target]:
                    target = fail[target]
                fail[child] = children[target].get(byte, 0)
                queue.append(child)
        self._children = children
        self._depth = depth
        self._fail = fail
        self._internal = [bool(c) for c in children]  # a proper prefix of some needle
        self._alphabet = bytes(sorted({b for c in children for b in c}))
        self.max_len = max(depth)

    def advance(self, state: int, chunk: bytes) -> int:
        """The state after `chunk`, given the state before it."""
        # Bytes up to the last one no needle contains cannot be part of a pending
        # suffix; nor can more than max_len bytes. Skip them without a Python step each.
        run = len(chunk) - len(chunk.rstrip(self._alphabet))
        if run < len(chunk) or len(chunk) >= self.max_len:
            state = 0
            chunk = chunk[len(chunk) - min(run, self.max_len) :]
        children, fail = self._children, self._fail
        for byte in chunk:
            while state and byte not in children[state]:
                state = fail[state]
            state = children[state].get(byte, 0)
        return state

    def pending(self, state: int, limit: int) -> int:
        """Length of the longest suffix, at most `limit` long, that is a proper prefix
        of a needle (the part that must wait for the next chunk)."""
        depth, fail, internal = self._depth, self._fail, self._internal
        while state and (not internal[state] or depth[state] > limit):
            state = fail[state]
        return depth[state]
