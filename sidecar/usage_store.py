"""Where usage counters and suspensions live (issue 15): a local SQLite file (the
default) or a shared Redis. No mitmproxy; docs/usage-limits.md says why each.

- `LocalStore`: one SQLite file in the state directory (`--state-dir`). Every process
  of the pod that opens it (the worker processes of `run --workers N`) shares the same
  counters, so a limit is never multiplied by the number of workers, and a suspension
  survives a restart. WAL journal, `synchronous=NORMAL` (a commit is durable against a
  crash of the process; only an OS crash can lose the last counts). Each admission is
  one short `BEGIN IMMEDIATE` transaction, run on the event loop: it takes tens of
  microseconds (bench/usage_overhead.py), less than a hop to a thread would. A lock
  held longer than `busy_timeout` counts as the backend being unavailable.
- `RedisStore`: counters, limits and suspensions shared by every sidecar of every
  replica. One round trip per admission (a Lua script: suspension check, read, compare,
  count, atomically, so concurrent replicas never overshoot a limit together). Every
  call has a deadline; after a failure the store answers "unavailable" at once for a
  moment instead of making each request wait for a dead server.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import json
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sidecar.metering import (
    MINUTE,
    Counts,
    Meter,
    Metric,
    Overrun,
    first_overrun,
    window_index,
)

STATE_FILE = "usage.sqlite3"
MAX_DETAIL = 500


class BackendUnavailable(Exception):
    """The store did not answer in time or at all. The message is safe to log."""


@dataclasses.dataclass(frozen=True, slots=True)
class Suspension:
    tenant: str
    since: float
    by: str  # "automatic" | "admin"
    detail: str = ""
    evidence: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Suspension:
        data = json.loads(text)
        return cls(
            tenant=str(data["tenant"]),
            since=float(data["since"]),
            by=str(data.get("by", "admin")),
            detail=str(data.get("detail", ""))[:MAX_DETAIL],
            evidence=dict(data.get("evidence") or {}),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class UsageAdmission:
    counts: tuple[Counts, ...]  # per meter, after counting this request if admitted
    overrun: Overrun | None = None
    suspension: Suspension | None = None

    @property
    def admitted(self) -> bool:
        return self.overrun is None and self.suspension is None


def _expires(meter: Meter, now: float) -> float:
    """When a counter stops mattering: the end of the window after its own."""
    return float((window_index(now, meter.seconds) + 2) * meter.seconds)


class UsageStore(abc.ABC):
    """Token counts are buffered in memory and written with the next admission (one
    write per request, not two) or by `flush()`, which the addon calls every
    FLUSH_INTERVAL: other processes and replicas see tokens that late at most."""

    name: str

    def __init__(self) -> None:
        self._tokens: dict[str, list[float]] = {}  # key -> [amount, expires (epoch)]
        # Suspensions as last read (the health loop lists them every 0.5 s): what holds
        # while the store does not answer.
        self._cache: dict[str, Suspension] = {}

    def add_tokens(self, meters: Sequence[Meter], tokens: int, now: float) -> None:
        if tokens <= 0:
            return
        for meter in meters:
            entry = self._tokens.setdefault(meter.key(now), [0, _expires(meter, now)])
            entry[0] += tokens

    def _take_tokens(self, now: float) -> dict[str, list[float]]:
        """The buffer to write (emptied); `_give_back` if the write failed."""
        taken, self._tokens = self._tokens, {}
        return {k: v for k, v in taken.items() if v[1] > now}  # gone windows: dropped

    def _give_back(self, taken: dict[str, list[float]]) -> None:
        for key, (amount, expires) in taken.items():
            entry = self._tokens.setdefault(key, [0, expires])
            entry[0] += amount

    @abc.abstractmethod
    async def flush(self, now: float) -> None:
        """Write the buffered token counts."""

    @abc.abstractmethod
    async def admit(
        self, tenant: str | None, meters: Sequence[Meter], now: float
    ) -> UsageAdmission:
        """Suspension check, then limits; counts the request's meters if admitted."""

    @abc.abstractmethod
    async def suspend(self, suspension: Suspension) -> bool:
        """True if the tenant was not suspended before."""

    @abc.abstractmethod
    async def resume(self, tenant: str, now: float) -> bool:
        """True if the tenant was suspended. Its per-minute counters start again from
        zero: the burst that suspended it must not suspend it again at once (if the
        burst goes on, it will, once it crosses the threshold again)."""

    @abc.abstractmethod
    async def suspensions(self) -> list[Suspension]: ...

    async def check(self) -> None:
        """Raise BackendUnavailable unless the store answers (the health loop)."""
        await self.suspensions()

    def cached_suspension(self, tenant: str) -> Suspension | None:
        """A suspension known without asking the store (while it is unavailable)."""
        return self._cache.get(tenant)

    async def close(self) -> None:  # noqa: B027 - optional
        pass


# --- local: SQLite ---------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, count INTEGER NOT NULL,
                                     expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS counters_expires ON counters (expires);
CREATE TABLE IF NOT EXISTS suspensions (tenant TEXT PRIMARY KEY, record TEXT NOT NULL);
"""


class LocalStore(UsageStore):
    name = "local"
    PURGE_EVERY = 2048  # admissions between deletions of expired counters

    def __init__(self, state_dir: str | os.PathLike[str], busy_timeout_ms: int = 100) -> None:
        super().__init__()
        self.path = Path(state_dir) / STATE_FILE
        self.busy_timeout_ms = busy_timeout_ms
        self._db: sqlite3.Connection | None = None
        self._since_purge = 0

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
                os.chmod(self.path, 0o600)
            except (sqlite3.Error, OSError) as exc:
                raise BackendUnavailable(f"local state file {self.path}: {exc}") from None
            self._db = db
        return self._db

    def _transaction(self, work: Any, *, write: bool = True) -> Any:
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = work(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"local state file: {exc}") from None

    async def admit(
        self, tenant: str | None, meters: Sequence[Meter], now: float
    ) -> UsageAdmission:
        if not meters:  # a suspension check alone: one read, no write lock
            only: UsageAdmission = self._transaction(
                lambda db: _suspension_only(db, tenant), write=False
            )
            return only

        tokens = self._take_tokens(now)

        def work(db: sqlite3.Connection) -> UsageAdmission:
            _add(db, tokens)
            suspended = _suspension_only(db, tenant)
            if suspended.suspension is not None:
                return suspended
            counts = _read_counts(db, meters, now)
            overrun = first_overrun(meters, counts, now)
            if overrun is not None:
                return UsageAdmission(tuple(counts), overrun=overrun)
            requests = [(i, m) for i, m in enumerate(meters) if m.metric is Metric.REQUESTS]
            for i, meter in requests:
                _increment(db, meter, 1, now)
                counts[i] = Counts(counts[i].current + 1, counts[i].previous)
            return UsageAdmission(tuple(counts))

        try:
            admission: UsageAdmission = self._transaction(work)
        except BackendUnavailable:
            self._give_back(tokens)
            raise
        self._since_purge += 1
        if self._since_purge >= self.PURGE_EVERY:
            self._since_purge = 0
            self._transaction(
                lambda db: db.execute("DELETE FROM counters WHERE expires < ?", (now,))
            )
        return admission

    async def flush(self, now: float) -> None:
        tokens = self._take_tokens(now)
        if not tokens:
            return
        try:
            self._transaction(lambda db: _add(db, tokens))
        except BackendUnavailable:
            self._give_back(tokens)
            raise

    async def suspend(self, suspension: Suspension) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "INSERT OR IGNORE INTO suspensions (tenant, record) VALUES (?, ?)",
                (suspension.tenant, suspension.to_json()),
            )
            return cursor.rowcount == 1

        changed: bool = self._transaction(work)
        self._cache.setdefault(suspension.tenant, suspension)
        return changed

    async def resume(self, tenant: str, now: float) -> bool:
        self._cache.pop(tenant, None)

        def work(db: sqlite3.Connection) -> bool:
            keys = [(k,) for k in _burst_keys(tenant, now)]
            db.executemany("DELETE FROM counters WHERE key = ?", keys)
            return db.execute("DELETE FROM suspensions WHERE tenant = ?", (tenant,)).rowcount == 1

        changed: bool = self._transaction(work)
        return changed

    async def suspensions(self) -> list[Suspension]:
        def work(db: sqlite3.Connection) -> list[Suspension]:
            rows = db.execute("SELECT record FROM suspensions ORDER BY tenant").fetchall()
            return [Suspension.from_json(r[0]) for r in rows]

        found: list[Suspension] = self._transaction(work)
        self._cache = {s.tenant: s for s in found}
        return found

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _burst_keys(tenant: str, now: float) -> list[str]:
    """The tenant's per-minute counters the anomaly rule reads (this minute and the last)."""
    return [
        Meter(f"tenant:{tenant}", metric, MINUTE, None).key(now, back)
        for metric in Metric
        for back in (0, 1)
    ]


def _suspension_only(db: sqlite3.Connection, tenant: str | None) -> UsageAdmission:
    row = None
    if tenant is not None:
        row = db.execute("SELECT record FROM suspensions WHERE tenant = ?", (tenant,)).fetchone()
    return UsageAdmission((), suspension=Suspension.from_json(row[0]) if row else None)


def _read_counts(db: sqlite3.Connection, meters: Sequence[Meter], now: float) -> list[Counts]:
    if not meters:
        return []
    keys = [k for m in meters for k in (m.key(now), m.key(now, 1))]
    marks = ",".join("?" * len(keys))
    query = f"SELECT key, count FROM counters WHERE key IN ({marks})"  # noqa: S608 - only '?'
    found = dict(db.execute(query, keys))
    return [Counts(found.get(m.key(now), 0), found.get(m.key(now, 1), 0)) for m in meters]


_UPSERT = (
    "INSERT INTO counters (key, count, expires) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET count = count + excluded.count"
)


def _increment(db: sqlite3.Connection, meter: Meter, amount: int, now: float) -> None:
    db.execute(_UPSERT, (meter.key(now), amount, _expires(meter, now)))


def _add(db: sqlite3.Connection, tokens: dict[str, list[float]]) -> None:
    if tokens:
        db.executemany(_UPSERT, [(k, int(v[0]), v[1]) for k, v in tokens.items()])


# --- shared: Redis ---------------------------------------------------------------------

PREFIX = "{egress-sidecar}:"  # one hash slot: the script's keys work on a Cluster too
SUSPENDED = PREFIX + "suspended"

# KEYS: suspensions hash, per meter its current and previous window counters, then
# the buffered token counters. ARGV: tenant ("" for none), meter count, per meter:
# limit (-1: none), weight of the previous window, 1 if counted per request, TTL
# seconds; then per buffered token counter: amount, TTL seconds.
_ADMIT = """
local n = tonumber(ARGV[2])
local t = 2 + n * 4
for j = 2 + 2 * n, #KEYS do
  redis.call('INCRBY', KEYS[j], tonumber(ARGV[t + 1]))
  redis.call('EXPIRE', KEYS[j], tonumber(ARGV[t + 2]))
  t = t + 2
end
local suspended = false
if ARGV[1] ~= '' then suspended = redis.call('HGET', KEYS[1], ARGV[1]) end
if suspended then return {suspended} end
local out = {'', 1}
for i = 1, n do
  local cur = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  local prev = tonumber(redis.call('GET', KEYS[2 * i + 1]) or '0')
  local base = 2 + (i - 1) * 4
  local limit = tonumber(ARGV[base + 1])
  if limit >= 0 and prev * tonumber(ARGV[base + 2]) + cur + 1 > limit then out[2] = 0 end
  out[2 * i + 1] = cur
  out[2 * i + 2] = prev
end
if out[2] == 1 then
  for i = 1, n do
    local base = 2 + (i - 1) * 4
    if ARGV[base + 3] == '1' then
      out[2 * i + 1] = redis.call('INCR', KEYS[2 * i])
      redis.call('EXPIRE', KEYS[2 * i], tonumber(ARGV[base + 4]))
    end
  end
end
return out
"""


def _ttl(expires: float, now: float) -> int:
    return max(1, int(expires - now) + 1)


class RedisStore(UsageStore):
    """Every call bounded by `timeout`; after a failure, `BackendUnavailable` at once
    for `hold_down` seconds (the health loop's `check()` probes meanwhile)."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        timeout: float = 0.25,
        hold_down: float = 1.0,
        clock: Any = time.monotonic,
    ) -> None:
        import redis.asyncio as aioredis  # here: the local default never pays its import
        from redis.exceptions import RedisError

        super().__init__()
        self._errors = (RedisError, OSError, TimeoutError)
        self.timeout = timeout
        self.hold_down = hold_down
        self._clock = clock
        self._down_until = 0.0
        self._pending: dict[str, Suspension] = {}  # made while down, written on recovery
        self._redis = aioredis.Redis.from_url(
            url,
            password=password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._admit = self._redis.register_script(_ADMIT)

    async def _call(self, what: str, coro: Any, *, probe: bool = False) -> Any:
        if not probe and self._clock() < self._down_until:
            coro.close()
            raise BackendUnavailable("redis unavailable (recent failure)")
        try:
            return await asyncio.wait_for(coro, self.timeout * 2)
        except self._errors as exc:  # connection, timeout, protocol, script errors
            self._down_until = self._clock() + self.hold_down
            kind = type(exc).__name__
            raise BackendUnavailable(f"redis {what} failed: {kind}") from None

    async def admit(
        self, tenant: str | None, meters: Sequence[Meter], now: float
    ) -> UsageAdmission:
        keys = [SUSPENDED]
        args: list[Any] = [tenant or "", len(meters)]
        for meter in meters:
            keys += [PREFIX + meter.key(now), PREFIX + meter.key(now, 1)]
            weight = 1.0 - (now % meter.seconds) / meter.seconds
            limit = -1 if meter.limit is None else meter.limit
            counted = 1 if meter.metric is Metric.REQUESTS else 0
            args += [limit, repr(weight), counted, _ttl(_expires(meter, now), now)]
        tokens = self._take_tokens(now)
        for key, (amount, expires) in tokens.items():
            keys.append(PREFIX + key)
            args += [int(amount), _ttl(expires, now)]
        try:
            reply = await self._call("admit", self._admit(keys=keys, args=args))
        except BackendUnavailable:
            self._give_back(tokens)
            raise
        if len(reply) == 1:
            suspension = Suspension.from_json(reply[0])
            self._cache[suspension.tenant] = suspension
            return UsageAdmission((), suspension=suspension)
        counts = tuple(
            Counts(int(reply[2 + 2 * i]), int(reply[3 + 2 * i])) for i in range(len(meters))
        )
        if int(reply[1]) == 1:
            return UsageAdmission(counts)
        overrun = first_overrun(meters, counts, now)
        if overrun is None:  # the script's float rounding differed at the very edge
            limited = next(m for m in meters if m.limit is not None)
            overrun = Overrun(limited, float(limited.limit or 0), 1.0)
        return UsageAdmission(counts, overrun=overrun)

    async def flush(self, now: float) -> None:
        tokens = self._take_tokens(now)
        if not tokens:
            return
        pipe = self._redis.pipeline(transaction=False)
        for key, (amount, expires) in tokens.items():
            pipe.incrby(PREFIX + key, int(amount))
            pipe.expire(PREFIX + key, _ttl(expires, now))
        try:
            await self._call("flush", pipe.execute())
        except BackendUnavailable:
            self._give_back(tokens)
            raise

    async def suspend(self, suspension: Suspension) -> bool:
        self._cache[suspension.tenant] = suspension
        try:
            added = await self._call(
                "suspend", self._redis.hsetnx(SUSPENDED, suspension.tenant, suspension.to_json())
            )
        except BackendUnavailable:
            self._pending[suspension.tenant] = suspension
            raise
        return bool(added)

    async def resume(self, tenant: str, now: float) -> bool:
        self._cache.pop(tenant, None)
        self._pending.pop(tenant, None)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(SUSPENDED, tenant)
        pipe.delete(*(PREFIX + k for k in _burst_keys(tenant, now)))
        removed, _ = await self._call("resume", pipe.execute())
        return bool(removed)

    async def suspensions(self) -> list[Suspension]:
        raw = await self._call("list", self._redis.hgetall(SUSPENDED))
        found = {s.tenant: s for s in (Suspension.from_json(v) for v in raw.values())}
        self._cache = {**found, **self._pending}
        return sorted(self._cache.values(), key=lambda s: s.tenant)

    async def check(self) -> None:
        """Probe (ignoring the hold-down), write what was suspended while down, refresh
        the cache of suspensions used while the server is unreachable."""
        await self._call("ping", self._redis.ping(), probe=True)
        self._down_until = 0.0
        for tenant, suspension in list(self._pending.items()):
            await self._call("suspend", self._redis.hsetnx(SUSPENDED, tenant, suspension.to_json()))
            self._pending.pop(tenant, None)
        await self.suspensions()

    async def close(self) -> None:
        await self._redis.aclose()
