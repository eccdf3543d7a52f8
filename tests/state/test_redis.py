"""What only the Redis stores promise: a dead Redis never hangs a request, the configured fail mode
decides, and service resumes by itself when Redis returns."""
import asyncio
import time

import pytest

from atp_server.state import Bucket, Hold, StoreUnavailable
from atp_server.types import AtpError
from codec.errors import ErrorCode

from .conftest import redis_stores_for
from .redis_server import RedisServer

TIMEOUT_S = 0.2


@pytest.fixture
def own_redis():
    server = RedisServer().start()
    yield server
    server.stop()


def stores_for(server, fail):
    return redis_stores_for(server.url, timeout_s=TIMEOUT_S,
                            fail={"limits": fail, "budgets": fail, "nonces": fail})


def test_redis_down_fail_closed_refuses_promptly_and_recovers(own_redis):
    async def go():
        s = stores_for(own_redis, "closed")
        hold = Hold("d", 1000, 60)
        assert (await s.budgets.reserve((hold,), 10))[0] is None
        own_redis.stop()
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable) as err:
            await s.budgets.reserve((hold,), 10)
        assert time.monotonic() - t0 < TIMEOUT_S + 0.5        # bounded by the timeout, no hang
        assert err.value.code is ErrorCode.UNAVAILABLE and err.value.retryable
        assert err.value.retry_after_ms > 0
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable):                 # in back-off: refused at once
            await s.counters.take((Bucket("b", 5, 1.0),), (1,), 0.0)
        with pytest.raises(StoreUnavailable):
            await s.budgets.reserve((hold,), 10)
        assert time.monotonic() - t0 < 0.05
        own_redis.start()                                     # same port, empty server
        guard = s.budgets.guard
        guard.down_until = 0.0              # the back-off is over (instead of waiting it out)
        assert (await s.budgets.reserve((hold,), 10)) == (None, (10,))
        assert guard.problem is None
        await s.close()
    asyncio.run(go())


def test_redis_down_fail_open_lets_requests_through_unrecorded(own_redis):
    async def go():
        s = stores_for(own_redis, "open")
        own_redis.stop()
        assert await s.budgets.reserve((Hold("d", 5, 60),), 10) == (None, None)
        assert await s.counters.take((Bucket("b", 1, 1.0),), (1,), 0.0) == (None, None)
        assert await s.counters.acquire(()) == (None, False)
        assert await s.nonces.add(b"n" * 16, 5.0, 0.0) is True
        s.budgets.settle((Hold("d", 5, 60),), 10, 3)           # lost, counted, not raised
        await s.drain()
        assert s.budgets.background.lost == 1
        await s.close()
    asyncio.run(go())


def test_background_writes_are_batched_and_bounded(redis_server, monkeypatch):
    from atp_server.state import redis as redis_state
    monkeypatch.setattr(redis_state, "MAX_QUEUED_WRITES", 3)

    async def go():
        s = stores_for(redis_server, "closed")
        hold = Hold("bounded", 10_000, 60)
        for _ in range(5):
            assert (await s.budgets.reserve((hold,), 10))[0] is None
        for _ in range(5):          # no await between: all five queue at once, two beyond the bound
            s.budgets.settle((hold,), 10, 4)
        await s.drain()
        usage = await s.budgets.usage("bounded")
        await s.close()
        return usage, s.budgets.background.lost
    usage, lost = asyncio.run(go())
    # the three queued were sent in one batch; the two dropped keep their reservation (safe side)
    assert usage == (12, 20) and lost == 2


def test_admit_down_refuses_when_budgets_fail_closed_and_passes_rate_limits_open(own_redis):
    async def go():
        s = redis_stores_for(own_redis.url, timeout_s=TIMEOUT_S,
                             fail={"limits": "open", "budgets": "closed", "nonces": "closed"})
        own_redis.stop()
        rates_only = await s.admit((Bucket("r", 5, 1.0),), (1,), 0.0, (), (), 0)
        with pytest.raises(StoreUnavailable):
            await s.admit((Bucket("r", 5, 1.0),), (1,), 0.0, (), (Hold("d", 100, 60),), 5)
        await s.close()
        return rates_only
    got = asyncio.run(go())
    assert got.refused is None and got.levels is None and got.totals is None and not got.held


# ---- the epoch key: a Redis that lost its data is noticed (issue 12) -------------------------------

NOW_S = 1_800_000_000.0


def epoch_stores(server, prefix: str = "e:"):
    s = redis_stores_for(server.url, prefix=prefix)
    s.epoch.clock = lambda: NOW_S
    return s


def test_the_first_start_creates_the_epoch_and_the_next_reads_it_without_a_reset(own_redis, caplog):
    async def go():
        first, second = epoch_stores(own_redis), epoch_stores(own_redis)
        second.epoch.clock = lambda: NOW_S + 60           # started a minute later
        await first.start()
        await second.start()
        stored = await first.client.get("e:epoch")
        out = (first.epoch.floor_ms, second.epoch.floor_ms, first.epoch.resets,
               second.epoch.resets, stored)
        for s in (first, second):
            await s.close()
        return out
    with caplog.at_level("WARNING", logger="atp.state"):
        got = asyncio.run(go())
    assert got == (NOW_S * 1000, NOW_S * 1000, 0, 0, b"%d" % (NOW_S * 1000))
    created = [r for r in caplog.records if "no key e:epoch" in r.getMessage()]
    assert len(created) == 1 and "LOST" not in caplog.text     # a first start is no reset


def test_a_flush_is_noticed_by_the_budget_path_once_and_the_nonce_floor_follows(own_redis, caplog):
    async def go():
        a, b = epoch_stores(own_redis), epoch_stores(own_redis)
        for s in (a, b):
            await s.start()
        hold = Hold("day", 1000, 3600)
        assert (await a.budgets.reserve((hold,), 400)) == (None, (400,))
        await a.client.flushall()
        a.epoch.clock = lambda: NOW_S + 7                   # the loss is noticed 7 s later
        # not recovered: the budget starts again from zero (documented; Redis should persist)
        assert (await a.budgets.reserve((hold,), 400)) == (None, (400,))
        assert (await a.budgets.reserve((hold,), 100)) == (None, (500,))   # no second report
        # the admit re-created the key; the nonce check of the other process still sees the loss
        stale = NOW_S * 1000 + 5000
        with pytest.raises(AtpError) as info:
            await b.nonces.add(b"\x01" * 8, 30.0, NOW_S + 8, timestamp_ms=stale)
        fresh = await b.nonces.add(b"\x02" * 8, 30.0, NOW_S + 8, timestamp_ms=stale + 3000)
        out = a.epoch.resets, b.epoch.resets, info.value.code, fresh, b.epoch.floor_ms
        for s in (a, b):
            await s.close()
        return out
    with caplog.at_level("ERROR", logger="atp.state"):
        got = asyncio.run(go())
    assert got == (1, 1, ErrorCode.STALE_TIMESTAMP, True, NOW_S * 1000 + 7000)
    lost = [r for r in caplog.records if "REDIS LOST ITS DATA" in r.getMessage()]
    # once per process that noticed: a (it found the key missing), b (re-created by another)
    assert [("was missing" in r.getMessage(), "another process" in r.getMessage()) for r in lost] == [
        (True, False), (False, True)]
    assert "appendonly yes" in lost[0].getMessage()


def test_a_late_reply_with_an_older_floor_is_no_reset():
    from atp_server.state.redis import StoreEpoch
    epoch = StoreEpoch("k")
    epoch.observe(1000, False)              # first sight
    epoch.observe(2000, False)              # another process re-created it: a reset
    epoch.observe(1000, False)              # a reply sent before that, arriving late: nothing
    assert (epoch.floor_ms, epoch.resets) == (2000, 1)
    epoch.observe(1500, True)               # created here by a host whose clock lags: a reset
    assert (epoch.floor_ms, epoch.resets) == (2000, 2)


def test_admits_of_one_loop_turn_go_as_one_round_trip_and_stay_exact(redis_server):
    """Concurrent admits are pipelined (one round trip per loop turn), each caller still gets its
    own answer: exactly `capacity` of them pass, in a real Redis."""
    async def go():
        s = redis_stores_for(redis_server.url)
        try:
            b = Bucket("batched", 20, 0.0)
            got = await asyncio.gather(*(s.admit((b,), (1,), 0.0, (), (), 0) for _ in range(25)))
            batched = s._admit
            return got, batched.calls, batched.round_trips
        finally:
            await s.close()
    got, calls, trips = asyncio.run(go())
    assert sum(a.refused is None for a in got) == 20 and sum(a.refused == "rate" for a in got) == 5
    assert sorted(a.levels[0] for a in got if a.refused is None) == list(range(20))   # each once
    assert calls == 25 and trips < 25                   # pipelined, not one round trip each


def test_a_redis_that_lost_its_scripts_still_answers_batched_admits(redis_server):
    import redis as sync_redis

    async def go():
        s = redis_stores_for(redis_server.url)
        try:
            b = Bucket("noscript", 10, 0.0)
            await s.admit((b,), (1,), 0.0, (), (), 0)          # the script is loaded now
            sync_redis.Redis.from_url(redis_server.url).script_flush()
            got = await asyncio.gather(*(s.admit((b,), (1,), 0.0, (), (), 0) for _ in range(3)))
            return got
        finally:
            await s.close()
    got = asyncio.run(go())
    assert [a.refused for a in got] == [None] * 3 and sorted(a.levels[0] for a in got) == [6, 7, 8]


def test_a_caller_that_gives_up_leaves_the_others_their_answers(redis_server):
    async def go():
        s = redis_stores_for(redis_server.url)
        try:
            b = Bucket("gaveup", 10, 0.0)
            first = asyncio.ensure_future(s.admit((b,), (1,), 0.0, (), (), 0))
            rest = [asyncio.ensure_future(s.admit((b,), (1,), 0.0, (), (), 0)) for _ in range(3)]
            first.cancel()                                  # its client went away
            out = await asyncio.gather(*rest)
            return out
        finally:
            await s.close()
    out = asyncio.run(go())
    assert all(a.refused is None for a in out)
