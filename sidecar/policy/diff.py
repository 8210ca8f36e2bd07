"""`egress-sidecar policy diff OLD NEW`: what a policy change opens and closes, and its risks.

Both sides are loaded strictly (every file merged, overrides applied) and compared
entry by entry (rule ids: `providers.NAME`, `allow.NAME`, `allow[i]`): hosts, CIDRs,
ports, paths, methods, `addresses:`, credentials, body limits, any other key an entry
or the policy carries, and the mode. Risky additions are flagged with a stable id:

- `wildcard_shared_domain`: a new `*.suffix` whose suffix is a public suffix or under
  a multi-tenant cloud domain (`*.amazonaws.com`, `*.openai.azure.com`): anyone can
  own a name under it.
- `credential_moved_provider`: a secret now bound to another provider than before.
- `credential_onto_allow_host`: a key-bearing provider now lists a host that was an
  `allow:` destination.
- `credential_new_domain`: a key-bearing provider gains a host in a registrable domain
  it did not list before (the key goes somewhere new: a look-alike?).
- `special_address_range`: a new `addresses:` or `cidr:` range touching loopback,
  link-local/metadata, private, CGNAT or other non-public ranges.
- `mode_audit`: the mode switched from enforce to audit.

Exit 0 when nothing is flagged, 1 when something is, 2 when a side cannot be loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterable
from typing import Any

from sidecar.netguard import AddressClass, classes_within
from sidecar.policy.errors import PolicyError
from sidecar.policy.explain import describe_endpoint
from sidecar.policy.loader import load_policy
from sidecar.policy.model import Endpoint, IPNetwork, Mode, Policy

OPENS, CLOSES, CHANGES = "opens", "closes", "changes"
_SKIPPED_POLICY_FIELDS = {"endpoints", "files", "digest", "mode", "mode_source", "removed"}
_SKIPPED_ENDPOINT_FIELDS = {"rule", "source", "provider", "tls_required"}


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    kind: str  # OPENS | CLOSES | CHANGES
    rule: str
    what: str
    source: str  # file:line of the entry (new side for opens/changes, old for closes)


@dataclasses.dataclass(frozen=True, slots=True)
class Risk:
    flag: str
    rule: str
    message: str
    source: str


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyDiff:
    changes: tuple[Change, ...]
    risks: tuple[Risk, ...]

    def of(self, kind: str) -> list[Change]:
        return [c for c in self.changes if c.kind == kind]


def _paths(endpoint: Endpoint) -> set[str]:
    return set(endpoint.paths.exact) | {p + "*" for p in endpoint.paths.prefixes}


def _methods(endpoint: Endpoint) -> set[str]:
    return {"any"} if endpoint.methods is None else set(endpoint.methods)


def _covered(label: str, item: str, other: Endpoint) -> bool:
    """Whether the other side already lets `item` through (so it opens or closes nothing)."""
    if label == "method":
        return other.methods is None
    if label == "path":
        base = item.removesuffix("*")
        exact = not item.endswith("*") and base in other.paths.exact
        return exact or any(base.startswith(prefix) for prefix in other.paths.prefixes)
    return False


# key -> (label, the entry's items as text)
_ITEM_FIELDS: dict[str, tuple[str, Any]] = {
    "hosts": ("host", lambda e: set(e.hosts)),
    "cidrs": ("cidr", lambda e: {str(c) for c in e.cidrs}),
    "ports": ("port", lambda e: {str(p) for p in e.ports}),
    "paths": ("path", _paths),
    "methods": ("method", _methods),
    "addresses": ("addresses", lambda e: {str(a) for a in e.addresses}),
}


def compare(old: Policy, new: Policy) -> PolicyDiff:
    changes: list[Change] = []
    risks: list[Risk] = []
    if old.mode is not new.mode:
        where = str(new.mode_source) if new.mode_source else "(default)"
        kind = OPENS if new.mode is Mode.AUDIT else CLOSES
        changes.append(Change(kind, "mode", f"mode {old.mode} -> {new.mode}", where))
        if new.mode is Mode.AUDIT:
            risks.append(
                Risk(
                    "mode_audit",
                    "mode",
                    "mode switched to audit: policy refusals "
                    "are only logged (would_block) and let through",
                    where,
                )
            )
    for field in dataclasses.fields(Policy):
        if field.name not in _SKIPPED_POLICY_FIELDS:
            before, after = getattr(old, field.name), getattr(new, field.name)
            if before != after:
                changes.append(Change(CHANGES, field.name, f"{before!r} -> {after!r}", "policy"))
    olds = {e.rule: e for e in old.endpoints}
    news = {e.rule: e for e in new.endpoints}
    for rule, entry in news.items():
        before = olds.get(rule)
        if before is None:
            changes.append(
                Change(OPENS, rule, f"new entry: {describe_endpoint(entry)}", str(entry.source))
            )
        else:
            _entry_changes(before, entry, changes)
        risks.extend(_entry_risks(old, before, entry))
    removed_by = {r.rule: r.by for r in new.removed}
    for rule, entry in olds.items():
        if rule not in news:
            how = f"removed by {removed_by[rule]}" if rule in removed_by else "entry removed"
            what = f"{how}: {describe_endpoint(entry)}"
            changes.append(Change(CLOSES, rule, what, str(entry.source)))
    return PolicyDiff(tuple(changes), tuple(risks))


def _entry_changes(old: Endpoint, new: Endpoint, out: list[Change]) -> None:
    """Item by item, for an entry both sides have (closes cite the old side's line)."""
    source, old_source = str(new.source), str(old.source)
    for label, items in _ITEM_FIELDS.values():
        before, after = items(old), items(new)
        for item in sorted(after - before):
            if not _covered(label, item, old):
                out.append(Change(OPENS, new.rule, f"{label} {item}", source))
        for item in sorted(before - after):
            if not _covered(label, item, new):
                out.append(Change(CLOSES, new.rule, f"{label} {item}", old_source))
    if old.credential != new.credential:
        if new.credential is None:
            out.append(Change(CLOSES, new.rule, "credential removed", old_source))
        elif old.credential is None:
            out.append(
                Change(
                    OPENS,
                    new.rule,
                    f"credential {new.credential.secret!r} added as {new.credential.header}",
                    source,
                )
            )
        else:
            out.append(
                Change(CHANGES, new.rule, f"credential {_cred(old)} -> {_cred(new)}", source)
            )
    handled = set(_ITEM_FIELDS) | _SKIPPED_ENDPOINT_FIELDS | {"credential"}
    for field in dataclasses.fields(Endpoint):
        if field.name in handled:
            continue
        before, after = getattr(old, field.name), getattr(new, field.name)
        if before != after:
            out.append(Change(CHANGES, new.rule, f"{field.name} {before!r} -> {after!r}", source))


def _cred(entry: Endpoint) -> str:
    spec = entry.credential
    return "none" if spec is None else f"{spec.secret!r} as {spec.header}: {spec.format}"


def _entry_risks(old_policy: Policy, old: Endpoint | None, new: Endpoint) -> Iterable[Risk]:
    # Imported here: the Public Suffix List takes a quarter second to read, and every
    # command's parser (`policy check` too) imports this module.
    from sidecar.domains import registrable_domain, shared_domain

    source = str(new.source)
    old_hosts = set(old.hosts) if old else set()
    for host in new.hosts:
        if host.startswith("*.") and host not in old_hosts:
            why = shared_domain(host[2:])
            if why:
                yield Risk(
                    "wildcard_shared_domain",
                    new.rule,
                    f"{host!r}: {why}; list the exact names you own",
                    source,
                )
    new_ranges: list[tuple[str, IPNetwork]] = [
        *(("cidr", c) for c in new.cidrs if not old or c not in old.cidrs),
        *(("addresses", a) for a in new.addresses if not old or a not in old.addresses),
    ]
    for key, network in new_ranges:
        classes = classes_within(network) - {AddressClass.PUBLIC}
        if classes:
            names = ", ".join(sorted(c.value for c in classes))
            yield Risk(
                "special_address_range",
                new.rule,
                f"{key} {network} includes {names} addresses",
                source,
            )
    if new.credential is None:
        return
    secret = new.credential.secret
    for before in old_policy.endpoints:
        spec = before.credential
        if spec is not None and spec.secret == secret and before.provider != new.provider:
            yield Risk(
                "credential_moved_provider",
                new.rule,
                f"secret {secret!r} was bound to {before.rule} ({before.source}); now "
                f"to {new.rule}",
                source,
            )
    allow_hosts = {h: e for e in old_policy.endpoints if e.provider is None for h in e.hosts}
    for host in new.hosts:
        if host in allow_hosts:
            yield Risk(
                "credential_onto_allow_host",
                new.rule,
                f"{host!r} was an allow: destination ({allow_hosts[host].rule}); "
                f"now it gets secret {secret!r}",
                source,
            )
    if old is not None and old.credential is not None:
        domains = {registrable_domain(h.removeprefix("*.")) for h in old.hosts}
        for host in new.hosts:
            domain = registrable_domain(host.removeprefix("*."))
            if host not in old_hosts and domain not in domains:
                yield Risk(
                    "credential_new_domain",
                    new.rule,
                    f"{host!r} gets secret {secret!r}, and {domain} is a domain this "
                    f"provider did not list before ({', '.join(sorted(domains))})",
                    source,
                )


# --- rendering -------------------------------------------------------------------------


_MARKS = {OPENS: "+", CLOSES: "-", CHANGES: "~"}


def render_text(diff: PolicyDiff, old: Policy, new: Policy) -> str:
    lines = [f"policy diff: {_side(old)} -> {_side(new)}"]
    for kind in (OPENS, CLOSES, CHANGES):
        found = diff.of(kind)
        if found:
            lines.append(f"{kind}:")
            lines.extend(f"  {_MARKS[kind]} {c.rule}: {c.what}  ({c.source})" for c in found)
    if diff.risks:
        lines.append(f"risky ({len(diff.risks)}):")
        lines.extend(f"  ! [{r.flag}] {r.rule}: {r.message}  ({r.source})" for r in diff.risks)
    lines.append(_counts(diff))
    return "\n".join(lines)


def render_markdown(diff: PolicyDiff, old: Policy, new: Policy) -> str:
    verdict = f"**{len(diff.risks)} risky**" if diff.risks else "no risk flags"
    lines = [
        "### Egress policy change",
        "",
        f"{_side(old)} → {_side(new)}: {_counts(diff)}; {verdict}.",
    ]
    if diff.risks:
        lines += [
            "",
            "#### :warning: Risky",
            "",
            "| flag | entry | why | where |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{r.flag}` | `{r.rule}` | {_md(r.message)} | `{r.source}` |" for r in diff.risks
        ]
    titles = {OPENS: "Opens", CLOSES: "Closes", CHANGES: "Changes"}
    for kind in (OPENS, CLOSES, CHANGES):
        found = diff.of(kind)
        if found:
            lines += ["", f"#### {titles[kind]}", ""]
            lines += [f"- `{c.rule}`: {_md(c.what)} (`{c.source}`)" for c in found]
    if not diff.changes:
        lines += ["", "No change to what the gateway may reach."]
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def _side(policy: Policy) -> str:
    count = len(policy.files)
    return f"{count} file{'s' if count != 1 else ''} (mode {policy.mode})"


def _counts(diff: PolicyDiff) -> str:
    return ", ".join(f"{len(diff.of(k))} {k}" for k in (OPENS, CLOSES, CHANGES))


# --- command ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", metavar="OLD", help="the policy before: a file or directory")
    parser.add_argument("new", metavar="NEW", help="the policy after: a file or directory")
    parser.add_argument(
        "--old",
        dest="more_old",
        action="append",
        default=[],
        metavar="PATH",
        help="another file or directory of the old policy (repeatable)",
    )
    parser.add_argument(
        "--new",
        dest="more_new",
        action="append",
        default=[],
        metavar="PATH",
        help="another file or directory of the new policy (repeatable)",
    )
    parser.add_argument(
        "--markdown", action="store_true", help="Markdown for a pull-request comment"
    )


def main(args: argparse.Namespace) -> int:
    sides: list[Policy] = []
    for label, paths in (("OLD", [args.old, *args.more_old]), ("NEW", [args.new, *args.more_new])):
        try:
            sides.append(load_policy(paths))
        except PolicyError as exc:
            print(f"{label} policy cannot be loaded:", file=sys.stderr)
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            return 2
    old, new = sides
    diff = compare(old, new)
    render = render_markdown if args.markdown else render_text
    print(render(diff, old, new))
    return 1 if diff.risks else 0
