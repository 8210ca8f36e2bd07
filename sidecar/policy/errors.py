"""Policy loading errors: one `PolicyError` carrying every `Problem` found.

`Problem` is the one problem type of every file a user writes (policy, alerts config,
virtual keys): it lives with the shared YAML reader, `sidecar/yamlfile.py`.
"""

from __future__ import annotations

from collections.abc import Iterable

from sidecar.yamlfile import Problem

__all__ = ["PolicyError", "Problem"]


class PolicyError(ValueError):
    """The policy cannot be loaded. `str()` is one `file:line: key: message` per line."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)
