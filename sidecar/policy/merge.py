"""Checking policy files against each other, then building the one `Policy`.

Each file is read on its own (`sidecar/policy/entries.py`); here the entries of all
files meet: one mode, unique names, a host or address owned by one entry (wildcards
and CIDR overlaps included), a secret bound to one provider. All problems are
collected and raised together.

Pure: no mitmproxy, no network.
"""

from __future__ import annotations

import dataclasses
import hashlib

from yaml.nodes import Node

from sidecar import yamlfile
from sidecar.hostnames import wildcard_parents
from sidecar.policy import overrides
from sidecar.policy.dlp import DlpRules, one_top_level_dlp
from sidecar.policy.entries import POLICY_VERSION, EntryDraft, FileReader
from sidecar.policy.errors import PolicyError, Problem
from sidecar.policy.model import IPNetwork, Mode, Policy, SourceRef
from sidecar.policy.usage_limits import UsagePolicy, merge_usage_limits


@dataclasses.dataclass(slots=True)
class HostRef:
    entry: int  # index of the entry in load order
    rule: str
    file: str
    line: int
    key: str

    def where(self) -> str:
        return f"{self.file}:{self.line} ({self.key})"


class Merger:
    """Reads files in order, then checks them against each other."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.drafts: list[EntryDraft] = []
        self.files: list[str] = []
        self.digest = hashlib.sha256()
        self.modes: list[tuple[Mode, str, int]] = []
        self.overrides: list[overrides.FileOverrides] = []
        self.usages: list[UsagePolicy] = []
        self.dlp: list[DlpRules] = []  # top-level `dlp:` sections: at most one

    def add_file(self, file: str, data: bytes) -> None:
        self.files.append(file)
        # Length-framed so that moving bytes from one file to the next changes the digest.
        self.digest.update(len(data).to_bytes(8, "big"))
        self.digest.update(data)
        root = self._compose(file, data)
        if root is None:
            return
        reader = FileReader(file, self.problems)
        reader.read(root)
        self.drafts.extend(reader.drafts)
        if reader.mode is not None:
            self.modes.append((reader.mode[0], file, reader.mode[1]))
        if reader.overrides is not None:
            self.overrides.append(reader.overrides)
        if reader.usage is not None:
            self.usages.append(reader.usage)
        if reader.dlp is not None:
            self.problems.extend(one_top_level_dlp(self.dlp, reader.dlp))
            self.dlp.append(reader.dlp)

    def _compose(self, file: str, data: bytes) -> Node | None:
        empty = f"empty file: a policy file starts with 'version: {POLICY_VERSION}'"
        return yamlfile.compose(file, data, self.problems, empty=empty)

    def finish(self) -> Policy:
        self.drafts, applied = overrides.apply(self.drafts, self.overrides, self.problems)
        if applied.mode is None:
            self._check_modes()
        self._check_names()
        self._check_hosts()
        self._check_cidrs()
        self._check_secrets()
        providers = {d.provider for d in self.drafts if d.provider}
        usage = merge_usage_limits(self.usages, providers, self.problems)
        if self.problems:
            order = {f: i for i, f in enumerate(self.files)}
            self.problems.sort(key=lambda p: (order.get(p.file, -1), p.line))
            raise PolicyError(self.problems)
        mode = self.modes[0][0] if self.modes else Mode.ENFORCE
        mode_source = SourceRef(self.modes[0][1], self.modes[0][2]) if self.modes else None
        endpoints = tuple(d.endpoint for d in self.drafts if d.endpoint is not None)
        return Policy(
            mode=applied.mode[0] if applied.mode else mode,
            endpoints=endpoints,
            files=tuple(self.files),
            digest=self.digest.hexdigest(),
            mode_source=applied.mode[1] if applied.mode else mode_source,
            removed=applied.removed,
            usage=usage,
            dlp=self.dlp[0] if self.dlp else None,
        )

    def _conflict(self, file: str, line: int, key: str, message: str) -> None:
        self.problems.append(Problem(file, line, key, message))

    def _check_modes(self) -> None:
        if not self.modes:
            return
        mode, file, line = self.modes[0]
        for other, other_file, other_line in self.modes[1:]:
            if other != mode:
                self._conflict(
                    other_file,
                    other_line,
                    "mode",
                    f"mode {other.value!r} conflicts with mode {mode.value!r} at {file}:{line}; "
                    "all files must agree (or leave 'mode' out)",
                )

    def _check_names(self) -> None:
        first: dict[str, EntryDraft] = {}
        for draft in self.drafts:
            if draft.rule.startswith("allow["):
                continue  # index-named entries cannot collide by name within a file
            if draft.rule in first:
                other = first[draft.rule]
                what = "provider" if draft.provider else "allow entry name"
                self._conflict(
                    draft.source.file,
                    draft.name_line,
                    draft.key if draft.provider else f"{draft.key}.name",
                    f"{what} {draft.rule.split('.', 1)[1]!r} is also defined at "
                    f"{other.source.file}:{other.name_line}; each name must be unique",
                )
                continue
            first[draft.rule] = draft

    def _check_hosts(self) -> None:
        owner: dict[str, HostRef] = {}
        refs: list[tuple[str, HostRef]] = []
        for index, draft in enumerate(self.drafts):
            for host, line, key in draft.hosts:
                ref = HostRef(index, draft.rule, draft.source.file, line, key)
                if host in owner and owner[host].entry != index:
                    self._conflict(
                        ref.file,
                        ref.line,
                        ref.key,
                        f"host {host!r} is also listed by {owner[host].rule} at "
                        f"{owner[host].where()}; a host belongs to one entry: merge them",
                    )
                    continue
                owner.setdefault(host, ref)
                refs.append((host, ref))
        wildcards = {h[2:]: ref for h, ref in owner.items() if h.startswith("*.")}
        for host, ref in refs:
            base = host[2:] if host.startswith("*.") else host
            for parent in wildcard_parents(base):
                wild = wildcards.get(parent)
                if wild is not None and wild.entry != ref.entry:
                    self._conflict(
                        ref.file,
                        ref.line,
                        ref.key,
                        f"{host!r} is also covered by '*.{parent}' of {wild.rule} at "
                        f"{wild.where()}; a host belongs to one entry: narrow the wildcard "
                        "or merge the entries",
                    )
                    break

    def _check_cidrs(self) -> None:
        seen: list[tuple[IPNetwork, HostRef]] = []
        for index, draft in enumerate(self.drafts):
            for net, line, key in draft.cidrs:
                ref = HostRef(index, draft.rule, draft.source.file, line, key)
                for other, other_ref in seen:
                    if other_ref.entry == index or other.version != net.version:
                        continue
                    if net.overlaps(other):
                        how = "is also listed" if net == other else f"overlaps {other}"
                        self._conflict(
                            ref.file,
                            ref.line,
                            ref.key,
                            f"{net} {how} by {other_ref.rule} at {other_ref.where()}; "
                            "an address belongs to one entry: merge them",
                        )
                        break
                seen.append((net, ref))

    def _check_secrets(self) -> None:
        first: dict[str, EntryDraft] = {}
        for draft in self.drafts:
            if draft.secret is None:
                continue
            name, line, key = draft.secret
            if name in first:
                other = first[name]
                assert other.secret is not None
                self._conflict(
                    draft.source.file,
                    line,
                    key,
                    f"secret {name!r} is already bound to {other.rule} at "
                    f"{other.source.file}:{other.secret[1]}; a key is sent only to its own "
                    "provider's hosts, so each provider needs its own secret",
                )
                continue
            first[name] = draft
