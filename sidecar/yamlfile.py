"""Reading the YAML files a user writes: lines kept, duplicate keys refused, problems collected.

One reader for the policy files, the alerts config and the virtual keys file. The YAML
is *composed* (not constructed) so that every value keeps its line and duplicate keys
are visible (PyYAML's constructor silently keeps the last one: a second `team-a:`
would replace the first tenant without a word). Problems are collected, not raised,
as `Problem(file, line, key, message)`, printed `file:line: key: message`, so that a
user sees every mistake of a file at once. Unknown keys are refused with the closest
allowed key or the list of allowed ones.

Pure: no mitmproxy, no network, no file system (callers read the bytes).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Collection, Hashable

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "BOOL",
    "FLOAT",
    "INT",
    "MERGE",
    "NULL",
    "STR",
    "Problem",
    "YamlChecker",
    "compose",
    "describe",
    "join",
    "line",
    "quote_hint",
    "unknown_key_message",
]

_TAG = "tag:yaml.org,2002:"
STR, INT, BOOL, NULL, FLOAT = (_TAG + t for t in ("str", "int", "bool", "null", "float"))
MERGE = _TAG + "merge"


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Problem:
    """One thing wrong with a file the user wrote.

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


def line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def describe(node: Node) -> str:
    """What the user wrote, as YAML read it ("the string '443'", "a list", ...)."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    value = str(node.value)
    tag = node.tag
    if tag == STR:
        return f"the string {value!r}"
    if tag == INT or tag == FLOAT:
        return f"the number {value}"
    if tag == BOOL:
        return f"{value!r}, which YAML reads as a boolean"
    if tag == NULL:
        return "nothing (null)"
    return f"{value!r} tagged {tag}"


def quote_hint(node: Node) -> str:
    if isinstance(node, ScalarNode) and node.tag in (BOOL, NULL, INT, FLOAT):
        return "; put it in quotes if you meant text"
    return ""


def unknown_key_message(name: str, allowed: Collection[str], hints: dict[str, str]) -> str:
    message = f"unknown key {name!r}"
    if name in hints:
        return f"{message}: {hints[name]}"
    close = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.6)
    if close:
        return f"{message}: did you mean {close[0]!r}?"
    return f"{message}: allowed keys are {', '.join(allowed)}"


def compose(file: str, data: bytes, problems: list[Problem], *, empty: str) -> Node | None:
    """The document's node tree, or None after appending why not to `problems`.

    `empty` is the message for a file with no document (say what it should start with).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = data[: exc.start].count(b"\n") + 1
        problems.append(Problem(file, bad_line, "", "the file is not valid UTF-8"))
        return None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = int(mark.line) + 1 if mark is not None else 0
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        problems.append(Problem(file, at, "", f"YAML syntax error: {what}"))
        return None
    except yaml.reader.ReaderError as exc:
        at = text[: exc.position].count("\n") + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        problems.append(Problem(file, at, "", f"character {char!r} is not allowed in a YAML file"))
        return None
    except yaml.YAMLError as exc:
        problems.append(Problem(file, 0, "", f"YAML error: {exc}"))
        return None
    except RecursionError:
        problems.append(Problem(file, 0, "", "YAML nesting is too deep"))
        return None
    if root is None:
        problems.append(Problem(file, 1, "", empty))
    return root


class YamlChecker:
    """Structure checks on one composed document; appends to `problems`, never raises."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        self._errors = 0

    def err(self, where: Node | int, key: str, message: str) -> None:
        at = where if isinstance(where, int) else line(where)
        self.problems.append(Problem(self.file, at, key, message))
        self._errors += 1

    def mapping(
        self,
        node: Node,
        key: str,
        allowed: Collection[str] | None,
        hints: dict[str, str] | None = None,
    ) -> dict[str, tuple[ScalarNode, Node]] | None:
        """name -> (key node, value node); duplicates, merge keys and unknown keys refused.

        `allowed` None accepts any name (a mapping of user-chosen names: providers,
        tenants). Refused keys are left out of the result, the rest is still read.
        """
        if not isinstance(node, MappingNode):
            self.err(node, key, f"expected a mapping (key: value), got {describe(node)}")
            return None
        out: dict[str, tuple[ScalarNode, Node]] = {}
        first_line: dict[str, int] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, ScalarNode):
                self.err(knode, key or "<top>", "keys must be plain names")
                continue
            name = str(knode.value)
            path = join(key, name)
            if knode.tag == MERGE or name == "<<":
                self.err(knode, path, "YAML merge keys ('<<') are not supported: write keys out")
                continue
            if name in first_line:
                self.err(
                    knode,
                    path,
                    f"duplicate key (first at line {first_line[name]}); YAML would silently "
                    "keep only the last one: merge them into one",
                )
                continue
            first_line[name] = line(knode)
            if allowed is not None and name not in allowed:
                self.err(knode, path, unknown_key_message(name, allowed, hints or {}))
                continue
            out[name] = (knode, vnode)
        return out

    def seq(self, node: Node, key: str, what: str, plural: str = "") -> list[Node] | None:
        """The items of a non-empty list (a scalar gets a "write it as a list" hint)."""
        plural = plural or what + "s"
        if isinstance(node, SequenceNode):
            if not node.value:
                self.err(
                    node,
                    key,
                    f"empty list: list at least one {what}, or remove the key to get the default",
                )
                return None
            return list(node.value)
        hint = ""
        if isinstance(node, ScalarNode) and node.tag != NULL:
            hint = f": write it as a list, e.g. [{node.value}]"
        self.err(node, key, f"expected a list of {plural}, got {describe(node)}{hint}")
        return None

    def unique[T: Hashable](
        self,
        nodes: list[Node],
        key: str,
        single: bool,
        parse: Callable[[Node, str], T | None],
        shown: Callable[[T, Node], str],
    ) -> list[tuple[T, int, str]]:
        """Each item parsed, in order, as (value, line, key); a value listed twice is an
        error that `shown(value, item)` names. `single`: the items stand for one key."""
        out: list[tuple[T, int, str]] = []
        first: dict[T, str] = {}
        for index, item in enumerate(nodes):
            item_key = key if single else f"{key}[{index}]"
            value = parse(item, item_key)
            if value is None:
                continue
            if value in first:
                self.err(
                    item, item_key, f"{shown(value, item)} is listed twice (also {first[value]})"
                )
                continue
            first[value] = item_key
            out.append((value, line(item), item_key))
        return out

    def string(self, node: Node, key: str, what: str = "a string") -> str | None:
        if isinstance(node, ScalarNode) and node.tag == STR:
            return str(node.value)
        self.err(node, key, f"expected {what}, got {describe(node)}{quote_hint(node)}")
        return None
