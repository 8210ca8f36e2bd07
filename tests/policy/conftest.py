"""Fixtures for policy tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from policy_helpers import WriteFiles, dedent


@pytest.fixture
def write_files(tmp_path: Path) -> WriteFiles:
    """write_files(("a.yaml", text), ...) -> paths; text is dedented."""

    def write(*files: tuple[str, str]) -> list[Path]:
        paths = []
        for name, text in files:
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dedent(text), encoding="utf-8")
            paths.append(path)
        return paths

    return write
