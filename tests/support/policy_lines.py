"""Where things are written in a shipped policy file, for tests that print file:line."""

from __future__ import annotations

from pathlib import Path


def line_of(path: Path, text: str) -> int:
    """The 1-based line of `path` that is `text` (spaces and a trailing comment aside):
    tests name policy lines without pinning numbers that a comment above would shift."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.split(" #", 1)[0].strip() == text:
            return number
    raise AssertionError(f"{text!r} not in {path}")
