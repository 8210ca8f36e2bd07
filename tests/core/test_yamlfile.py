"""The shared reader of user-written YAML (policy, alerts config, virtual keys)."""

from __future__ import annotations

import pytest

from sidecar import yamlfile
from sidecar.yamlfile import Problem


def read(text: bytes, allowed: tuple[str, ...] | None = ("a", "b", "nested")) -> list[str]:
    problems: list[Problem] = []
    root = yamlfile.compose("f.yaml", text, problems, empty="empty file: write 'a: 1'")
    if root is not None:
        reader = yamlfile.YamlChecker("f.yaml", problems)
        top = reader.mapping(root, "", allowed)
        if top and "nested" in top:
            reader.mapping(top["nested"][1], "nested", None)
    return [str(p) for p in problems]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"a: 1\nb: 2\n", []),
        (
            b"a: 1\nb: 2\na: 3\n",
            [
                "f.yaml:3: a: duplicate key (first at line 1); YAML would silently keep only "
                "the last one: merge them into one"
            ],
        ),
        (
            b"nested:\n  x: 1\n  y: 2\n  x: 3\n",
            [
                "f.yaml:4: nested.x: duplicate key (first at line 2); YAML would silently keep "
                "only the last one: merge them into one"
            ],
        ),
        (b"c: 1\n", ["f.yaml:1: c: unknown key 'c': allowed keys are a, b, nested"]),
        (b"nestd: 1\n", ["f.yaml:1: nestd: unknown key 'nestd': did you mean 'nested'?"]),
        (
            b"base: &x {a: 1}\n<<: *x\n",
            [
                "f.yaml:1: base: unknown key 'base': allowed keys are a, b, nested",
                "f.yaml:2: <<: YAML merge keys ('<<') are not supported: write keys out",
            ],
        ),
        (b"", ["f.yaml:1: empty file: write 'a: 1'"]),
        (b"a: 1\nb: \xff\n", ["f.yaml:2: the file is not valid UTF-8"]),
        (
            b"a: [1,\n",
            [
                "f.yaml:2: YAML syntax error: while parsing a flow node "
                "expected the node content, but found '<stream end>'"
            ],
        ),
        (b"a: 1\nb: \x07\n", ["f.yaml:2: character '\\x07' is not allowed in a YAML file"]),
        (b"[1, 2]\n", ["f.yaml:1: expected a mapping (key: value), got a list"]),
    ],
)
def test_reader_keeps_lines_refuses_duplicates_and_unknown_keys(
    text: bytes, expected: list[str]
) -> None:
    assert read(text) == expected


def test_every_problem_of_a_file_is_collected() -> None:
    found = read(b"a: 1\nzz: 2\na: 3\nnested: {q: 1, q: 2}\n")
    assert [p.split(": ")[0] for p in found] == ["f.yaml:2", "f.yaml:3", "f.yaml:4"]


def test_problem_is_one_line_whatever_the_key() -> None:
    problem = Problem("f.yaml", 2, "evil\nkey", "bad\rvalue")
    assert str(problem) == "f.yaml:2: evil\\nkey: bad\\rvalue"
    assert str(Problem("f.yaml", 0, "", "cannot read file")) == "f.yaml: cannot read file"
