"""Registrable domains: the part of a name that whoever controls it had to register.

From the Public Suffix List, as the `publicsuffixlist` package carries it offline
(private suffixes included, so `victim.herokuapp.com` and `attacker.herokuapp.com` are
two domains). Used to group alerts and to count DNS subnames per domain. Pure: the
list is read once, at import.
"""

from __future__ import annotations

from publicsuffixlist import PublicSuffixList

_PSL = PublicSuffixList()


def registrable_domain(name: str) -> str:
    """eTLD+1 of a normalized name (lower case, no trailing dot).

    A name that is itself a public suffix (`com`, `x.compute.amazonaws.com`) is its own
    registrable domain; so is a single label such as `localhost`.
    """
    if not name:
        return name
    return _PSL.privatesuffix(name) or name
