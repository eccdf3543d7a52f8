"""Redis state stores: what worker processes and hosts share, each check one atomic Lua script.

The only module that talks to Redis (DESIGN §1). Every call is bounded by a timeout; when Redis
does not answer, the store's configured fail mode decides — `open` lets the request through
unrecorded, `closed` refuses it with a retryable UNAVAILABLE — and further calls skip Redis for
a short back-off instead of each waiting out the timeout. The first call after the back-off
tries again, so service resumes by itself when Redis returns. State changes are logged once.

A Redis that loses its data between two calls (restart without persistence, FLUSHALL, failover
to an empty replica) is noticed by the epoch key every admit and nonce script reads in its own
round trip (StoreEpoch): nonces then get a shared floor; counters and budgets are reported lost.

Refunds, releases and settles run in the background (stage `after` is synchronous). One that
fails is lost, and errs on the safe side: a lost settle leaves its reservation held until the
period's key expires (the budget under-spends, never over-spends); a lost release leaves a
concurrency slot taken until its key's TTL.
"""
import asyncio
import logging
import math
import time

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.retry import Retry

from .base import (FAIL_OPEN, Admitted, BelowFloor, BudgetStore, CounterStore, Denial, NonceStore,
                   Stores, StoreUnavailable)
from .urls import CLUSTER_SCHEME, SENTINEL_SCHEME, parse_cluster_url, parse_sentinel_url

log = logging.getLogger("atp.state")

# A gauge key outlives any one request by far (drain and upstream timeouts are minutes at most);
# it bounds how long a worker killed while holding slots keeps them.
GAUGE_TTL_MS = 600_000
# After a failed call, Redis is skipped for this long: requests meanwhile get the fail mode at
# once instead of each waiting out the timeout. Short, so recovery is noticed within a second.
BACKOFF_S = 0.5
# Connections per worker: a Lua check is ~50-100 µs in Redis, so 32 connections carry far more
# requests per second than one worker process serves (~10k/s); more would only load Redis.
POOL_SIZE = 32
# Background writes waiting for Redis: a few seconds of one worker's peak request rate. Only a
# Redis slower than the traffic fills it; beyond, writes are dropped and counted (`lost`).
MAX_QUEUED_WRITES = 20_000

# The epoch check every admit and nonce script starts with (StoreEpoch): `floor` is the epoch
# key's value; a missing (or unreadable) key is set to the caller's now, and `created` says so.
# Formatted with the Lua expressions of the key and of now (ms) in the script that embeds it.
_EPOCH_LUA = """
local floor, created = tonumber(redis.call('GET', {key})), 0
if floor == nil then
  floor, created = tonumber({now}), 1
  redis.call('SET', {key}, {now})
end
"""
# The check alone, at start (RedisStores.start). KEYS: the epoch key. ARGV: now (ms).
_EPOCH = _EPOCH_LUA.format(key="KEYS[1]", now="ARGV[1]") + "return {floor, created}"
# Record a nonce (auth.check_shared_nonce): refused as stale below the epoch's floor, else SET NX
# until its expiry. KEYS: the epoch key, the nonce's key. ARGV: now (ms), the nonce's timestamp
# (ms) or "" (none to check), its TTL (ms). Returns {1 recorded | 0 already there | 2 below the
# floor, floor, created}.
_NONCE = _EPOCH_LUA.format(key="KEYS[1]", now="ARGV[1]") + """
local ts = tonumber(ARGV[2])
if ts ~= nil and ts < floor then return {2, floor, created} end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then return {1, floor, created} end
return {0, floor, created}
"""
_NONCE_STALE = 2        # _NONCE's first reply item for a timestamp below the floor


class StoreEpoch:
    """What tells this process that Redis lost the data the deployment wrote (issue 12).

    The key `<prefix>epoch` holds a floor, Unix ms, and never expires. Every admit and nonce
    script reads it in the round trip it makes anyway; a script that finds it missing — Redis
    restarted without persistence, FLUSHALL, a failover to an empty replica — sets it to the
    caller's now and says so, and the nonce script refuses timestamps below it as stale. So
    whichever process calls first notices, and from then on every process checks the same
    floor: re-creating the key does not hide the loss from the others, whose next call returns
    a floor above the one they knew. Counters and budgets are not recovered, only reported.

    Replies on a pool's connections may arrive out of order: only a higher floor (or one this
    process created) is news, a lower one is an older reply. So a reset noticed by a host whose
    clock lags the previous creator's is logged and counted by that host only (every process
    still enforces the floor in the script).
    """

    def __init__(self, key: str, clock=time.time):
        self.key, self.clock = key, clock
        self.floor_ms: int | None = None    # None: not read yet
        self.resets = 0                     # losses this process noticed (atp_state_store_resets)
        self.listeners: list = []           # fn(floor_ms) for each new floor (auth's nonce cache)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def observe(self, floor_ms: int, created: bool) -> None:
        """One script's reply: the floor it saw (or set, `created`)."""
        previous = self.floor_ms
        if previous is not None and not created and floor_ms <= previous:
            return
        self.floor_ms = floor_ms if previous is None else max(previous, floor_ms)
        if previous is not None:
            self.resets += 1
            log.error("state store: REDIS LOST ITS DATA (the key %s %s: a restart without "
                      "persistence, FLUSHALL, or a failover to an empty replica). Rate-limit "
                      "counters, concurrency gauges and budgets start again from zero (what was "
                      "spent before is forgotten); session openings and signed requests "
                      "timestamped before %d are refused as STALE_TIMESTAMP. Run Redis with "
                      "persistence (appendonly yes) to keep budgets.", self.key,
                      "was missing" if created else "was re-created by another process", floor_ms)
        elif created:
            log.warning("state store: no key %s in Redis (the first start on this Redis, or it "
                        "lost its data while no ATP process was using it): created with floor %d;"
                        " session openings and signed requests timestamped before are refused",
                        self.key, floor_ms)
        for listener in self.listeners:
            listener(floor_ms)


_REFUND = """
for i = 1, #KEYS do
  local t = tonumber(redis.call('HGET', KEYS[i], 't'))
  if t ~= nil then
    local cap, amount = tonumber(ARGV[i*2-1]), tonumber(ARGV[i*2])
    redis.call('HSET', KEYS[i], 't', tostring(math.min(cap, t + amount)))
  end
end
return 0
"""

_RELEASE = """
for i = 1, #KEYS do
  if (tonumber(redis.call('GET', KEYS[i])) or 0) > 0 then redis.call('DECR', KEYS[i]) end
end
return 0
"""

# `0 - x`, not `-x`: -0 would reach Redis as "-0", which HINCRBY refuses as not an integer.
_SETTLE = """
local actual = ARGV[#ARGV]
for i = 1, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'reserved', 0 - tonumber(ARGV[i]))
  redis.call('HINCRBY', KEYS[i], 'spent', actual)
end
return 0
"""


# Everything `after` gives back in one script: the refund of the tokens a request did not use,
# the release of its concurrency slots and the settlement of its budget holds (what _REFUND,
# _RELEASE and _SETTLE do alone) — one call per request instead of three, a third of Redis's work
# per request (measured: each EVALSHA ~6.6 µs of Redis CPU under load). KEYS: buckets, gauges,
# holds. ARGV: their counts, per bucket (capacity, amount), per hold the reserved amount, then the
# actual cost.
_FINISH = """
local nb, ng, nh = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, nb do
  local t = tonumber(redis.call('HGET', KEYS[i], 't'))
  if t ~= nil then
    local cap, amount = tonumber(ARGV[2 + i*2]), tonumber(ARGV[3 + i*2])
    redis.call('HSET', KEYS[i], 't', tostring(math.min(cap, t + amount)))
  end
end
for i = nb + 1, nb + ng do
  if (tonumber(redis.call('GET', KEYS[i])) or 0) > 0 then redis.call('DECR', KEYS[i]) end
end
local actual = ARGV[#ARGV]
for i = 1, nh do
  local k = KEYS[nb + ng + i]
  redis.call('HINCRBY', k, 'reserved', 0 - tonumber(ARGV[3 + 2 * nb + i]))
  redis.call('HINCRBY', k, 'spent', actual)
end
return 0
"""

# Everything `before` needs in one script: take the buckets, hold the gauges, reserve the holds,
# all or nothing (one round trip; take, acquire and reserve alone are this script with the
# other two lists empty).
# KEYS: buckets, gauges, holds, the epoch key (StoreEpoch). ARGV: counts, now, gauge TTL, amount,
# now in ms (for the epoch), then per bucket (capacity, rate, cost), per gauge (limit), per hold
# (limit, ttl). Returns {kind, index, wait ms, epoch floor, epoch created} on a refusal (1 rate,
# 2 gauge, 3 budget), else {0, 0, 0, floor, created, tokens left..., spent + reserved...}.
_ADMIT = """
local nb, ng, nh = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now, gttl, amount = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
""" + _EPOCH_LUA.format(key="KEYS[nb + ng + nh + 1]", now="ARGV[7]") + """
local a = 8
local levels, totals = {}, {}
for i = 1, nb do
  local cap, rate, cost = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local s = redis.call('HMGET', KEYS[i], 't', 'ts')
  local tokens, ts = tonumber(s[1]), tonumber(s[2])
  if tokens == nil then tokens, ts = cap, now end
  if now > ts then tokens, ts = math.min(cap, tokens + (now - ts) * rate), now end
  if tokens < cost then
    local wait = 0
    if rate > 0 then wait = math.max(1, math.ceil((cost - tokens) / rate * 1000)) end
    return {1, i - 1, wait, floor, created}
  end
  levels[i] = {tokens - cost, ts, cap, rate}
end
for i = 1, ng do
  if (tonumber(redis.call('GET', KEYS[nb + i])) or 0) >= tonumber(ARGV[a]) then return {2, i - 1, 0, floor, created} end
  a = a + 1
end
for i = 1, nh do
  local limit, ttl = tonumber(ARGV[a]), ARGV[a + 1]
  a = a + 2
  local s = redis.call('HMGET', KEYS[nb + ng + i], 'spent', 'reserved')
  local total = (tonumber(s[1]) or 0) + (tonumber(s[2]) or 0)
  if total + amount > limit then return {3, i - 1, 0, floor, created} end
  totals[i] = {total + amount, ttl}
end
local out = {0, 0, 0, floor, created}
for i = 1, nb do
  local l = levels[i]
  redis.call('HSET', KEYS[i], 't', tostring(l[1]), 'ts', tostring(l[2]))
  redis.call('PEXPIRE', KEYS[i], math.ceil(l[3] / math.max(l[4], 1e-9) * 1000) + 1000)
  out[#out + 1] = math.floor(l[1])
end
for i = 1, ng do
  redis.call('INCR', KEYS[nb + i])
  redis.call('PEXPIRE', KEYS[nb + i], gttl)
end
for i = 1, nh do
  redis.call('HINCRBY', KEYS[nb + ng + i], 'reserved', amount)
  redis.call('EXPIRE', KEYS[nb + ng + i], totals[i][2], 'NX')
  out[#out + 1] = totals[i][1]
end
return out
"""
_REFUSED = {1: "rate", 2: "gauge", 3: "budget"}


async def _admit(script, guard, epoch, buckets, costs, now, gauges, holds, amount, cprefix, bprefix):
    """Run _ADMIT under `guard`: an Admitted (all None/False when the guard fell back)."""
    keys = ([cprefix + x.key for x in buckets] + [cprefix + g.key for g in gauges]
            + [bprefix + h.key for h in holds] + [epoch.key])
    args = [len(buckets), len(gauges), len(holds), repr(now), GAUGE_TTL_MS, amount, epoch.now_ms()]
    for bucket, cost in zip(buckets, costs):
        args += (bucket.capacity, repr(bucket.rate_per_s), cost)
    args += [g.limit for g in gauges]
    for h in holds:
        args += (h.limit, h.ttl_s)
    out = await guard.call(lambda: script(keys, args), None)
    if out is None:
        return Admitted(None, None, None, False, None)
    epoch.observe(int(out[3]), bool(out[4]))
    if out[0]:
        return Admitted(_REFUSED[out[0]], Denial(int(out[1]), int(out[2])), None, False, None)
    n = len(buckets)
    return Admitted(None, None, tuple(int(x) for x in out[5:5 + n]), bool(gauges),
                    tuple(int(x) for x in out[5 + n:]))


class _Batched:
    """The calls of one script issued within one loop turn, sent as one pipeline: one write and
    one read on each side instead of one per request (each request's admit is one call; with
    tens of requests in flight several land in the same turn). A caller awaits its own future
    (under its own guard: timeout and fail mode stay per request); one that gave up is skipped."""

    def __init__(self, client, script):
        self.r, self.script = client, script
        self.pending: list = []
        self.calls = self.round_trips = 0       # calls batched, and what they cost (tests, tuning)

    def __call__(self, keys, args):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((keys, args, future))
        if len(self.pending) == 1:        # the first of this turn sends the batch next turn
            loop.call_soon(lambda: loop.create_task(self._send()))
        return future

    async def _send(self) -> None:
        batch, self.pending = self.pending, []
        self.calls += len(batch)
        self.round_trips += 1
        try:
            results = await _run_scripts(self.r, [(self.script, keys, args) for keys, args, _ in batch])
        except Exception as exc:          # Redis unreachable, a timeout: every caller sees it
            results = [exc] * len(batch)
        for (_, _, future), result in zip(batch, results):
            if future.done():             # its caller timed out or went away
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


class _Guard:
    """Timeout, fail mode and back-off for one store; logs each change of reachability once."""

    def __init__(self, name: str, fail: str, timeout_s: float, clock=time.monotonic):
        self.name, self.fail_open, self.timeout_s = name, fail == FAIL_OPEN, timeout_s
        self.clock = clock
        self.down_until = 0.0
        self.problem: str | None = None
        self.failures = 0               # calls that failed or were skipped while down
        # fn() when Redis answers again after failing: it may have restarted empty (the nonce
        # store's owner then refuses what was timestamped before, see auth.shared_store_recovered)
        self.on_recover = None

    async def call(self, make, fallback):
        """Await make() within the timeout; when Redis fails: fallback if open, else refuse."""
        if self.problem is not None and self.clock() < self.down_until:
            return self._fail(fallback)
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await make()
        except (RedisError, OSError, TimeoutError) as exc:
            self._down(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            return self._fail(fallback)
        if self.problem is not None:
            log.warning("state store %s: Redis answers again; back to shared state", self.name)
            self.problem = None
            if self.on_recover is not None:
                self.on_recover()
        return result

    def _down(self, problem: str) -> None:
        if self.problem is None:
            log.error("state store %s: Redis unreachable (%s); failing %s, retrying every %.1fs",
                      self.name, problem, "open" if self.fail_open else "closed", BACKOFF_S)
        self.problem = problem
        self.down_until = self.clock() + BACKOFF_S

    def _fail(self, fallback):
        self.failures += 1
        if self.fail_open:
            return fallback
        raise StoreUnavailable(self.name, self.problem or "down", math.ceil(BACKOFF_S * 1000))


async def _run_scripts(client, calls) -> list:
    """Each (script, keys, args) of `calls` in one round trip; per call its result or exception.

    A pipeline of plain EVALSHA (redis-py's own scripts-in-a-pipeline path first asks SCRIPT
    EXISTS: a second round trip per batch); a call that meets NOSCRIPT (a Redis that lost its
    scripts) runs again alone, which loads it. A cluster refuses scripts in a pipeline: its calls
    run concurrently. A failure of the round trip itself (unreachable, timeout) raises."""
    if isinstance(client, RedisCluster):
        return await asyncio.gather(*(script(keys=keys, args=args) for script, keys, args in calls),
                                    return_exceptions=True)
    if len(calls) == 1:
        script, keys, args = calls[0]
        try:
            return [await script(keys=keys, args=args)]
        except ResponseError as exc:        # the script's own error: this call's answer
            return [exc]
    async with client.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        results = await pipe.execute(raise_on_error=False)
    return [await script(keys=keys, args=args) if isinstance(r, NoScriptError) else r
            for (script, keys, args), r in zip(calls, results)]


class _Background:
    """Writes sent without waiting (from stage `after`): queued, and sent by one flusher as a
    pipeline — one round trip per batch instead of one task and one round trip per write. The
    queue is bounded; a write beyond it is dropped and counted (on the safe side, see above)."""

    def __init__(self, client, guard: _Guard):
        self.r, self.guard = client, guard
        self.queue: list[tuple] = []
        self.flusher: asyncio.Task | None = None
        self.lost = 0                   # background writes Redis never received

    def send(self, script, keys, args) -> None:
        if len(self.queue) >= MAX_QUEUED_WRITES:
            self.lost += 1
            return
        self.queue.append((script, keys, args))
        if self.flusher is None:
            self.flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self.queue:
                batch, self.queue = self.queue, []
                marker = object()
                try:
                    if await self.guard.call(lambda: self._send(batch), marker) is marker:
                        self.lost += len(batch)
                except StoreUnavailable:
                    self.lost += len(batch)
        finally:
            self.flusher = None

    async def _send(self, batch) -> None:
        for result in await _run_scripts(self.r, batch):
            if isinstance(result, Exception):
                raise result          # the guard counts the batch lost (as a failed pipeline was)

    async def drain(self) -> None:
        while self.flusher is not None:
            await asyncio.shield(self.flusher)


class RedisCounters(CounterStore):
    def __init__(self, client, prefix: str, guard: _Guard, epoch: StoreEpoch):
        self.r, self.prefix, self.guard, self.epoch = client, prefix, guard, epoch
        self._admit = client.register_script(_ADMIT)
        self._refund = client.register_script(_REFUND)
        self._release = client.register_script(_RELEASE)
        self.background = _Background(client, guard)

    async def take(self, buckets, costs, now):
        got = await _admit(self._admit, self.guard, self.epoch, buckets, costs, now, (), (), 0,
                           self.prefix, "")
        return got.denial, got.levels

    def refund(self, buckets, amounts):
        keys = [self.prefix + b.key for b in buckets]
        args = []
        for b, amount in zip(buckets, amounts):
            args += (b.capacity, amount)
        self.background.send(self._refund, keys, args)

    async def acquire(self, gauges):
        got = await _admit(self._admit, self.guard, self.epoch, (), (), 0.0, gauges, (), 0,
                           self.prefix, "")
        return got.denial, got.held

    def release(self, gauges):
        keys = [self.prefix + g.key for g in gauges]
        self.background.send(self._release, keys, [])

    async def level(self, key):
        return int(await self.r.get(self.prefix + key) or 0)

    async def drain(self):
        await self.background.drain()


class RedisBudgets(BudgetStore):
    def __init__(self, client, prefix: str, guard: _Guard, epoch: StoreEpoch):
        self.r, self.prefix, self.guard, self.epoch = client, prefix, guard, epoch
        self._admit = client.register_script(_ADMIT)
        self._settle = client.register_script(_SETTLE)
        self.background = _Background(client, guard)

    async def reserve(self, holds, amount):
        got = await _admit(self._admit, self.guard, self.epoch, (), (), 0.0, (), holds, amount, "",
                           self.prefix)
        return got.denial, got.totals

    def settle(self, holds, amount, actual):
        keys = [self.prefix + h.key for h in holds]
        args = [amount] * len(holds) + [actual]
        self.background.send(self._settle, keys, args)

    async def usage(self, key):
        spent, reserved = await self.r.hmget(self.prefix + key, "spent", "reserved")
        return int(spent or 0), int(reserved or 0)

    async def drain(self):
        await self.background.drain()


class RedisNonces(NonceStore):
    def __init__(self, client, prefix: str, guard: _Guard, epoch: StoreEpoch):
        self.r, self.prefix, self.guard, self.epoch = client, prefix, guard, epoch
        self._record = _Batched(client, client.register_script(_NONCE))   # HELLOs of one turn: one trip

    async def add(self, nonce, ttl_s, now, timestamp_ms=None):
        # One script: the epoch check and SET NX PX in the same round trip. Fail open = new.
        keys = [self.epoch.key, self.prefix + nonce.hex()]
        # No timestamp (""): nothing to hold against the floor.
        args = [round(now * 1000), "" if timestamp_ms is None else timestamp_ms,
                max(1, math.ceil(ttl_s * 1000))]
        out = await self.guard.call(lambda: self._record(keys, args), None)
        if out is None:
            return True
        floor = int(out[1])
        self.epoch.observe(floor, bool(out[2]))
        if out[0] == _NONCE_STALE:
            raise BelowFloor(timestamp_ms, floor)
        return bool(out[0])


# LinUCB's sums (routing/bandit.py: A's upper triangle then b, n = d(d+1)/2 + d floats per
# model), merged like succ/fail: set from `base` when the key is new, then this worker's delta
# added. Per model: KEYS its sums hash; ARGV dim, base, delta, packed little-endian float64 — an
# empty delta is all zeros (a model this worker did not see since its last merge: its sums are
# only read, sparing the unpacking, ~30 µs of Redis per model). Out per model {1, merged sums},
# or {0, the stored dim} when the key holds another dim (another trained router's features,
# another version) or a blob is not n floats long: the key is left as it was, the worker skips.
# Packed bytes, not HINCRBYFLOAT per entry: 170 floats per model would be 170 commands and 170
# decimal strings each way; a Lua number is an IEEE double, so `a + b` here is the addition numpy
# does, and nothing is lost to formatting. Lua's unpack() is bounded by its C stack
# (LUAI_MAXCSTACK = 8000 values), so floats are unpacked LINUCB_CHUNK at a time whatever the dim
# (one chunk at the dim in use: 170 floats).
LINUCB_CHUNK = 1024
# Learning keys (statistics, breaker, LinUCB sums per model) live this long after their last
# merge, renewed by every merge: a model taken out of every worker's config is forgotten within
# a week instead of staying in Redis for good; a fleet stopped longer re-seeds the store from the
# posteriors each worker saved in its state dir (LearningSync seeds a key that is missing).
LEARNING_KEEP_S = 7 * 86_400
_LINUCB_SUMS = """
local function linucb_sums(k, d, base, delta)
  local n = d * (d + 1) / 2 + d
  local have = redis.call('HMGET', k, 'dim', 'sums')
  if not have[1] and #base == 8 * n then
    redis.call('HSET', k, 'dim', d, 'sums', base)
    have = {tostring(d), base}
  end
  if tonumber(have[1]) ~= d or #have[2] ~= 8 * n or (#delta ~= 8 * n and #delta ~= 0) then
    return {0, tonumber(have[1]) or 0}
  end
  redis.call('PEXPIRE', k, KEEP_MS)
  if #delta == 0 then return {1, have[2]} end
  local sums, parts = have[2], {}
  for first = 1, n, CHUNK do
    local m = math.min(CHUNK, n - first + 1)
    local fmt = '<' .. string.rep('d', m)
    local from, to = 8 * (first - 1) + 1, 8 * (first - 1 + m)
    local a = {struct.unpack(fmt, string.sub(sums, from, to))}
    local b = {struct.unpack(fmt, string.sub(delta, from, to))}
    for j = 1, m do a[j] = a[j] + b[j] end
    parts[#parts + 1] = struct.pack(fmt, unpack(a, 1, m))
  end
  sums = table.concat(parts)
  redis.call('HSET', k, 'sums', sums)
  redis.call('PEXPIRE', k, KEEP_MS)
  return {1, sums}
end
""".replace("CHUNK", str(LINUCB_CHUNK)).replace("KEEP_MS", str(LEARNING_KEEP_S * 1000))

# One merge of the router's learning (state/learning.py) for every model, in one round trip.
# KEYS: per model its statistics hash, then per model its breaker hash, then per LinUCB model its
# sums hash (_LINUCB_SUMS). ARGV: worker id, now, stale after, the count of models and of LinUCB
# models (0 unless LinUCB is the bandit), then per model: base succ, fail, answers (set only when
# the hash is new: the posteriors every worker loaded), their deltas since this worker's last
# merge, its latency EWMA and error rate, its last trip and last close (wall seconds, 0 = none);
# then per LinUCB model its dim, base and delta. Sums are exact merges (each worker adds only
# what it saw); latency and error rate are the mean over workers heard from within `stale`
# seconds (one value per worker, so a dead worker's fades out); breaker times keep the latest.
# Returns {per model {succ, fail, answers, latency, error rate, opened, closed} as strings (a Lua
# number would come back truncated to an integer), per LinUCB model what _LINUCB_SUMS returns}.
_MERGE = _LINUCB_SUMS + """
local wid, now, stale = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local m, l = tonumber(ARGV[4]), tonumber(ARGV[5])
local out = {}
for i = 1, m do
  local a = 5 + (i - 1) * 10
  local k = KEYS[i]
  if redis.call('EXISTS', k) == 0 then
    redis.call('HSET', k, 'succ', ARGV[a + 1], 'fail', ARGV[a + 2], 'answers', ARGV[a + 3])
  end
  local succ = redis.call('HINCRBYFLOAT', k, 'succ', ARGV[a + 4])
  local fail = redis.call('HINCRBYFLOAT', k, 'fail', ARGV[a + 5])
  local answers = redis.call('HINCRBYFLOAT', k, 'answers', ARGV[a + 6])
  redis.call('HSET', k, 'lat:' .. wid, ARGV[a + 7], 'err:' .. wid, ARGV[a + 8], 'at:' .. wid, ARGV[2])
  local flat = redis.call('HGETALL', k)
  local lat, err, n = 0, 0, 0
  for j = 1, #flat, 2 do
    local f = flat[j]
    if string.sub(f, 1, 3) == 'at:' then
      local w = string.sub(f, 4)
      if tonumber(flat[j + 1]) >= now - stale then
        lat = lat + tonumber(redis.call('HGET', k, 'lat:' .. w))
        err = err + tonumber(redis.call('HGET', k, 'err:' .. w))
        n = n + 1
      else
        redis.call('HDEL', k, f, 'lat:' .. w, 'err:' .. w)
      end
    end
  end
  local h = KEYS[m + i]
  local s = redis.call('HMGET', h, 'opened', 'closed')
  local opened = math.max(tonumber(s[1]) or 0, tonumber(ARGV[a + 9]))
  local closed = math.max(tonumber(s[2]) or 0, tonumber(ARGV[a + 10]))
  redis.call('HSET', h, 'opened', tostring(opened), 'closed', tostring(closed))
  redis.call('PEXPIRE', k, KEEP_MS)
  redis.call('PEXPIRE', h, KEEP_MS)
  out[i] = {succ, fail, answers, tostring(lat / n), tostring(err / n), tostring(opened),
            tostring(closed)}
end
local lin = {}
for i = 1, l do
  local a = 5 + m * 10 + (i - 1) * 3
  lin[i] = linucb_sums(KEYS[2 * m + i], tonumber(ARGV[a + 1]), ARGV[a + 2], ARGV[a + 3])
end
return {out, lin}
""".replace("KEEP_MS", str(LEARNING_KEEP_S * 1000))


class RedisLearning:
    """The merge of state/learning.py on Redis; `merge` returns None when Redis is down (learning
    is best effort: it always fails open, and the deltas wait for the next merge)."""

    def __init__(self, client, prefix: str, guard: _Guard):
        self.r, self.prefix, self.guard = client, prefix, guard
        self._merge = client.register_script(_MERGE)

    async def merge(self, worker: str, now: float, stale_s: float, rows, linucb=()):
        """rows: per model (id, base (3), delta (3), latency, error rate, opened, closed);
        linucb: per model (id, dim, base, delta) — packed float64 vectors (LinUCB.packed()).
        Returns (per row the merged (succ, fail, answers, latency, error, opened, closed), per
        linucb row (merged vector, dim) or (None, the dim the store holds) when it refused the
        row), or None when Redis did not answer."""
        keys = ([self.prefix + "l:" + row[0] for row in rows] + [self.prefix + "h:" + row[0] for row in rows]
                + [self.prefix + "lin:" + row[0] for row in linucb])
        args = [worker, repr(now), repr(stale_s), len(rows), len(linucb)]
        for _, base, delta, lat, err, opened, closed in rows:
            args += [repr(float(x)) for x in (*base, *delta, lat, err, opened, closed)]
        for _, dim, base, delta in linucb:
            args += [dim, _packed(base), _packed(delta) if delta.any() else b""]
        out = await self.guard.call(lambda: self._merge(keys, args), None)
        if out is None:
            return None
        merged, lin = out
        pulled = []
        for (ok, body), (_, dim, _, _) in zip(lin, linucb):
            if ok:
                pulled.append((np.frombuffer(body, dtype="<f8").astype(np.float64), dim))
            else:
                pulled.append((None, int(body)))
        return [tuple(float(x) for x in row) for row in merged], pulled


def _packed(v) -> bytes:
    return np.ascontiguousarray(v, dtype="<f8").tobytes()


class RedisStores(Stores):
    """The stores on one client, with `admit` as one script (see _ADMIT)."""

    def __init__(self, client, counters: RedisCounters, budgets: RedisBudgets, nonces: RedisNonces,
                 learning: RedisLearning | None = None, prefix: str | None = None):
        super().__init__(counters, budgets, nonces, "redis", closer=client.aclose)
        self.client = client      # for the response cache (cache.py), which imports no redis
        self.prefix = prefix      # what every key starts with (a hash tag on a cluster: key_prefix)
        self._admit = _Batched(client, client.register_script(_ADMIT))
        self._epoch = client.register_script(_EPOCH)
        self._finish = client.register_script(_FINISH)
        self.learning = learning
        self.epoch = nonces.epoch

    async def start(self) -> None:
        """Read (or, on a Redis that has none, create) the epoch before serving: so the first
        request after a start never creates it, and is not refused for predating it. Redis
        unreachable: logged; the first script that reaches it later reads or creates it."""
        epoch = self.epoch
        try:
            out = await self.nonces.guard.call(lambda: self._epoch([epoch.key], [epoch.now_ms()]), None)
        except StoreUnavailable:
            out = None
        if out is None:
            log.warning("state store: Redis unreachable at start; the epoch (%s) is read on the "
                        "first call that reaches it", epoch.key)
            return
        epoch.observe(int(out[0]), bool(out[1]))

    def finish(self, buckets, amounts, gauges, holds, amount: int, actual: int) -> None:
        c, b = self.counters, self.budgets
        keys = ([c.prefix + x.key for x in buckets] + [c.prefix + g.key for g in gauges]
                + [b.prefix + h.key for h in holds])
        args = [len(buckets), len(gauges), len(holds)]
        for bucket, n in zip(buckets, amounts):
            args += (bucket.capacity, n)
        args += [amount] * len(holds)
        args.append(actual)
        c.background.send(self._finish, keys, args)

    async def admit(self, buckets, costs, now, gauges, holds, amount):
        c, b = self.counters, self.budgets
        # One call, two fail modes: refusing wins when budgets are at stake and fail closed
        # (money); otherwise the limits' mode decides.
        guard = b.guard if holds and not b.guard.fail_open else c.guard
        return await _admit(self._admit, guard, self.epoch, buckets, costs, now, gauges, holds,
                            amount, c.prefix, b.prefix)


def key_prefix(url: str, prefix: str) -> str:
    """The prefix every key gets. On a cluster it is a hash tag, so all of ATP's keys share one
    slot: each request's limits, a merge and a cache lookup are one multi-key Lua script, which a
    cluster runs only on keys of one slot (ATP's state then lives on one node, replicated as the
    cluster replicates it; a cluster is for availability here, not for sharding ATP)."""
    if url.startswith(CLUSTER_SCHEME) and not ("{" in prefix and "}" in prefix):
        return "{" + prefix + "}"
    return prefix


def _client(url: str, timeout_s: float):
    """The Redis client for a URL: one node (redis://, rediss://, unix://), the master that
    Redis Sentinel names (redis+sentinel://), found again after a failover, or a Redis Cluster
    (redis+cluster://: redirections and failovers followed by the cluster client)."""
    common = dict(socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                  retry=Retry(NoBackoff(), 0), retry_on_timeout=False)
    if url.startswith(CLUSTER_SCHEME):
        nodes, password = parse_cluster_url(url)
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], password=password,
                            socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    if url.startswith(SENTINEL_SCHEME):
        from redis.asyncio.sentinel import Sentinel
        sentinels, service, db, password = parse_sentinel_url(url)
        # The sentinel pool has no blocking variant: connections follow concurrency, which
        # admission already bounds (max_inflight requests, one Redis call each at a time).
        return Sentinel(sentinels, socket_timeout=timeout_s,
                        socket_connect_timeout=timeout_s).master_for(
            service, redis_class=aioredis.Redis, db=db, password=password, **common)
    # A blocking pool: past POOL_SIZE concurrent calls, a call waits for a free connection
    # (within the same timeout) instead of failing with "too many connections".
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=POOL_SIZE, timeout=timeout_s,
                                                    **common)
    return aioredis.Redis(connection_pool=pool)


def redis_stores(url: str, *, timeout_s: float, fail: dict, prefix: str = "atp:") -> Stores:
    """Stores on one Redis client. `fail` maps "limits" / "budgets" / "nonces" to open|closed.

    The client's own retries are off: a retry would multiply the time a request can wait on a
    dead Redis beyond `timeout_s`, and the guard's back-off already retries on later calls.
    """
    client = _client(url, timeout_s)
    prefix = key_prefix(url, prefix)
    epoch = StoreEpoch(prefix + "epoch")
    return RedisStores(
        client,
        RedisCounters(client, prefix + "c:", _Guard("limits", fail["limits"], timeout_s), epoch),
        RedisBudgets(client, prefix + "b:", _Guard("budgets", fail["budgets"], timeout_s), epoch),
        RedisNonces(client, prefix + "n:", _Guard("nonces", fail["nonces"], timeout_s), epoch),
        RedisLearning(client, prefix, _Guard("learning", FAIL_OPEN, timeout_s)), prefix=prefix)
