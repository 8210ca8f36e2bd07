"""Headers and query parameters as the credential code reads them.

`MultiMap` is what the code needs from a multi-valued map: mitmproxy's `Headers`
(case-insensitive names) and `Request.query` (case-sensitive) satisfy it as they are,
and `inject.HeaderList` stands in for them outside mitmproxy.

`by_name` and `values_of` read every field once. Looping over the names and calling `get_all(name)`
for each compares every field's folded name once per name (quadratic in the number of
fields: about 300 folds per request through the sidecar, issue 17).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

__all__ = ["MultiMap", "by_name", "fold_name", "values_of"]


class MultiMap(Protocol):
    """`__iter__` yields each name once (as first written); `set_all(name, [])` removes
    every value; `items(multi=True)` yields every (name, value) field in order."""

    def __iter__(self) -> Iterator[str]: ...

    def get_all(self, name: str) -> list[str]: ...

    def set_all(self, name: str, values: list[str]) -> None: ...

    def items(self, multi: bool = ...) -> Iterable[tuple[str, str]]: ...


def fold_name(name: str) -> str:
    """A header name as mitmproxy's `Headers` compares it: its bytes lower-cased, so
    only ASCII letters fold. `str.lower()` folds more (the Kelvin sign U+212A is "k"):
    grouping by it would merge two names mitmproxy keeps apart, and `set_all` on the
    first would leave the second (a key as a response header name) in place."""
    return (
        name.lower()
        if name.isascii()
        else name.encode("utf-8", "surrogateescape").lower().decode("utf-8", "surrogateescape")
    )


def by_name(fields: MultiMap, *, fold_case: bool = True) -> list[tuple[str, list[str]]]:
    """(name as first written, every value of that name in order), one entry per name,
    in order of first appearance: what `[(n, fields.get_all(n)) for n in fields]` gives,
    in one pass. `fold_case`: names are case-insensitive (headers, not a query)."""
    grouped: dict[str, tuple[str, list[str]]] = {}
    for name, value in fields.items(multi=True):
        key = fold_name(name) if fold_case else name
        entry = grouped.get(key)
        if entry is None:
            grouped[key] = (name, [value])
        else:
            entry[1].append(value)
    return list(grouped.values())


def values_of(fields: MultiMap, names: tuple[str, ...]) -> tuple[list[str], ...]:
    """`tuple(fields.get_all(name) for name in names)` for case-insensitive fields, in
    one pass: each `get_all` folds every field's name (issue 17). `names` are given
    lower-case ASCII (header names as this code spells them)."""
    raw = getattr(fields, "fields", None)
    if isinstance(raw, tuple):
        # mitmproxy's `Headers`: (bytes, bytes) pairs, names compared lower-cased as
        # bytes and values read as UTF-8 with surrogate escapes, as its `get_all` does;
        # a third of the time of the `str` pass below.
        found: dict[bytes, list[bytes]] = {name.encode(): [] for name in names}
        for key, value in raw:
            hits = found.get(key.lower())
            if hits is not None:
                hits.append(value)
        return tuple(
            [v.decode("utf-8", "surrogateescape") for v in found[name.encode()]] for name in names
        )
    wanted: dict[str, list[str]] = {name: [] for name in names}
    for name, value in fields.items(multi=True):
        values = wanted.get(fold_name(name))
        if values is not None:
            values.append(value)
    return tuple(wanted[name] for name in names)
