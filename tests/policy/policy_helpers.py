"""Helpers for policy tests (imported as `policy_helpers`; tests/ has no __init__.py)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from sidecar.policy.errors import PolicyError, Problem
from sidecar.policy.loader import load_policy
from sidecar.policy.model import Policy

REPO = Path(__file__).resolve().parents[2]


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


WriteFiles = Callable[..., list[Path]]


def load_text(tmp_path: Path, text: str, name: str = "p.yaml") -> Policy:
    path = tmp_path / name
    path.write_text(dedent(text), encoding="utf-8")
    return load_policy([path])


def problems_of(paths: list[Path]) -> list[Problem]:
    with pytest.raises(PolicyError) as info:
        load_policy(paths)
    assert info.value.problems, "PolicyError without problems"
    return list(info.value.problems)
