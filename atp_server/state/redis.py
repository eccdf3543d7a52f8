"""Redis state stores: what worker processes and hosts share, each check one atomic Lua script.

The only module that talks to Redis (DESIGN §1). Every call is bounded by a timeout; when Redis
does not answer, the store's configured fail mode decides — `open` lets the request through
unrecorded, `closed` refuses it with a retryable UNAVAILABLE — and further calls skip Redis for
a short back-off instead of each waiting out the timeout. The first call after the back-off
tries again, so service resumes by itself when Redis returns. State changes are logged once.

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
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from .base import (FAIL_OPEN, Admitted, BudgetStore, CounterStore, Denial, NonceStore, Stores,
                   StoreUnavailable)

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


# Everything `before` needs in one script: take the buckets, hold the gauges, reserve the holds,
# all or nothing (one round trip; take, acquire and reserve alone are this script with the
# other two lists empty).
# KEYS: buckets, gauges, holds. ARGV: counts, now, gauge TTL, amount, then per bucket (capacity,
# rate, cost), per gauge (limit), per hold (limit, ttl). Returns {kind, index, wait ms} on a
# refusal (1 rate, 2 gauge, 3 budget), else {0, 0, 0, tokens left..., spent + reserved...}.
_ADMIT = """
local nb, ng, nh = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now, gttl, amount = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local a = 7
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
    return {1, i - 1, wait}
  end
  levels[i] = {tokens - cost, ts, cap, rate}
end
for i = 1, ng do
  if (tonumber(redis.call('GET', KEYS[nb + i])) or 0) >= tonumber(ARGV[a]) then return {2, i - 1, 0} end
  a = a + 1
end
for i = 1, nh do
  local limit, ttl = tonumber(ARGV[a]), ARGV[a + 1]
  a = a + 2
  local s = redis.call('HMGET', KEYS[nb + ng + i], 'spent', 'reserved')
  local total = (tonumber(s[1]) or 0) + (tonumber(s[2]) or 0)
  if total + amount > limit then return {3, i - 1, 0} end
  totals[i] = {total + amount, ttl}
end
local out = {0, 0, 0}
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


async def _admit(script, guard, buckets, costs, now, gauges, holds, amount, cprefix, bprefix):
    """Run _ADMIT under `guard`: an Admitted (all None/False when the guard fell back)."""
    keys = ([cprefix + x.key for x in buckets] + [cprefix + g.key for g in gauges]
            + [bprefix + h.key for h in holds])
    args = [len(buckets), len(gauges), len(holds), repr(now), GAUGE_TTL_MS, amount]
    for bucket, cost in zip(buckets, costs):
        args += (bucket.capacity, repr(bucket.rate_per_s), cost)
    args += [g.limit for g in gauges]
    for h in holds:
        args += (h.limit, h.ttl_s)
    out = await guard.call(lambda: script(keys, args), None)
    if out is None:
        return Admitted(None, None, None, False, None)
    if out[0]:
        return Admitted(_REFUSED[out[0]], Denial(int(out[1]), int(out[2])), None, False, None)
    n = len(buckets)
    return Admitted(None, None, tuple(int(x) for x in out[3:3 + n]), bool(gauges),
                    tuple(int(x) for x in out[3 + n:]))


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
        async with self.r.pipeline(transaction=False) as pipe:
            for script, keys, args in batch:
                await script(keys=keys, args=args, client=pipe)   # queues it in the pipeline
            await pipe.execute()

    async def drain(self) -> None:
        while self.flusher is not None:
            await asyncio.shield(self.flusher)


class RedisCounters(CounterStore):
    def __init__(self, client, prefix: str, guard: _Guard):
        self.r, self.prefix, self.guard = client, prefix, guard
        self._admit = client.register_script(_ADMIT)
        self._refund = client.register_script(_REFUND)
        self._release = client.register_script(_RELEASE)
        self.background = _Background(client, guard)

    async def take(self, buckets, costs, now):
        got = await _admit(self._admit, self.guard, buckets, costs, now, (), (), 0, self.prefix, "")
        return got.denial, got.levels

    def refund(self, buckets, amounts):
        keys = [self.prefix + b.key for b in buckets]
        args = []
        for b, amount in zip(buckets, amounts):
            args += (b.capacity, amount)
        self.background.send(self._refund, keys, args)

    async def acquire(self, gauges):
        got = await _admit(self._admit, self.guard, (), (), 0.0, gauges, (), 0, self.prefix, "")
        return got.denial, got.held

    def release(self, gauges):
        keys = [self.prefix + g.key for g in gauges]
        self.background.send(self._release, keys, [])

    async def level(self, key):
        return int(await self.r.get(self.prefix + key) or 0)

    async def drain(self):
        await self.background.drain()


class RedisBudgets(BudgetStore):
    def __init__(self, client, prefix: str, guard: _Guard):
        self.r, self.prefix, self.guard = client, prefix, guard
        self._admit = client.register_script(_ADMIT)
        self._settle = client.register_script(_SETTLE)
        self.background = _Background(client, guard)

    async def reserve(self, holds, amount):
        got = await _admit(self._admit, self.guard, (), (), 0.0, (), holds, amount, "", self.prefix)
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
    def __init__(self, client, prefix: str, guard: _Guard):
        self.r, self.prefix, self.guard = client, prefix, guard

    async def add(self, nonce, ttl_s, now):
        # SET NX PX is one atomic command: no script needed. Fail open = treat as new.
        ok = await self.guard.call(
            lambda: self.r.set(self.prefix + nonce.hex(), b"1", nx=True,
                               px=max(1, math.ceil(ttl_s * 1000))), True)
        return bool(ok)


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
  return {1, sums}
end
""".replace("CHUNK", str(LINUCB_CHUNK))

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
  out[i] = {succ, fail, answers, tostring(lat / n), tostring(err / n), tostring(opened),
            tostring(closed)}
end
local lin = {}
for i = 1, l do
  local a = 5 + m * 10 + (i - 1) * 3
  lin[i] = linucb_sums(KEYS[2 * m + i], tonumber(ARGV[a + 1]), ARGV[a + 2], ARGV[a + 3])
end
return {out, lin}
"""


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
                 learning: RedisLearning | None = None):
        super().__init__(counters, budgets, nonces, "redis", closer=client.aclose)
        self.client = client      # for the response cache (cache.py), which imports no redis
        self._admit = client.register_script(_ADMIT)
        self.learning = learning

    async def admit(self, buckets, costs, now, gauges, holds, amount):
        c, b = self.counters, self.budgets
        # One call, two fail modes: refusing wins when budgets are at stake and fail closed
        # (money); otherwise the limits' mode decides.
        guard = b.guard if holds and not b.guard.fail_open else c.guard
        return await _admit(self._admit, guard, buckets, costs, now, gauges, holds, amount,
                            c.prefix, b.prefix)


def redis_stores(url: str, *, timeout_s: float, fail: dict, prefix: str = "atp:") -> Stores:
    """Stores on one Redis client. `fail` maps "limits" / "budgets" / "nonces" to open|closed.

    The client's own retries are off: a retry would multiply the time a request can wait on a
    dead Redis beyond `timeout_s`, and the guard's back-off already retries on later calls.
    """
    # A blocking pool: past POOL_SIZE concurrent calls, a call waits for a free connection
    # (within the same timeout) instead of failing with "too many connections".
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=timeout_s, socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0), retry_on_timeout=False)
    client = aioredis.Redis(connection_pool=pool)
    return RedisStores(
        client, RedisCounters(client, prefix + "c:", _Guard("limits", fail["limits"], timeout_s)),
        RedisBudgets(client, prefix + "b:", _Guard("budgets", fail["budgets"], timeout_s)),
        RedisNonces(client, prefix + "n:", _Guard("nonces", fail["nonces"], timeout_s)),
        RedisLearning(client, prefix, _Guard("learning", FAIL_OPEN, timeout_s)))
