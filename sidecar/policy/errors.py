"""Policy loading errors: one `PolicyError` carrying every `Problem` found."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Problem:
    """One thing wrong with a policy file.

    `line` is 1-based; 0 means the problem concerns the whole file (unreadable,
    missing). `key` is the path of the offending key, e.g. `providers.openai.hosts[1]`;
    empty when the problem is not about one key (a YAML syntax error, an empty file).
    """

    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        file = _one_line(self.file)
        where = file if self.line <= 0 else f"{file}:{self.line}"
        if self.key:
            return f"{where}: {_one_line(self.key)}: {_one_line(self.message)}"
        return f"{where}: {_one_line(self.message)}"


def _one_line(text: str) -> str:
    """Escape control characters so that one problem is always one line of output."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class PolicyError(ValueError):
    """The policy cannot be loaded. `str()` is one `file:line: key: message` per line."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)
