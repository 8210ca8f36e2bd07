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


# Cloud domains whose subdomains anyone can create (buckets, functions, API gateways,
# Azure resources) although the Public Suffix List does not list the domain itself.
MULTI_TENANT_DOMAINS = frozenset(
    {
        "amazonaws.com",
        "aws",
        "azure.com",  # <resource>.openai.azure.com, .cognitiveservices.azure.com, ...
        "azure.net",
        "windows.net",
        "cloudapp.net",
        "googleapis.com",
        "googleusercontent.com",
        "appspot.com",
        "cloudfunctions.net",
        "run.app",
        "cloudflare.net",
        "oraclecloud.com",
        "aliyuncs.com",
    }
)


def shared_domain(name: str) -> str | None:
    """Why names under `name` belong to many owners, or None when one owner holds them.

    A public suffix (private section included: `s3.amazonaws.com`, `herokuapp.com`),
    or a name at or under a multi-tenant cloud domain (`amazonaws.com`,
    `openai.azure.com`).
    """
    if _PSL.is_public(name):
        return f"{name} is a public suffix: anyone can register a name under it"
    labels = name.split(".")
    for index in range(len(labels)):
        parent = ".".join(labels[index:])
        if parent in MULTI_TENANT_DOMAINS:
            where = "" if parent == name else f" under {parent}"
            return f"{name} is{where} a multi-tenant cloud domain: anyone can create a resource"
    return None
