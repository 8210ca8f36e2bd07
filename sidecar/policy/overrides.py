"""`overrides:` in a policy file: change another file's policy without copying it.

    version: 1
    overrides:
      mode: audit                      # wins over every file's `mode:`
      remove: [providers.xai, providers.azure-openai]

`remove` drops entries that *other* files define (by rule id: `providers.NAME` or
`allow.NAME`); the same file may then define an entry of that name anew, which is how
the default's Azure wildcard is replaced by pinned resources. Removing an id that no
other file defines is an error (a typo must not pass review as a removal). `mode`
decides the mode whatever the files' `mode:` keys say; two files overriding it
differently is an error. Also checked here: rule ids are unique across files, for
index-named `allow[i]` entries too (the loader checks named ones).

Pure: called by the loader (`read` per file, `apply` once the files are read).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from collections.abc import Sequence
from typing import Protocol

from yaml.nodes import Node

from sidecar import yamlfile
from sidecar.policy.errors import Problem
from sidecar.policy.model import Mode, Removal, SourceRef

_KEYS = ("mode", "remove")
_RULE_ID = re.compile(r"^(providers\.[a-z0-9][a-z0-9_-]*|allow\.[a-z0-9][a-z0-9_.-]*)$")


class SourcedRule(Protocol):
    """What the loader's entry drafts offer (rule id and where it was written)."""

    rule: str
    source: SourceRef


@dataclasses.dataclass(slots=True)
class FileOverrides:
    file: str
    removals: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)
    mode: tuple[Mode, int] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Applied:
    removed: tuple[Removal, ...]
    mode: tuple[Mode, SourceRef] | None  # the overriding mode, if any


def read(reader: yamlfile.YamlChecker, node: Node) -> FileOverrides:
    found = FileOverrides(reader.file)
    fields = reader.mapping(node, "overrides", _KEYS)
    if fields is None:
        return found
    if "mode" in fields:
        vnode = fields["mode"][1]
        text = reader.string(vnode, "overrides.mode", "enforce or audit")
        if text is not None:
            try:
                found.mode = (Mode(text), yamlfile.line(vnode))
            except ValueError:
                reader.err(vnode, "overrides.mode", f"unknown mode {text!r}: enforce or audit")
    if "remove" in fields:
        nodes = reader.seq(fields["remove"][1], "overrides.remove", "rule id") or []
        rule_id = functools.partial(_rule_id, reader)
        found.removals += reader.unique(
            nodes, "overrides.remove", False, rule_id, lambda rule, _: rule
        )
    return found


def _rule_id(reader: yamlfile.YamlChecker, item: Node, key: str) -> str | None:
    rule = reader.string(item, key, "a rule id such as providers.xai")
    if rule is not None and not _RULE_ID.match(rule):
        reader.err(
            item,
            key,
            f"{rule!r} is not a rule id: write providers.NAME or "
            "allow.NAME (give an unnamed allow entry a name to remove it)",
        )
        return None
    return rule


def apply[D: SourcedRule](
    drafts: Sequence[D], overrides: Sequence[FileOverrides], problems: list[Problem]
) -> tuple[list[D], Applied]:
    """The drafts left after the removals, and what the overrides decided."""
    removed: list[Removal] = []
    gone: set[int] = set()
    for file_overrides in overrides:
        for rule, line, key in file_overrides.removals:
            targets = [
                i
                for i, d in enumerate(drafts)
                if d.rule == rule and d.source.file != file_overrides.file
            ]
            if not targets:
                problems.append(
                    Problem(
                        file_overrides.file, line, key, _missing(rule, drafts, file_overrides.file)
                    )
                )
                continue
            by = SourceRef(file_overrides.file, line)
            for index in targets:
                if index not in gone:
                    gone.add(index)
                    removed.append(Removal(rule, drafts[index].source, by))
    kept = [d for i, d in enumerate(drafts) if i not in gone]
    _check_index_ids(kept, problems)
    return kept, Applied(tuple(removed), _mode(overrides, problems))


def _missing(rule: str, drafts: Sequence[SourcedRule], file: str) -> str:
    others = sorted({d.rule for d in drafts if d.source.file != file})
    if any(d.rule == rule for d in drafts):
        return f"{rule} is defined in this file: delete it here instead of removing it"
    close = difflib.get_close_matches(rule, others, n=1, cutoff=0.6)
    hint = f": did you mean {close[0]!r}?" if close else " (check the name and the file order)"
    return f"no other file defines {rule}{hint}"


def _mode(
    overrides: Sequence[FileOverrides], problems: list[Problem]
) -> tuple[Mode, SourceRef] | None:
    chosen: tuple[Mode, SourceRef] | None = None
    for file_overrides in overrides:
        if file_overrides.mode is None:
            continue
        mode, line = file_overrides.mode
        if chosen is not None and chosen[0] is not mode:
            problems.append(
                Problem(
                    file_overrides.file,
                    line,
                    "overrides.mode",
                    f"overrides mode {mode.value!r}, but {chosen[1]} overrides "
                    f"it to {chosen[0].value!r}: keep one",
                )
            )
            continue
        chosen = chosen or (mode, SourceRef(file_overrides.file, line))
    return chosen


def _check_index_ids(drafts: Sequence[SourcedRule], problems: list[Problem]) -> None:
    """`allow[0]` of two files would be one rule id in logs and diffs: refuse it."""
    first: dict[str, SourcedRule] = {}
    for draft in drafts:
        if not draft.rule.startswith("allow["):
            continue
        other = first.setdefault(draft.rule, draft)
        if other is not draft:
            problems.append(
                Problem(
                    draft.source.file,
                    draft.source.line,
                    draft.rule,
                    f"rule id {draft.rule} is also the id of the entry at "
                    f"{other.source}; give one of them a 'name:'",
                )
            )
