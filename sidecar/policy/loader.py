"""Strict policy loader: YAML files -> one `Policy`, or a `PolicyError` listing every problem.

The public entry points. Finding the files is here; reading one file is
`sidecar/policy/entries.py` (single values: `values.py`), checking the files against
each other is `merge.py`, and the YAML layer shared with the other files a user
writes is `sidecar/yamlfile.py`.

Pure: no mitmproxy, no network (it reads the files it is given).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sidecar.netguard import METADATA_NETWORKS
from sidecar.policy.entries import DEFAULT_PROVIDER_METHODS, DEFAULT_PROVIDER_PORTS, POLICY_VERSION
from sidecar.policy.errors import PolicyError, Problem
from sidecar.policy.merge import Merger
from sidecar.policy.model import Policy
from sidecar.policy.values import ALLOWED_METHODS, FORBIDDEN_CREDENTIAL_HEADERS

__all__ = [
    "ALLOWED_METHODS",
    "DEFAULT_PROVIDER_METHODS",
    "DEFAULT_PROVIDER_PORTS",
    "FORBIDDEN_CREDENTIAL_HEADERS",
    "METADATA_NETWORKS",
    "POLICY_VERSION",
    "PolicyError",
    "Problem",
    "find_policy_files",
    "load_policy",
    "load_policy_bytes",
]


# --- public API ------------------------------------------------------------------------


def load_policy(paths: Sequence[str | Path]) -> Policy:
    """Load and merge the policy files at `paths` (files or directories).

    A directory contributes its `*.yaml` / `*.yml` files in sorted order, not
    recursively, skipping names that start with "." (a Kubernetes ConfigMap mount's
    `..data` and `..2024_...` entries); visible symlinks are followed. Raises
    `PolicyError` listing every problem found.
    """
    files = find_policy_files(paths)
    sources: list[tuple[str, bytes]] = []
    problems: list[Problem] = []
    for path in files:
        try:
            sources.append((str(path), path.read_bytes()))
        except OSError as exc:
            problems.append(Problem(str(path), 0, "", f"cannot read file: {_os_reason(exc)}"))
    if problems:
        raise PolicyError(problems)
    return load_policy_bytes(sources)


def load_policy_bytes(sources: Sequence[tuple[str, bytes]]) -> Policy:
    """Load a policy from (file name, content) pairs, in that order."""
    if not sources:
        raise PolicyError([Problem("<policy>", 0, "", "no policy files given")])
    merger = Merger()
    for name, data in sources:
        merger.add_file(name, data)
    return merger.finish()


def find_policy_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files `load_policy(paths)` reads, in load order (for reload watchers too)."""
    files: list[Path] = []
    problems: list[Problem] = []
    seen: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw)
        found: list[Path] = []
        if path.is_dir():
            try:
                names = sorted(os.listdir(path))
            except OSError as exc:
                problems.append(Problem(str(path), 0, "", f"cannot list: {_os_reason(exc)}"))
                continue
            for name in names:
                child = path / name
                if name.startswith(".") or not name.endswith((".yaml", ".yml")):
                    continue
                if child.is_file():
                    found.append(child)
        elif path.is_file():
            found.append(path)
        elif path.exists() or path.is_symlink():
            reason = "dangling symlink" if path.is_symlink() and not path.exists() else None
            problems.append(Problem(str(path), 0, "", reason or "not a regular file or directory"))
            continue
        else:
            problems.append(Problem(str(path), 0, "", "no such file or directory"))
            continue
        for file in found:
            key = os.path.realpath(file)
            if key in seen:
                problems.append(
                    Problem(str(file), 0, "", f"same file as {seen[key]}: each file is loaded once")
                )
                continue
            seen[key] = file
            files.append(file)
    if not problems and not files:
        shown = ", ".join(str(p) for p in paths) or "<nothing>"
        problems.append(Problem(shown, 0, "", "no *.yaml or *.yml policy files found"))
    if problems:
        raise PolicyError(problems)
    return files


# --- internals -------------------------------------------------------------------------


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
