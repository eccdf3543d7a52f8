"""The shared-state interfaces (counters/token buckets, budgets, nonces) every store implements.

Two implementations exist: memory.py (one process, the embedded default) and redis.py (shared by
worker processes and hosts, atomic Lua scripts). Callers see only these interfaces, so the
limits stage and the tests are the same for both (tests/state/ runs one contract against each).

Conventions, kept by both implementations:

- A check over several items (one request hits a tenant, a key and a model rule) is all or
  nothing: either every item is taken/reserved, or none is and a `Denial` names the first item
  that did not fit. So a refusal never leaves a partial charge behind.
  `Stores.admit` extends that across the stores: buckets, gauges and budgets of one request
  together (one script, one round trip, on Redis).
- What runs in a stage's `after` (refund, release, settle) is not awaited: `after` is
  synchronous and must not wait on a network. The memory store applies it at once; the Redis
  store sends it in the background, and `drain()` waits for what is still being sent.
- `now` is wall-clock seconds (time.time()), passed in: buckets refill with it, and worker
  processes on several hosts share no monotonic clock.
- Money is integer USD micros (as in accounting.py), so sums are exact in Redis too.
"""
from typing import NamedTuple

from codec.errors import ErrorCode

from ..types import AtpError

FAIL_OPEN, FAIL_CLOSED = "open", "closed"
FAIL_MODES = (FAIL_OPEN, FAIL_CLOSED)


# Named tuples, not dataclasses: the limits stage builds some per request, and a frozen
# dataclass costs about three times as much to create.

class Bucket(NamedTuple):
    """A token bucket of `capacity` refilling at `rate_per_s` (full when new)."""

    key: str
    capacity: int
    rate_per_s: float


class Gauge(NamedTuple):
    """At most `limit` slots held at once under `key` (concurrent requests)."""

    key: str
    limit: int


class Hold(NamedTuple):
    """A budget of `limit` micros under `key`; the key lives `ttl_s` (its period and a grace)."""

    key: str
    limit: int
    ttl_s: int


class Denial(NamedTuple):
    """Item `index` of the request did not fit; waiting `retry_after_ms` may let it fit."""

    index: int
    retry_after_ms: int


class StoreUnavailable(AtpError):
    """The shared store did not answer in time and its fail mode is `closed`: refuse, retryable."""

    def __init__(self, store: str, problem: str, retry_after_ms: int):
        super().__init__(ErrorCode.UNAVAILABLE, f"state store for {store} unavailable ({problem}); "
                         "retry later", retry_after_ms)


class BelowFloor(AtpError):
    """A nonce's timestamp is below the shared store's floor: the store lost its data (a Redis
    restarted empty, redis.StoreEpoch), and a nonce recorded before may be this one."""

    def __init__(self, timestamp_ms: int, floor_ms: int):
        super().__init__(ErrorCode.STALE_TIMESTAMP, f"timestamp {timestamp_ms} is before {floor_ms}, "
                         "when the shared state store was found to have lost its data; retry with "
                         "a new timestamp (check the clock)")


class CounterStore:
    """Token buckets (requests/min, tokens/min) and gauges (concurrent requests)."""

    async def take(self, buckets: tuple[Bucket, ...], costs: tuple[int, ...],
                   now: float) -> tuple[Denial | None, tuple | None]:
        """Take costs[i] from every bucket i, or nothing. Returns (denial or None, tokens left per bucket
        after the take — for soft-limit alerts). Levels None: nothing was recorded (the store
        was unreachable and fails open), so there is nothing to refund."""
        raise NotImplementedError

    def refund(self, buckets: tuple[Bucket, ...], amounts: tuple[int, ...]) -> None:
        """Put `amounts` back (a reservation larger than what was used), capped at capacity."""
        raise NotImplementedError

    async def acquire(self, gauges: tuple[Gauge, ...]) -> tuple[Denial | None, bool]:
        """Hold one slot of every gauge, or none. Returns (denial or None, whether slots are
        held: False when the store was unreachable and fails open — release nothing then)."""
        raise NotImplementedError

    def release(self, gauges: tuple[Gauge, ...]) -> None:
        raise NotImplementedError

    async def level(self, key: str) -> int:
        """Slots held under a gauge key (for tests and status)."""
        raise NotImplementedError


class BudgetStore:
    """Spend against limits: reserve the most a request can cost before it runs, settle after."""

    async def reserve(self, holds: tuple[Hold, ...], amount: int) -> tuple[Denial | None, tuple | None]:
        """Reserve `amount` on every hold, or on none: it fits when spent + reserved + amount <= limit.
        Returns (denial or None, spent + reserved per hold afterwards). None: nothing was
        reserved (unreachable, fail open), so nothing is settled either."""
        raise NotImplementedError

    def settle(self, holds: tuple[Hold, ...], amount: int, actual: int) -> None:
        """Release the `amount` reserved on each hold and add `actual` micros to its spend (0 on
        error or cancel: nothing was charged)."""
        raise NotImplementedError

    async def usage(self, key: str) -> tuple[int, int]:
        """(spent, reserved) micros under a key."""
        raise NotImplementedError


class NonceStore:
    """Nonces seen within a TTL (anti-replay across workers)."""

    async def add(self, nonce: bytes, ttl_s: float, now: float, timestamp_ms: int | None = None) -> bool:
        """Remember `nonce` for `ttl_s`; False when it was already there (a replay). A shared
        store that may lose its data (Redis) also holds `timestamp_ms` against the floor it set
        when it found the loss, raising BelowFloor (STALE_TIMESTAMP) below it."""
        raise NotImplementedError


class Admitted(NamedTuple):
    """What `Stores.admit` did. `refused` names the kind that said no ("rate", "gauge",
    "budget") with its `denial`, and then nothing is held. Otherwise `levels` (tokens left per
    bucket) and `totals` (spent + reserved per hold) are None when nothing was recorded (the
    store failed open), and `held` says whether gauge slots are held."""

    refused: str | None
    denial: Denial | None
    levels: tuple | None
    held: bool
    totals: tuple | None


class Stores:
    """The three stores one App uses, and a way to wait for background writes and close."""

    def __init__(self, counters: CounterStore, budgets: BudgetStore, nonces: NonceStore,
                 kind: str, closer=None):
        self.counters, self.budgets, self.nonces = counters, budgets, nonces
        self.kind = kind                 # "memory" | "redis": what --workers may rely on
        self.learning = None             # shared: the router-learning merge (state/learning.py)
        self.epoch = None                # shared: how a store that lost its data is noticed (redis.StoreEpoch)
        self._closer = closer

    @property
    def shared(self) -> bool:
        return self.kind != "memory"

    async def admit(self, buckets, costs, now: float, gauges, holds, amount: int) -> Admitted:
        """Take the buckets, hold the gauges and reserve the holds — all of it or none.

        Here: the three stores in turn, undoing the earlier ones when a later one refuses or
        fails. (The Redis stores do it in one script: one round trip, and no moment when another
        worker sees a partial charge.)"""
        counters, levels, held, totals = self.counters, None, False, None
        if buckets:
            denial, levels = await counters.take(buckets, costs, now)
            if denial is not None:
                return Admitted("rate", denial, None, False, None)
        try:
            if gauges:
                denial, held = await counters.acquire(gauges)
                if denial is not None:
                    self._undo(buckets, costs, levels, gauges, False)
                    return Admitted("gauge", denial, None, False, None)
            if holds:
                denial, totals = await self.budgets.reserve(holds, amount)
                if denial is not None:
                    self._undo(buckets, costs, levels, gauges, held)
                    return Admitted("budget", denial, None, False, None)
        except BaseException:
            self._undo(buckets, costs, levels, gauges, held)
            raise
        return Admitted(None, None, levels, held, totals)

    def finish(self, buckets, amounts, gauges, holds, amount: int, actual: int) -> None:
        """What a request gives back when it ends, without waiting: `amounts` of tokens to the
        buckets, its slot of each gauge, and each hold's `amount` reserved settled at `actual`
        (Redis: one background script; see the stores' refund, release and settle)."""
        if buckets:
            self.counters.refund(buckets, amounts)
        if gauges:
            self.counters.release(gauges)
        if holds:
            self.budgets.settle(holds, amount, actual)

    def _undo(self, buckets, costs, levels, gauges, held: bool) -> None:
        if levels is not None and buckets:
            self.counters.refund(buckets, costs)
        if held:
            self.counters.release(gauges)

    async def start(self) -> None:
        """Before serving: a shared store reads what it needs to notice a later loss of its data."""

    async def drain(self) -> None:
        """Wait until every background refund/release/settle was sent."""
        for store in (self.counters, self.budgets):
            drain = getattr(store, "drain", None)
            if drain is not None:
                await drain()

    async def close(self) -> None:
        await self.drain()
        if self._closer is not None:
            await self._closer()
