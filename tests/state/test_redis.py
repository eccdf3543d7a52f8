"""What only the Redis stores promise: a dead Redis never hangs a request, the configured fail mode
decides, and service resumes by itself when Redis returns."""
import asyncio
import time

import pytest

from atp_server.state import Bucket, Hold, StoreUnavailable
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
