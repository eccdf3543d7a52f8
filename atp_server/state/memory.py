"""In-process state stores: the embedded default (one worker; nothing to run beside the server).

Every method finishes without yielding to the event loop, so a check-then-take over several
items is atomic with respect to other coroutines, as a Lua script is in Redis.
"""
import math
import time
from collections import OrderedDict

from .base import Bucket, BudgetStore, CounterStore, Denial, Gauge, Hold, NonceStore, Stores


def wait_ms(missing: float, rate_per_s: float) -> int:
    """How long until a bucket refilling at `rate_per_s` has `missing` more tokens."""
    if rate_per_s <= 0:
        return 0
    return max(1, math.ceil(missing / rate_per_s * 1000))


class MemoryCounters(CounterStore):
    """Buckets as [tokens, last refill time]; gauges as ints. Keys come from configured rules and
    authenticated tenants/keys, never from request bodies, so the dicts stay bounded."""

    def __init__(self):
        self._buckets: dict[str, list] = {}
        self._gauges: dict[str, int] = {}

    def _level(self, b: Bucket, now: float) -> list:
        state = self._buckets.get(b.key)
        if state is None:
            state = self._buckets[b.key] = [float(b.capacity), now]
        elif now > state[1]:
            state[0] = min(float(b.capacity), state[0] + (now - state[1]) * b.rate_per_s)
            state[1] = now
        return state

    async def take(self, buckets, costs, now):
        states = [self._level(b, now) for b in buckets]
        for i, (b, cost, state) in enumerate(zip(buckets, costs, states)):
            if state[0] < cost:
                return Denial(i, wait_ms(cost - state[0], b.rate_per_s)), None
        for cost, state in zip(costs, states):
            state[0] -= cost
        return None, tuple(int(s[0]) for s in states)

    def refund(self, buckets, amounts):
        for b, amount in zip(buckets, amounts):
            state = self._buckets.get(b.key)
            if state is not None and amount > 0:
                state[0] = min(float(b.capacity), state[0] + amount)

    async def acquire(self, gauges):
        levels = self._gauges
        for i, g in enumerate(gauges):
            if levels.get(g.key, 0) >= g.limit:
                return Denial(i, 0), False
        for g in gauges:
            levels[g.key] = levels.get(g.key, 0) + 1
        return None, True

    def release(self, gauges):
        levels = self._gauges
        for g in gauges:
            left = levels.get(g.key, 0) - 1
            if left > 0:
                levels[g.key] = left
            else:
                levels.pop(g.key, None)

    async def level(self, key):
        return self._gauges.get(key, 0)


class MemoryBudgets(BudgetStore):
    """Per key [spent, reserved, expires at]. Keys carry their period (day/month), so old periods
    are swept when a new key appears after they expired: memory is bounded by live periods."""

    def __init__(self, clock=time.time):
        self._entries: dict[str, list] = {}
        self._clock = clock

    def _entry(self, h: Hold, now: float) -> list:
        entry = self._entries.get(h.key)
        if entry is None:
            self._sweep(now)
            entry = self._entries[h.key] = [0, 0, now + h.ttl_s]
        return entry

    def _sweep(self, now: float) -> None:
        for key in [k for k, e in self._entries.items() if e[2] <= now and e[1] == 0]:
            del self._entries[key]

    async def reserve(self, holds, amount):
        now = self._clock()
        entries = [self._entry(h, now) for h in holds]
        for i, (h, e) in enumerate(zip(holds, entries)):
            if e[0] + e[1] + amount > h.limit:
                return Denial(i, 0), None
        for e in entries:
            e[1] += amount
        return None, tuple(e[0] + e[1] for e in entries)

    def settle(self, holds, amount, actual):
        for h in holds:
            e = self._entries.get(h.key)
            if e is None:     # cannot happen while reserved: the sweep keeps reserved entries
                continue
            e[1] -= amount
            e[0] += actual

    async def usage(self, key):
        e = self._entries.get(key)
        return (e[0], e[1]) if e else (0, 0)


class MemoryNonces(NonceStore):
    """Nonces in insertion order with their expiry; at most `capacity` live ones (the oldest
    live nonce is evicted beyond that — the codec's own cache refuses instead; this one backs a
    skew-windowed check, where an evicted nonce is also outside the window at the sizes used)."""

    def __init__(self, capacity: int = 100_000):
        self.capacity = capacity
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    async def add(self, nonce, ttl_s, now, timestamp_ms=None):
        # timestamp_ms unused: this store lives and dies with the process (whose start sets the
        # nonce cache's floor, auth.load_nonces), so it never loses nonces behind its back.
        seen = self._seen
        while seen:   # expiries are in insertion order when the TTL is one per store
            oldest, expires = next(iter(seen.items()))
            if expires > now and len(seen) < self.capacity:
                break
            del seen[oldest]
        expires = seen.get(nonce)
        if expires is not None:
            if expires > now:
                return False
            del seen[nonce]           # expired: re-added at the end, keeping expiry order
        seen[nonce] = now + ttl_s
        return True


def memory_stores(nonce_capacity: int = 100_000) -> Stores:
    return Stores(MemoryCounters(), MemoryBudgets(), MemoryNonces(nonce_capacity), "memory")
