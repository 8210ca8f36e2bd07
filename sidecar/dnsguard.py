"""DNS tunnel detector: pure, no network, bounded memory.

The DNS listener feeds every question the pod asks (allowed or refused) to
`DnsTunnelDetector.observe`, which says whether it looks like tunnelling and why.
Refusing unlisted names already stops data reaching an attacker's authoritative
server; this detector is what turns the attempt into an alert (S9), because a
tunnel that is refused still shows who tried.

Per-question rules (no state):

* ``long_label``: a label longer than ``max_label_len`` (40). Encoders fill labels
  to the 63-byte limit; real host names rarely pass 30.
* ``high_entropy_label``: a label of at least ``entropy_min_label_len`` (24) whose
  Shannon entropy (lower-cased) is at least ``entropy_threshold`` (4.4 bits/char).
  Joined English/service words stay below ~4.33 at every length, random base32 or
  base64 of 40+ characters mostly above; shorter random labels are left to the
  window rules (entropy cannot tell them from words).
* ``hex_label``: a label of at least ``hex_min_label_len`` (24) made only of hex
  digits with both digits and letters (dnscat2-style).
* ``long_name``: the whole name is at least ``max_name_len`` (160) characters; the
  DNS limit is 253 and encoders go near it.

Window rules (bounded state, sliding window of ``window_seconds``):

* ``many_subnames``: at least ``max_unique_subnames`` (50) distinct names under one
  registrable domain (`base_domain`, the Public Suffix List).
* ``rare_qtype_burst``: at least ``max_rare_qtypes`` (10) TXT/NULL/ANY/PRIVATE
  questions from one client.
* ``domain_spray``: at least ``max_new_domains`` (200) base domains first seen from
  one client: the counters are LRU-capped, so spraying unique domains to evict a
  tunnel's counter is itself flagged.

Memory: at most ``max_tracked_domains`` domains (each remembering at most
``max_unique_subnames`` subname hashes) and ``max_tracked_clients`` clients (each at
most two deques capped at their thresholds), evicted least recently used.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from sidecar.domains import registrable_domain
from sidecar.entropy import shannon_entropy

# Query type numbers (RFC 1035 and successors); names accepted by `qtype_number`.
QTYPES: dict[str, int] = {
    "A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "NULL": 10, "HINFO": 13, "PTR": 12, "MX": 15,
    "TXT": 16, "AAAA": 28, "SRV": 33, "NAPTR": 35, "DNSKEY": 48, "SVCB": 64, "HTTPS": 65,
    "ANY": 255, "CAA": 257, "PRIVATE": 65399,
}  # fmt: skip

_HEX = frozenset("0123456789abcdef")


def qtype_number(qtype: int | str) -> int:
    if isinstance(qtype, int):
        return qtype
    name = qtype.upper()
    if name in QTYPES:
        return QTYPES[name]
    if name.startswith("TYPE") and name[4:].isdigit():  # RFC 3597 spelling
        return int(name[4:])
    raise ValueError(f"unknown DNS query type {qtype!r}")


@dataclasses.dataclass(frozen=True)
class DnsGuardConfig:
    max_label_len: int = 40
    max_name_len: int = 160
    entropy_min_label_len: int = 24
    entropy_threshold: float = 4.4
    hex_min_label_len: int = 24
    window_seconds: float = 60.0
    max_unique_subnames: int = 50
    rare_qtypes: frozenset[int] = frozenset({10, 16, 255, 65399})  # NULL TXT ANY PRIVATE
    max_rare_qtypes: int = 10
    max_new_domains: int = 200
    max_tracked_domains: int = 4096
    max_tracked_clients: int = 1024
    # Suffixes the Public Suffix List does not know, under which each next label is a
    # domain of its own: every Kubernetes namespace counts as its own domain.
    multi_label_suffixes: tuple[str, ...] = (
        "svc.cluster.local",
        "cluster.local",
        "compute.internal",
    )
    # Names under these suffixes are never flagged nor tracked (e.g. the policy's
    # own provider domains, if their alerts are not wanted). Empty by default.
    exempt_suffixes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in (
            "max_label_len", "max_name_len", "entropy_min_label_len", "hex_min_label_len",
            "max_unique_subnames", "max_rare_qtypes", "max_new_domains",
            "max_tracked_domains", "max_tracked_clients",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.window_seconds <= 0:
            raise ValueError("window_seconds must be > 0")


@dataclasses.dataclass(frozen=True)
class TunnelFinding:
    rule: str  # long_label, high_entropy_label, hex_label, long_name, many_subnames, ...
    detail: str  # human-readable, safe to log: lengths, counts, a short escaped sample


@dataclasses.dataclass(frozen=True)
class TunnelVerdict:
    suspicious: bool
    findings: tuple[TunnelFinding, ...]
    base_domain: str  # the registrable-ish domain the question was counted under

    @property
    def rules(self) -> tuple[str, ...]:
        return tuple(f.rule for f in self.findings)

    @property
    def detail(self) -> str:
        return "; ".join(f"{f.rule}: {f.detail}" for f in self.findings)


def normalize_qname(qname: str) -> str:
    name = qname.strip().lower()
    return name[:-1] if name.endswith(".") else name


def _sample(label: str, limit: int = 20) -> str:
    """A short, escaped prefix of attacker-chosen text, safe for a log line."""
    shown = label[:limit].encode("ascii", "backslashreplace").decode("ascii")
    shown = "".join(c if c.isprintable() else "?" for c in shown)
    return shown + ("..." if len(label) > limit else "")


def _under(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def base_domain(name: str, multi_label_suffixes: Iterable[str] = ()) -> str:
    """Registrable domain of a normalized name: the Public Suffix List's eTLD+1, or,
    under one of `multi_label_suffixes` (local suffixes the list does not know; the
    longest wins), that suffix and one more label."""
    labels = name.split(".") if name else []
    suffix_len = 0
    for suffix in multi_label_suffixes:
        n = suffix.count(".") + 1
        if n > suffix_len and _under(name, suffix) and len(labels) > n:
            suffix_len = n
    if suffix_len:
        return ".".join(labels[-(suffix_len + 1) :])
    return registrable_domain(name)


class _Window:
    """Timestamps within the window, at most `cap` of them (older ones dropped)."""

    __slots__ = ("times",)

    def __init__(self, cap: int) -> None:
        self.times: deque[float] = deque(maxlen=cap)

    def add(self, now: float, window: float) -> int:
        self.times.append(now)
        while self.times and self.times[0] <= now - window:
            self.times.popleft()
        return len(self.times)


class _DomainState:
    __slots__ = ("subnames",)

    def __init__(self) -> None:
        self.subnames: OrderedDict[int, float] = OrderedDict()  # hash(subname) -> last seen

    def add(self, subname: str, now: float, window: float, cap: int) -> int:
        key = hash(subname)
        self.subnames[key] = now
        self.subnames.move_to_end(key)
        while self.subnames:
            oldest_key, seen = next(iter(self.subnames.items()))
            if seen > now - window and len(self.subnames) <= cap:
                break
            del self.subnames[oldest_key]
        return len(self.subnames)


class _ClientState:
    __slots__ = ("new_domains", "rare")

    def __init__(self, config: DnsGuardConfig) -> None:
        self.rare = _Window(config.max_rare_qtypes)
        self.new_domains = _Window(config.max_new_domains)


class DnsTunnelDetector:
    """Feed it every DNS question; it answers whether the question looks like a tunnel.

    Not thread-safe: call it from the event loop that serves DNS.
    """

    def __init__(self, config: DnsGuardConfig | None = None) -> None:
        self.config = config or DnsGuardConfig()
        self._domains: OrderedDict[str, _DomainState] = OrderedDict()
        self._clients: OrderedDict[str, _ClientState] = OrderedDict()
        self._suffixes = tuple(s.lower().strip(".") for s in self.config.multi_label_suffixes)
        self._exempt = tuple(s.lower().strip(".") for s in self.config.exempt_suffixes)

    @property
    def tracked_domains(self) -> int:
        return len(self._domains)

    @property
    def tracked_clients(self) -> int:
        return len(self._clients)

    def tracked_entries(self) -> int:
        """Every remembered item (domains, subname hashes, clients, timestamps)."""
        return (
            len(self._domains)
            + sum(len(d.subnames) for d in self._domains.values())
            + len(self._clients)
            + sum(len(c.rare.times) + len(c.new_domains.times) for c in self._clients.values())
        )

    def max_entries(self) -> int:
        """Upper bound of `tracked_entries` for this configuration."""
        c = self.config
        return c.max_tracked_domains * (1 + c.max_unique_subnames) + c.max_tracked_clients * (
            1 + c.max_rare_qtypes + c.max_new_domains
        )

    # --- the one entry point ---------------------------------------------------------

    def observe(
        self, qname: str, qtype: int | str, client: str, now: float | None = None
    ) -> TunnelVerdict:
        """Judge one question. `now` is a monotonic time in seconds (default: now)."""
        cfg = self.config
        if now is None:
            now = time.monotonic()
        name = normalize_qname(qname)
        base = base_domain(name, self._suffixes)
        if any(_under(name, s) for s in self._exempt):
            return TunnelVerdict(False, (), base)
        findings = self._static_findings(name)
        # window rules
        new_domain = base not in self._domains
        domain = self._lru(self._domains, base, _DomainState, cfg.max_tracked_domains)
        sub = name[: -len(base)].rstrip(".") if name != base else ""
        unique = domain.add(sub, now, cfg.window_seconds, cfg.max_unique_subnames)
        if unique >= cfg.max_unique_subnames:
            findings.append(
                TunnelFinding(
                    "many_subnames",
                    f"{unique} distinct names under {_sample(base, 60)} "
                    f"within {cfg.window_seconds:g}s (limit {cfg.max_unique_subnames})",
                )
            )
        state = self._lru(self._clients, client, lambda: _ClientState(cfg), cfg.max_tracked_clients)
        qnum = qtype_number(qtype)
        if qnum in cfg.rare_qtypes:
            count = state.rare.add(now, cfg.window_seconds)
            if count >= cfg.max_rare_qtypes:
                findings.append(
                    TunnelFinding(
                        "rare_qtype_burst",
                        f"{count} TXT/NULL/ANY-type questions from this client within "
                        f"{cfg.window_seconds:g}s (limit {cfg.max_rare_qtypes}; this one: {qnum})",
                    )
                )
        if new_domain:
            count = state.new_domains.add(now, cfg.window_seconds)
            if count >= cfg.max_new_domains:
                findings.append(
                    TunnelFinding(
                        "domain_spray",
                        f"{count} new domains from this client within {cfg.window_seconds:g}s "
                        f"(limit {cfg.max_new_domains})",
                    )
                )
        return TunnelVerdict(bool(findings), tuple(findings), base)

    # --- helpers -------------------------------------------------------------------

    def _static_findings(self, name: str) -> list[TunnelFinding]:
        cfg = self.config
        findings: list[TunnelFinding] = []
        if len(name) >= cfg.max_name_len:
            findings.append(
                TunnelFinding(
                    "long_name", f"name is {len(name)} characters (limit {cfg.max_name_len})"
                )
            )
        for label in name.split("."):
            n = len(label)
            if n > cfg.max_label_len:
                findings.append(
                    TunnelFinding(
                        "long_label",
                        f"label of {n} characters (limit {cfg.max_label_len}): {_sample(label)}",
                    )
                )
            if n >= cfg.entropy_min_label_len:
                h = shannon_entropy(label)
                if h >= cfg.entropy_threshold:
                    findings.append(
                        TunnelFinding(
                            "high_entropy_label",
                            f"label entropy {h:.2f} bits/char over {n} characters "
                            f"(limit {cfg.entropy_threshold:g}): {_sample(label)}",
                        )
                    )
            if n >= cfg.hex_min_label_len and set(label) <= _HEX:
                digits = sum(c.isdigit() for c in label)
                if 0 < digits < n:
                    findings.append(
                        TunnelFinding(
                            "hex_label", f"hex-encoded label of {n} characters: {_sample(label)}"
                        )
                    )
        return findings

    @staticmethod
    def _lru[T](table: OrderedDict[str, T], key: str, make: Callable[[], T], cap: int) -> T:
        item = table.get(key)
        if item is None:
            item = make()
            table[key] = item
            while len(table) > cap:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        return item


__all__ = [
    "QTYPES",
    "DnsGuardConfig",
    "DnsTunnelDetector",
    "TunnelFinding",
    "TunnelVerdict",
    "base_domain",
    "normalize_qname",
    "qtype_number",
    "shannon_entropy",
]
