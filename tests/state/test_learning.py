"""state/learning.py: two routers (two workers) merge posteriors, latency and breakers through
one real Redis; sums are exact, nothing observed during a merge is lost, outages only delay."""
import asyncio
import dataclasses

import logging

import numpy as np
import pytest

from atp_server import config as atp_config
from atp_server.routing.bandit import LinUCB
from atp_server.routing.config import RoutingConfig
from atp_server.routing.kernels import N_DENSE
from atp_server.routing.health import Signal, State
from atp_server.routing.report import Answered, Failed, Scored, report
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


# ---- LinUCB's sums (A = λI + Σ x xᵀ, b = Σ r x): merged exactly, like succ/fail ----------------

OTHER = "sim-high"
PRIOR = 0.5                      # the predicted quality the residuals are taken against


def linucb_worker(store, name: str, clock: Clock, bandit: str = "linucb", restore=None) -> LearningSync:
    """A worker whose router runs `bandit`; restore(router): what its start restored."""
    router = Router(list(atp_config.load().models), policy=RoutingConfig(bandit=bandit))
    if restore is not None:
        restore(router)
    return LearningSync(router, store, 1.0, clock, worker=name, wall=lambda: clock.now + 1e9)


class Reference:
    """One LinUCB that saw every worker's observations: what each worker must hold after merging."""

    def __init__(self, sync: LearningSync):
        self.index = dict(sync.router.ref.table.index)
        self.lin = LinUCB(len(self.index), N_DENSE)

    def matches(self, sync: LearningSync, models=None) -> bool:
        """Every model's A, A⁻¹ and b (or those of `models`) as the reference has them, by id."""
        table = sync.router.ref.table
        lin, mine = self.lin, table.bandit
        return all(np.allclose(getattr(mine, k)[table.index[m]], getattr(lin, k)[self.index[m]],
                               rtol=1e-12, atol=1e-12)
                   for m in (models or self.index) for k in ("A", "A_inv", "b"))


def teach(sync: LearningSync, ref: Reference | None, model: str, rng, times: int = 1) -> None:
    """`times` scored answers of `model` with random prompt features, into the worker and the
    reference alike."""
    table = sync.router.ref.table
    for _ in range(times):
        x = rng.random(N_DENSE)
        x[0] = 1.0                                       # the bias feature
        score = float(rng.random())
        report(table, Scored(model, score, x, PRIOR), 0.0)
        if ref is not None:
            ref.lin.update(ref.index[model], x, score - PRIOR)


def test_linucb_sums_merge_exactly_across_workers(redis_server):
    async def go(store):
        clock, rng = Clock(), np.random.default_rng(1)
        a, b = linucb_worker(store, "a", clock), linucb_worker(store, "b", clock)
        ref = Reference(a)
        teach(a, ref, MODEL, rng, 5)
        teach(b, ref, MODEL, rng, 2)
        teach(b, ref, OTHER, rng, 3)
        assert not ref.matches(a) and not ref.matches(b)
        for sync in (a, b, a):            # a's second merge pulls what b pushed
            assert await sync.merge_once()
        assert ref.matches(a) and ref.matches(b)
        # the merged A⁻¹ is the inverse of the merged A, and θ = A⁻¹ b moved for both models
        lin = a.router.ref.table.bandit
        assert np.allclose(lin.A_inv @ lin.A, np.eye(N_DENSE), atol=1e-9)
        assert np.abs(lin.b[row(a, OTHER)]).sum() > 0
    run(go, redis_server.url)


def test_linucb_deltas_are_not_counted_twice_over_several_merges(redis_server):
    async def go(store):
        clock, rng = Clock(), np.random.default_rng(2)
        a, b = linucb_worker(store, "a", clock), linucb_worker(store, "b", clock)
        ref = Reference(a)
        for round_ in range(4):
            teach(a, ref, MODEL, rng, 3)
            if round_ % 2:
                teach(b, ref, OTHER, rng, 2)
            for _ in range(2):            # merging with nothing new changes nothing
                assert await a.merge_once() and await b.merge_once()
        assert await a.merge_once()
        assert ref.matches(a) and ref.matches(b)
    run(go, redis_server.url)


def test_a_linucb_update_made_while_merging_is_kept(redis_server):
    class Meanwhile:
        """The store, with a scored answer arriving on this worker while the merge is on the wire."""

        def __init__(self, store):
            self.store, self.sync, self.ref, self.rng = store, None, None, np.random.default_rng(3)
            self.busy = True

        async def merge(self, *args):
            out = await self.store.merge(*args)
            if self.busy:
                teach(self.sync, self.ref, MODEL, self.rng)
            return out

    async def go(store):
        clock, rng = Clock(), np.random.default_rng(4)
        wrapped = Meanwhile(store)
        a = linucb_worker(wrapped, "a", clock)
        ref = wrapped.ref = Reference(a)
        wrapped.sync = a
        teach(a, ref, MODEL, rng, 2)
        assert await a.merge_once()
        assert ref.matches(a)             # 2 merged + 1 during the merge, on top
        b = linucb_worker(store, "b", clock)
        assert await b.merge_once()
        assert not ref.matches(b)         # the third goes out with a's next merge
        assert await a.merge_once() and await b.merge_once()
        lin_a, lin_b = a.router.ref.table.bandit, b.router.ref.table.bandit
        # b holds everything but the one that arrived during a's second merge: one x xᵀ apart
        assert np.linalg.matrix_rank(lin_a.A[row(a)] - lin_b.A[row(b)], tol=1e-9) == 1
        assert ref.matches(a)
        wrapped.busy = False              # a quiet merge: b catches up, nothing was lost
        assert await a.merge_once() and await b.merge_once()
        assert ref.matches(a) and ref.matches(b)
    run(go, redis_server.url)


def test_linucb_deltas_wait_out_a_redis_outage(own_redis):
    async def go(store):
        clock, rng = Clock(), np.random.default_rng(5)
        a, b = linucb_worker(store, "a", clock), linucb_worker(store, "b", clock)
        ref = Reference(a)
        teach(a, ref, MODEL, rng, 2)
        assert await a.merge_once()
        own_redis.stop()
        teach(a, ref, MODEL, rng, 3)
        assert not await a.merge_once()    # the deltas stay
        teach(a, ref, OTHER, rng, 1)
        assert not await a.merge_once()
        own_redis.start()                  # empty: a reseeds it with its last merged sums
        a.store.guard.down_until = 0.0     # skip the back-off (0.5 s) instead of waiting it out
        assert await a.merge_once() and await b.merge_once()
        assert ref.matches(a) and ref.matches(b)
    run(go, own_redis.url)


def test_a_reload_that_changes_the_model_set_neither_loses_nor_subtracts(redis_server):
    async def go(store):
        clock, rng = Clock(), np.random.default_rng(6)
        a, b = linucb_worker(store, "a", clock), linucb_worker(store, "b", clock)
        ref = Reference(a)
        specs = list(a.router.models.values())
        teach(a, ref, OTHER, rng, 3)
        teach(a, ref, MODEL, rng, 2)
        assert await a.merge_once() and await b.merge_once()
        # a reload drops OTHER and adds a model the others do not have
        added = dataclasses.replace(specs[0], id="sim-added")
        a.router.set_models([m for m in specs if m.id != OTHER] + [added])
        teach(a, None, "sim-added", rng, 2)
        teach(a, ref, MODEL, rng, 1)
        assert await a.merge_once() and await b.merge_once()
        assert ref.matches(b) and OTHER not in a.base and OTHER not in a.lin_base
        # and a second reload brings OTHER back with fresh (prior) sums: no negative delta
        a.router.set_models(specs)
        assert await a.merge_once() and await b.merge_once()
        assert ref.matches(b) and ref.matches(a)     # a adopted the merged OTHER again
        # two reloads between merges: MODEL dropped and back, fresh — still nothing subtracted
        a.router.set_models([m for m in specs if m.id != MODEL])
        a.router.set_models(specs)
        assert stats(a) == (0.0, 0.0, 0)
        assert await a.merge_once() and await b.merge_once()
        assert ref.matches(b) and ref.matches(a)
        assert stats(a) == stats(b) and stats(b)[0] > 0
    run(go, redis_server.url)


def test_a_table_swapped_during_the_merge_keeps_what_it_sent_counted_once(redis_server):
    class Reloading:
        """The store, with a reload (the same models in another order) while the merge is on the wire."""

        def __init__(self, store):
            self.store, self.router, self.once = store, None, True

        async def merge(self, *args):
            out = await self.store.merge(*args)
            if self.once:
                self.once = False
                self.router.set_models(list(reversed(list(self.router.models.values()))))
            return out

    async def go(store):
        clock, rng = Clock(), np.random.default_rng(7)
        wrapped = Reloading(store)
        a = linucb_worker(wrapped, "a", clock)
        wrapped.router = a.router
        b = linucb_worker(store, "b", clock)
        ref = Reference(a)
        teach(a, ref, MODEL, rng, 4)
        observe(a, Failed(MODEL), 2)
        before = a.router.ref.table
        assert await a.merge_once()
        assert a.router.ref.table is not before and row(a) != before.index[MODEL]
        teach(a, ref, OTHER, rng, 1)
        for _ in range(2):
            assert await a.merge_once() and await b.merge_once()
        assert ref.matches(a) and ref.matches(b)
        assert stats(a)[2] == stats(b)[2] == 2       # the answer counts (Beta sums): once, not twice
        assert stats(a) == pytest.approx(stats(b))
    run(go, redis_server.url)


def test_a_worker_with_another_dim_is_skipped_and_logged_once(redis_server, caplog):
    async def go(store):
        clock, rng = Clock(), np.random.default_rng(8)
        a, b = linucb_worker(store, "a", clock), linucb_worker(store, "b", clock)
        ref = Reference(a)

        def narrow(router):                         # another trained router: 5 features
            router.ref.table.bandit = LinUCB(len(router.models), 5)
        c = linucb_worker(store, "c", clock, restore=narrow)
        teach(a, ref, MODEL, rng, 3)
        assert await a.merge_once()
        lin_c = c.router.ref.table.bandit
        lin_c.update(row(c), np.ones(5), 0.25)
        own = lin_c.A.copy(), lin_c.A_inv.copy(), lin_c.b.copy()
        with caplog.at_level(logging.WARNING, logger="atp.state"):
            assert await c.merge_once() and await c.merge_once()
        skipped = [m for m in caplog.messages if "LinUCB sums of" in m and "skipped" in m]
        assert len(skipped) == 3 and "dim 17" in skipped[0] and "dim 5" in skipped[0]
        assert c.refused == set(c.router.models)
        assert all(np.array_equal(x, y) for x, y in zip(own, (lin_c.A, lin_c.A_inv, lin_c.b)))
        assert await b.merge_once()
        assert ref.matches(b)                       # the store's sums: untouched by c
    run(go, redis_server.url)


def test_thompson_and_ucb_send_no_matrices(redis_server):
    async def go(store):
        clock = Clock()
        for bandit in ("thompson", "ucb"):
            w = linucb_worker(store, bandit, clock, bandit=bandit)
            observe(w, Failed(MODEL), 1)
            assert await w.merge_once()
        assert await store.r.exists(store.prefix + "lin:" + MODEL) == 0
        assert await store.r.exists(store.prefix + "l:" + MODEL) == 1
    run(go, redis_server.url)


def test_restored_linucb_sums_seed_the_store_once(redis_server):
    async def go(store):
        clock, rng = Clock(), np.random.default_rng(9)
        first = linucb_worker(store, "first", clock)
        ref = Reference(first)
        teach(first, ref, MODEL, rng, 4)           # what the posterior file holds

        def restore(router):                        # both workers loaded that file at start
            lin = router.ref.table.bandit
            lin.A[:], lin.A_inv[:], lin.b[:] = (getattr(ref.lin, k) for k in ("A", "A_inv", "b"))
        a = linucb_worker(store, "a", clock, restore=restore)
        b = linucb_worker(store, "b", clock, restore=restore)
        teach(b, ref, OTHER, rng, 1)
        assert await a.merge_once() and await b.merge_once() and await a.merge_once()
        assert ref.matches(a) and ref.matches(b)    # the file's sums once, not twice
    run(go, redis_server.url)


def test_corrupt_stored_sums_are_left_alone_and_never_adopted(redis_server, caplog):
    async def go(store):
        clock, rng = Clock(), np.random.default_rng(10)
        a = linucb_worker(store, "a", clock)
        teach(a, None, MODEL, rng, 2)
        assert await a.merge_once()
        lin = a.router.ref.table.bandit
        n = len(lin.packed()[0])
        short, nans = b"\0" * 8, np.full(n, np.nan).astype("<f8").tobytes()
        for blob in (short, nans):
            await store.r.hset(store.prefix + "lin:" + MODEL, "sums", blob)
            teach(a, None, MODEL, rng, 1)
            own = lin.A.copy(), lin.A_inv.copy(), lin.b.copy()
            with caplog.at_level(logging.WARNING, logger="atp.state"):
                assert await a.merge_once()
            assert all(np.array_equal(x, y) for x, y in zip(own, (lin.A, lin.A_inv, lin.b)))
            assert MODEL in a.refused
            a.refused.clear()             # log the next one too
            stored = await store.r.hget(store.prefix + "lin:" + MODEL, "sums")
            assert stored == short or np.isnan(np.frombuffer(stored)).all()
        assert [m for m in caplog.messages if "skipped" in m and MODEL in m][-1].endswith(
            "non-finite values, this worker dim 17 (another trained router or version?)")
        # a merged A that is no LinUCB sum (zeros stored + this worker's rank-2 delta): kept its own
        await store.r.hset(store.prefix + "lin:" + MODEL, "sums", np.zeros(n).astype("<f8").tobytes())
        own = lin.A.copy(), lin.A_inv.copy(), lin.b.copy()
        with caplog.at_level(logging.WARNING, logger="atp.state"):
            assert await a.merge_once()
        assert all(np.array_equal(x, y) for x, y in zip(own, (lin.A, lin.A_inv, lin.b)))
        assert any(f"merged LinUCB A of {MODEL} is not ⪰ λI" in m for m in caplog.messages)
        assert np.isfinite(a.router.ref.table.bandit.A_inv).all()
    run(go, redis_server.url)


def test_the_store_adds_packed_sums_bit_for_bit_over_several_chunks(redis_server):
    """Redis's Lua adds the doubles numpy would (IEEE), over more floats than one unpack chunk."""
    async def go(store):
        from atp_server.state.redis import LINUCB_CHUNK
        dim = 50
        n = dim * (dim + 1) // 2 + dim
        assert n > LINUCB_CHUNK
        rng = np.random.default_rng(11)
        base, d1, d2 = (rng.standard_normal(n) * 10.0 ** rng.integers(-8, 8, n) for _ in range(3))
        for delta in (d1, d2):
            _, pulled = await store.merge("w", 1e9, 3.0, [], [("wide", dim, base, delta)])
        assert np.array_equal(pulled[0][0], (base + d1) + d2)
        # a row of another length for that key is refused, naming the dim the store holds
        _, pulled = await store.merge("w", 1e9, 3.0, [], [("wide", 3, np.zeros(9), np.ones(9))])
        assert pulled == [(None, dim)]
        _, pulled = await store.merge("w", 1e9, 3.0, [], [("wide", dim, base, np.zeros(n))])
        assert np.array_equal(pulled[0][0], (base + d1) + d2)      # an empty delta only reads
    run(go, redis_server.url)


def test_merged_keys_expire_unless_merged_again(redis_server):
    """A model taken out of every worker's config stops being merged: its statistics, breaker and
    LinUCB sums must not stay in Redis forever (they expire LEARNING_KEEP_S after the last merge;
    every merge renews them; a fleet down longer re-seeds from its saved posteriors)."""
    import redis as sync_redis

    from atp_server.state.redis import LEARNING_KEEP_S

    async def go(store):
        clock, rng = Clock(), np.random.default_rng(3)
        a = linucb_worker(store, "a", clock)
        teach(a, Reference(a), MODEL, rng, 2)
        assert await a.merge_once()
        return store.prefix
    prefix = run(go, redis_server.url)
    r = sync_redis.Redis.from_url(redis_server.url)
    keys = [k for k in r.keys(prefix + "*") if b"epoch" not in k]
    assert keys
    ttls = [r.pttl(k) for k in keys]
    assert all(0 < t <= LEARNING_KEEP_S * 1000 for t in ttls), dict(zip(keys, ttls))
