"""Shannon entropy of a string, the one definition shared by the key detector and the
DNS tunnelling detector. Pure."""

from __future__ import annotations

import math
from collections import Counter


def shannon_entropy(text: str) -> float:
    """Bits per character of `text` (0.0 for the empty string)."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())
