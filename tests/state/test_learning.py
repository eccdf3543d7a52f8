"""state/learning.py: two routers (two workers) merge posteriors, latency and breakers through
one real Redis; sums are exact, nothing observed during a merge is lost, outages only delay."""
import asyncio

import pytest

from atp_server import config as atp_config
from atp_server.routing.health import Signal, State
from atp_server.routing.report import Answered, Failed, report
from atp_server.routing.router import Router
from atp_server.state.learning import LearningSync

from .conftest import redis_stores_for
from .redis_server import RedisServer

MODEL = "sim-fast"


class Clock:
    """The pipeline's monotonic clock, set by the test (the breaker's cooldown reads it)."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def worker(store, name: str, clock: Clock, restored_succ: float = 0.0) -> LearningSync:
    """A worker's router and its merge; `restored_succ`: what its start restored for MODEL."""
    router = Router(list(atp_config.load().models))
    router.ref.table.stats.succ[router.ref.table.index[MODEL]] = restored_succ
    return LearningSync(router, store, 1.0, clock, worker=name, wall=lambda: clock.now + 1e9)


def row(sync: LearningSync, model: str = MODEL) -> int:
    return sync.router.ref.table.index[model]


def stats(sync: LearningSync, model: str = MODEL):
    s, i = sync.router.ref.table.stats, row(sync, model)
    return float(s.succ[i]), float(s.fail[i]), int(s.answers[i])


def observe(sync: LearningSync, outcome, times: int = 1) -> None:
    for _ in range(times):
        report(sync.router.ref.table, outcome, 0.0)


@pytest.fixture
def own_redis():
    server = RedisServer().start()
    yield server
    server.stop()


def run(coro_fn, url: str):
    async def go():
        stores = redis_stores_for(url, timeout_s=0.5)
        try:
            return await coro_fn(stores.learning)
        finally:
            await stores.close()
    return asyncio.run(go())


def test_sums_merge_exactly_and_latency_averages(redis_server):
    async def go(store):
        clock = Clock()
        a, b = worker(store, "a", clock), worker(store, "b", clock)
        observe(a, Failed(MODEL), 3)
        observe(b, Answered(MODEL, 100.0), 2)
        observe(b, Failed(MODEL))
        for sync in (a, b, a):            # a's second merge pulls what b pushed
            assert await sync.merge_once()
        assert stats(a) == stats(b) == (0.0, 4.0, 6)
        observe(a, Failed(MODEL))         # more after a merge: only the delta goes out
        assert await a.merge_once() and await b.merge_once()
        assert stats(b) == (0.0, 5.0, 7)
        s_a, s_b = a.router.ref.table.stats, b.router.ref.table.stats
        s_a.lat_ewma[row(a)] = 100.0
        assert await a.merge_once()
        s_b.lat_ewma[row(b)] = 300.0
        assert await b.merge_once()
        assert s_b.lat_ewma[row(b)] == 200.0       # the mean of each worker's last value
        for _ in range(6):                          # each merges the mean on: they converge
            assert await a.merge_once() and await b.merge_once()
        assert abs(s_a.lat_ewma[row(a)] - s_b.lat_ewma[row(b)]) < 5.0
    run(go, redis_server.url)


def test_an_observation_made_while_merging_is_kept(redis_server):
    class Meanwhile:
        """The store, with a request ending on this worker while the merge is on the wire."""

        def __init__(self, store):
            self.store, self.sync = store, None

        async def merge(self, *args):
            out = await self.store.merge(*args)
            observe(self.sync, Failed(MODEL))
            return out

    async def go(store):
        clock = Clock()
        wrapped = Meanwhile(store)
        a = worker(wrapped, "a", clock)
        wrapped.sync = a
        observe(a, Failed(MODEL), 2)
        assert await a.merge_once()
        assert stats(a)[1] == 3.0          # 2 merged + 1 during the merge
        b = worker(store, "b", clock)
        assert await b.merge_once()
        assert stats(b)[1] == 2.0          # the third is pushed with a's next merge
        assert await a.merge_once() and await b.merge_once()
        assert stats(b)[1] == 3.0 and stats(a)[1] == 4.0   # (and one more during that merge)
    run(go, redis_server.url)


def test_the_first_worker_seeds_the_store_with_the_loaded_posteriors(redis_server):
    async def go(store):
        clock = Clock()
        # both restored the same posterior file at start
        a, b = worker(store, "a", clock, 7.0), worker(store, "b", clock, 7.0)
        assert await a.merge_once() and await b.merge_once()
        assert stats(a)[0] == stats(b)[0] == 7.0   # once, not twice
    run(go, redis_server.url)


def test_a_breaker_one_worker_opens_opens_in_the_other_and_closes_too(redis_server):
    async def go(store):
        clock = Clock()
        a, b = worker(store, "a", clock), worker(store, "b", clock)
        board_a, board_b = a.router.health, b.router.health
        for _ in range(board_a.threshold):
            board_a.report(MODEL, Signal.FAULT, clock.now)
        assert board_a.is_open(MODEL, clock.now) and not board_b.is_open(MODEL, clock.now)
        assert await a.merge_once() and await b.merge_once()
        assert board_b.is_open(MODEL, clock.now)
        assert not board_b.admits(MODEL, clock.now)
        clock.now += board_a.cooldown_s    # a's probe answers: closed again
        assert board_a.report(MODEL, Signal.DISPATCH, clock.now).name == "PROBE"
        board_a.report(MODEL, Signal.PROBE_OK, clock.now + 0.1)
        assert board_a.state(MODEL, clock.now) is State.CLOSED
        assert await a.merge_once() and await b.merge_once()
        assert board_b.state(MODEL, clock.now) is State.CLOSED and board_b.all_closed()
    run(go, redis_server.url)


def test_redis_down_delays_the_merge_and_loses_nothing(own_redis):
    async def go(store):
        clock = Clock()
        a, b = worker(store, "a", clock), worker(store, "b", clock)
        assert await a.merge_once()
        own_redis.stop()
        observe(a, Failed(MODEL), 2)
        assert not await a.merge_once()    # within the timeout, and the deltas stay
        own_redis.start()
        a.store.guard.down_until = 0.0     # skip the back-off (0.5 s) instead of waiting it out
        assert await a.merge_once() and await b.merge_once()
        assert stats(b)[1] == 2.0
    run(go, own_redis.url)


def test_wake_merges_at_once_but_not_for_its_own_adoptions(redis_server):
    async def go(store):
        clock = Clock()
        a = worker(store, "a", clock)
        a.interval_s = 3600                # only a wake can make it merge during this test
        a.start()
        try:
            a.wake()
            while a.merges == 0:           # the merge task runs on this loop
                await asyncio.sleep(0)
            a._adopting = True
            a.wake()
            assert not a._wake.is_set()
        finally:
            a._adopting = False
            await a.stop()
        assert a.merges == 2               # the woken one and the last one at stop
    run(go, redis_server.url)
