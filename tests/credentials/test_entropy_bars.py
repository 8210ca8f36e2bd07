"""The shipped entropy-bar table is what its script derives (no request samples: issue 10)."""

from __future__ import annotations

import importlib.util
import math
import random
from pathlib import Path

from sidecar.credentials import entropy_bars
from sidecar.credentials.detect import _entropy_bar

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "derive_entropy_bars.py"


def _derive():
    spec = importlib.util.spec_from_file_location("derive_entropy_bars", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_matches_the_seeded_simulation_on_a_sample():
    derive = _derive()
    assert set(entropy_bars.BARS) == set(derive.ALPHABETS)
    rng = random.Random(10)
    for _ in range(25):
        alphabet = rng.choice(derive.ALPHABETS)
        n = rng.randrange(derive.MIN_LEN, derive.MAX_LEN + 1)
        expected = math.floor(derive.bar(n, alphabet) * 1e6) / 1e6
        assert entropy_bars.BARS[alphabet][n - derive.MIN_LEN] == expected, (n, alphabet)


def test_lengths_and_alphabets_outside_the_table_use_a_lower_or_equal_bar():
    assert _entropy_bar(5000, 62) == _entropy_bar(512, 62)
    assert _entropy_bar(50, 61) == _entropy_bar(50, 42)  # next smaller alphabet: lower bar
    assert _entropy_bar(50, 61) <= _entropy_bar(50, 62)
    assert _entropy_bar(50, 200) == _entropy_bar(50, 68)
