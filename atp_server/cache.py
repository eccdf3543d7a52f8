"""Response cache: exact match on the normalised request, per tenant, with a TTL and a size bound, in memory or Redis.

The key is the SHA-256 of the tenant and of everything in a request that can change the answer or
which model gives it: the model or alias asked for, tier and trade-off, budget and latency goals,
the messages (after redaction: placeholders, never the values), images and tool results, tools,
response format and every sampling parameter. The request id, the client's metadata, `user` and
`stream` are left out (a streamed and a whole request share entries). The tenant is hashed into
the key and prefixes it, so one tenant can never read another's entries.

An entry is the answer as the provider gave it (redaction placeholders included: each hit restores
its own request's values), its model and its token counts. Bounds: `max_entries`, `max_bytes`
(least recently used evicted first, by bytes) and `ttl_s`; an answer over an eighth of
`max_bytes` is not stored (one long answer must not flush the cache). In Redis the same bounds
hold across workers: one Lua script per lookup or store keeps the LRU index and the byte total.
"""
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Of max_bytes, the most one entry may take: 1/8 keeps at least eight answers resident.
ENTRY_SHARE = 8
# Background Redis stores in flight at most: a slow Redis must not grow memory with queued answers;
# 256 is ~0.3 s of stores at 1k cacheable req/s with a 1 ms round trip, ~0.5 MB of 2 KB answers.
MAX_PENDING_STORES = 256


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = False
    # "off": only requests that ask (x-atp-cache: on, metadata cache = "on") are cached;
    # "on": every request unless it says x-atp-cache: off.
    default: str = "off"
    # 5 minutes: an answer to the same question is reused within a session's retries and a
    # dashboard's refreshes, yet a changed model or prompt template shows within minutes.
    ttl_s: float = 300.0
    max_entries: int = 10_000       # bounds the index too: ~100 B per entry besides the answer
    max_bytes: int = 64 << 20       # 64 MiB of answers: ~30k answers of ~2 KB


MODES = ("off", "on")


def parse_cache(t: dict, fail) -> CacheConfig:
    known = ("enabled", "default", "ttl_s", "max_entries", "max_bytes")
    for k in t:
        if k not in known:
            fail(f"cache.{k}", f"unknown key (known: {', '.join(known)})")
    kw = {}
    if "enabled" in t:
        if not isinstance(t["enabled"], bool):
            fail("cache.enabled", f"must be true or false, got {t['enabled']!r}")
        kw["enabled"] = t["enabled"]
    if "default" in t:
        if t["default"] not in MODES:
            fail("cache.default", f"must be one of {', '.join(MODES)}, got {t['default']!r}")
        kw["default"] = t["default"]
    for k, lo in (("ttl_s", 0.001), ("max_entries", 1), ("max_bytes", 1024)):
        if k in t:
            v = t[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < lo:
                fail(f"cache.{k}", f"must be a number >= {lo}, got {v!r}")
            if k != "ttl_s" and not isinstance(v, int):
                fail(f"cache.{k}", f"must be an integer, got {v!r}")
            kw[k] = v
    return CacheConfig(**kw)


def request_key(tenant: str, r) -> str:
    """The cache key of a request for a tenant (see the module docstring for what counts)."""
    parts = (tenant, r.model or "", r.tier, r.cost_weight, r.min_quality, r.max_cost_usd,
             r.latency_slo_ms, r.max_tokens, r.temperature, r.top_p, r.seed, r.stop,
             r.presence_penalty, r.frequency_penalty, r.logit_bias, r.logprobs, r.top_logprobs,
             r.n, r.capabilities, r.parallel_tool_calls, repr(r.response_format), repr(r.tools),
             repr(r.tool_choice), r.messages, repr(r.details))
    return hashlib.sha256(orjson.dumps(parts, default=repr)).hexdigest()


def entry_bytes(model: str, text: str, finish, tokens: int) -> bytes:
    return orjson.dumps({"model": model, "text": text, "reason": finish.reason,
                         "in": finish.input_tokens, "out": finish.output_tokens, "tokens": tokens,
                         "tool_calls": [list(c) for c in finish.tool_calls or ()]})


class MemoryCache:
    """One process: an LRU by bytes with a TTL (monotonic clock)."""

    shared = False

    def __init__(self, config: CacheConfig, clock=time.monotonic):
        self.ttl_s, self.max_entries, self.max_bytes = config.ttl_s, config.max_entries, config.max_bytes
        self.clock = clock
        self.entries: OrderedDict = OrderedDict()   # tenant:key -> (expires, value)
        self.bytes = 0
        self.evicted = 0

    def get(self, tenant: str, key: str) -> bytes | None:
        k = f"{tenant}:{key}"
        found = self.entries.get(k)
        if found is None:
            return None
        if found[0] <= self.clock():
            self._drop(k)
            return None
        self.entries.move_to_end(k)
        return found[1]

    def put(self, tenant: str, key: str, value: bytes) -> bool:
        if len(value) > self.max_bytes // ENTRY_SHARE:
            return False
        k = f"{tenant}:{key}"
        if k in self.entries:
            self._drop(k)
        self.entries[k] = (self.clock() + self.ttl_s, value)
        self.bytes += len(value)
        while self.bytes > self.max_bytes or len(self.entries) > self.max_entries:
            self._drop(next(iter(self.entries)))
            self.evicted += 1
        return True

    def _drop(self, k: str) -> None:
        _, value = self.entries.pop(k)
        self.bytes -= len(value)

    def size(self) -> tuple[int, int]:
        return len(self.entries), self.bytes

    async def close(self) -> None:
        return None


# KEYS: entry, lru zset, sizes hash, total counter; ARGV: member, now_ms, [value, ttl_ms, max_bytes,
# max_entries]. Expired entries leave their size counted until the LRU pass meets them (lazy).
_GET = """
local v = redis.call('GET', KEYS[1])
if not v then
  local size = redis.call('HGET', KEYS[3], ARGV[1])
  if size then
    redis.call('HDEL', KEYS[3], ARGV[1]); redis.call('ZREM', KEYS[2], ARGV[1])
    redis.call('DECRBY', KEYS[4], size)
  end
  return false
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return v
"""
_PUT = """
local old = redis.call('HGET', KEYS[3], ARGV[1])
if old then redis.call('DECRBY', KEYS[4], old) end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
redis.call('HSET', KEYS[3], ARGV[1], #ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
local total = redis.call('INCRBY', KEYS[4], #ARGV[3])
local evicted = 0
while total > tonumber(ARGV[5]) or redis.call('ZCARD', KEYS[2]) > tonumber(ARGV[6]) do
  local oldest = redis.call('ZPOPMIN', KEYS[2])
  if #oldest == 0 then break end
  local size = redis.call('HGET', KEYS[3], oldest[1]) or 0
  redis.call('HDEL', KEYS[3], oldest[1]); redis.call('DEL', ARGV[7] .. oldest[1])
  total = redis.call('DECRBY', KEYS[4], size)
  evicted = evicted + 1
end
return evicted
"""


class RedisCache:
    """Shared by every worker, through the state store's Redis client (state/redis.py is the only
    module that imports redis): entries with PX TTLs plus an LRU index and a byte total, updated
    by one script per call. A Redis that fails is a miss (the request goes upstream): the cache
    is an optimisation, never a reason to refuse."""

    shared = True

    def __init__(self, config: CacheConfig, client, prefix: str):
        self.ttl_ms = max(1, round(config.ttl_s * 1000))
        self.max_entries, self.max_bytes = config.max_entries, config.max_bytes
        self.r, self.prefix = client, prefix + "cache:"
        self.index = [self.prefix + "lru", self.prefix + "sizes", self.prefix + "bytes"]
        self._get, self._put = client.register_script(_GET), client.register_script(_PUT)
        self.evicted = self.errors = 0
        self.pending: set = set()

    async def get(self, tenant: str, key: str) -> bytes | None:
        member = f"{tenant}:{key}"
        try:
            return await self._get(keys=[self.prefix + "e:" + member, *self.index],
                                   args=[member, int(time.time() * 1000)])
        except Exception:            # RedisError, timeouts: a miss, counted
            self.errors += 1
            return None

    def put(self, tenant: str, key: str, value: bytes) -> bool:
        """Store in the background (a stage's after() never waits on a network)."""
        if len(value) > self.max_bytes // ENTRY_SHARE or len(self.pending) >= MAX_PENDING_STORES:
            return False                 # too big, or Redis is not keeping up: skip this store
        import asyncio
        task = asyncio.ensure_future(self._store(f"{tenant}:{key}", value))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)
        return True

    async def _store(self, member: str, value: bytes) -> None:
        try:
            evicted = await self._put(   # awaited first: `x += await` would lose concurrent adds
                keys=[self.prefix + "e:" + member, *self.index],
                args=[member, int(time.time() * 1000), value, self.ttl_ms, self.max_bytes,
                      self.max_entries, self.prefix + "e:"])
            self.evicted += evicted
        except Exception:
            self.errors += 1

    async def drain(self) -> None:
        import asyncio
        if self.pending:
            await asyncio.gather(*list(self.pending), return_exceptions=True)

    async def size(self) -> tuple[int, int]:
        n = await self.r.zcard(self.index[0])
        total = await self.r.get(self.index[2])
        return int(n), int(total or 0)

    async def close(self) -> None:
        await self.drain()


def open_cache(config: CacheConfig, stores, prefix: str = "atp:"):
    """The cache next to the state stores: Redis when they are shared, else in memory."""
    client = getattr(stores, "client", None)
    if stores.shared and client is not None:   # the stores' own prefix: a hash tag on a cluster
        return RedisCache(config, client, getattr(stores, "prefix", None) or prefix)
    return MemoryCache(config)


class CacheCounters:
    """Hits, misses, stores and what the hits saved; exported on /metrics (no labels)."""

    def __init__(self, store):
        self.store = store
        self.hits = self.misses = self.stored = 0
        self.saved_micros = 0

    def describe(self):
        return []

    def collect(self):
        yield CounterMetricFamily("atp_cache_hits", "Requests answered from the response cache",
                                  value=self.hits)
        yield CounterMetricFamily("atp_cache_misses", "Cacheable requests not in the cache",
                                  value=self.misses)
        yield CounterMetricFamily("atp_cache_stores", "Answers stored in the cache", value=self.stored)
        yield CounterMetricFamily("atp_cache_saved_usd", "What the cache hits would have cost "
                                  "upstream (the savings)", value=self.saved_micros / 1e6)
        yield CounterMetricFamily("atp_cache_evictions", "Entries evicted to stay within "
                                  "max_entries / max_bytes", value=self.store.evicted)
        if not self.store.shared:
            n, size = self.store.size()
            yield GaugeMetricFamily("atp_cache_entries", "Entries in the cache", value=n)
            yield GaugeMetricFamily("atp_cache_bytes", "Bytes of answers in the cache", value=size)
