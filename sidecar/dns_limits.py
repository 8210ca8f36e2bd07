"""DNS listener admission: questions per second (total and per source), bounded state.

Pure: no network, no mitmproxy. The DNS server asks `DnsAdmission.admit(source, now)`
for every datagram or TCP message *before* parsing it, so a flood costs one dict
lookup and two token-bucket updates per question.

Fairness: a question is charged to its source's bucket first and to the shared
(total) bucket only if its source had room. A source over its own rate therefore
spends nothing of the shared budget, so one noisy source cannot starve the others
(as long as the per-source rate is below the total rate, which `DnsLimits` enforces).

State: one `_Source` per source address (not per address:port, so a flood from
thousands of source ports is one entry), at most `max_sources` of them, evicted least
recently used. An evicted source that still had refusals to report hands them to
`summaries()` first, so no count is lost.

Logging a flood: refusals are reported per source at most once per
`report_interval` seconds: the first refusal of a quiet source is reported at once
(`admit` returns it as `first=True`), the rest are counted and handed out by
`summaries(now)` once the interval has passed, one line with the count. The caller
counts every refusal in a metric; the decision log and alerts see at most two lines
per source per interval, and, however many sources come and go, at most
`3 * max_sources` lines per interval in all (first lines are capped at `max_sources`
per interval; summaries come from at most `max_sources` tracked and `max_sources`
evicted entries).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

from sidecar.pacing import TokenBucket

__all__ = ["DnsAdmission", "DnsLimits", "LimitReport", "QuestionAdmission"]

LIMIT_SOURCE = "per_source"
LIMIT_TOTAL = "total"


@dataclasses.dataclass(frozen=True, slots=True)
class DnsLimits:
    max_qps: float = 2000.0  # all sources together
    max_qps_per_source: float = 500.0  # one source address
    max_sources: int = 4096  # source addresses remembered (LRU)
    report_interval: float = 10.0  # seconds between decision lines per limited source

    def __post_init__(self) -> None:
        if not self.max_qps > 0 or not self.max_qps_per_source > 0:
            raise ValueError("DNS question rates must be > 0")
        if self.max_qps_per_source > self.max_qps:
            raise ValueError(
                f"the per-source DNS rate ({self.max_qps_per_source:g}/s) must not exceed "
                f"the total rate ({self.max_qps:g}/s)"
            )
        if self.max_sources < 1:
            raise ValueError("max_sources must be >= 1")
        if not self.report_interval > 0:
            raise ValueError("report_interval must be > 0")


class _Source:
    __slots__ = ("bucket", "limit", "refused", "reported_at", "unreported")

    def __init__(self, rate: float, now: float) -> None:
        self.bucket = TokenBucket(rate, rate, now)  # at most one second of its rate
        self.refused = 0  # total since this entry exists
        self.unreported = 0  # refusals not yet in a decision line
        self.reported_at: float | None = None  # when the last line about it was made
        self.limit = LIMIT_SOURCE


@dataclasses.dataclass(frozen=True, slots=True)
class QuestionAdmission:
    allowed: bool
    limit: str = ""  # LIMIT_SOURCE or LIMIT_TOTAL when refused
    first: bool = False  # True: report this refusal now (first of its interval)


@dataclasses.dataclass(frozen=True, slots=True)
class LimitReport:
    """One decision line's worth: `count` refusals of `source` not yet reported."""

    source: str
    limit: str
    count: int


_ALLOWED = QuestionAdmission(True)


class DnsAdmission:
    """Rate limits and bounded per-source state for the DNS listener. Not thread-safe."""

    def __init__(self, limits: DnsLimits, now: float = 0.0) -> None:
        self.limits = limits
        self._total = TokenBucket(limits.max_qps, limits.max_qps, now)
        # Sources forgotten and seen again would each get a "first" line: the first
        # lines of all sources together are capped at max_sources per report interval.
        self._first_lines = TokenBucket(
            limits.max_sources / limits.report_interval, float(limits.max_sources), now
        )
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._evicted: list[LimitReport] = []

    @property
    def tracked_sources(self) -> int:
        return len(self._sources)

    def admit(self, source: str, now: float) -> QuestionAdmission:
        state = self._source(source, now)
        if state.bucket.take(now):
            if self._total.take(now):
                return _ALLOWED
            # Give the source its token back: the total limit refused, not its own.
            state.bucket.tokens = min(state.bucket.capacity, state.bucket.tokens + 1.0)
            return self._refused(state, LIMIT_TOTAL, now)
        return self._refused(state, LIMIT_SOURCE, now)

    def note_refusal(self, source: str, limit: str, now: float) -> QuestionAdmission:
        """A refusal decided elsewhere (a server-wide bound), reported the same way."""
        return self._refused(self._source(source, now), limit, now)

    def _source(self, source: str, now: float) -> _Source:
        state = self._sources.get(source)
        if state is None:
            state = _Source(self.limits.max_qps_per_source, now)
            self._sources[source] = state
            if len(self._sources) > self.limits.max_sources:
                self._evict()
        else:
            self._sources.move_to_end(source)
        return state

    def _refused(self, state: _Source, limit: str, now: float) -> QuestionAdmission:
        state.refused += 1
        state.limit = limit
        quiet = state.reported_at is None or now - state.reported_at >= self.limits.report_interval
        if quiet and state.unreported == 0 and self._first_lines.take(now):
            state.reported_at = now
            return QuestionAdmission(False, limit, first=True)
        state.unreported += 1
        return QuestionAdmission(False, limit)

    def summaries(self, now: float) -> list[LimitReport]:
        """Counts of refusals not reported yet, for sources whose interval has passed."""
        reports, self._evicted = self._evicted, []
        interval = self.limits.report_interval
        for source, state in self._sources.items():
            if state.unreported and (
                state.reported_at is None or now - state.reported_at >= interval
            ):
                reports.append(LimitReport(source, state.limit, state.unreported))
                state.unreported = 0
                state.reported_at = now
        return reports

    def _evict(self) -> None:
        source, state = self._sources.popitem(last=False)
        if state.unreported:
            # Bounded: at most one pending report per eviction between two summaries()
            # calls, and the caller drains them every report interval.
            if len(self._evicted) < self.limits.max_sources:
                self._evicted.append(LimitReport(source, state.limit, state.unreported))
            else:
                last = self._evicted[-1]
                self._evicted[-1] = LimitReport(
                    "(many sources)", last.limit, last.count + state.unreported
                )
