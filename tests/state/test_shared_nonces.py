"""The cross-worker half of the nonce check (auth.check_shared_nonce), in process: two
Authenticators on one store behave as two workers on one Redis."""
import asyncio

import pytest

from atp_server import config as atp_config
from atp_server.auth import Authenticator, sign_request
from atp_server.state.memory import MemoryNonces
from atp_server.types import AtpError
from codec.errors import ErrorCode

from .conftest import redis_stores_for

NOW = 1_800_000_000_000
PATH = "/v1/chat/completions"


def worker(shared) -> Authenticator:
    auth = Authenticator(atp_config.load().auth)
    auth.shared_nonces = shared
    return auth


def signed(nonce: str = "00112233445566ff", ts: int = NOW) -> dict:
    return {"x-atp-key-id": str(atp_config.DEV_HMAC_KEY_ID), "x-atp-timestamp": str(ts),
            "x-atp-nonce": nonce,
            "x-atp-signature": sign_request(atp_config.DEV_HMAC_SECRET, "POST", PATH, ts, nonce, b"{}")}


def check(auth: Authenticator, headers: dict, now: int = NOW):
    return auth.check_signature(headers, "POST", PATH, b"{}", now)


def test_without_a_shared_store_nothing_is_awaited():
    assert check(worker(None), signed()) is None


def test_a_nonce_one_worker_accepted_is_a_replay_at_the_other():
    async def run():
        store = MemoryNonces()
        a, b = worker(store), worker(store)
        await check(a, signed())                        # first sight: accepted
        with pytest.raises(AtpError) as info:
            await check(b, signed(), NOW + 5)           # b's own cache never saw it
        assert info.value.code == ErrorCode.REPLAYED_NONCE
        await check(b, signed("00112233445566fe"))      # another nonce passes
    asyncio.run(run())


def test_the_shared_entry_lives_until_timestamp_plus_skew():
    async def run():
        store = MemoryNonces()
        skew = atp_config.load().auth.skew_ms
        await check(worker(store), signed(ts=NOW - skew + 100))
        # 99 ms before its expiry it is still a replay; after, only the timestamp check stands
        with pytest.raises(AtpError):
            await worker(store).check_shared_nonce(bytes.fromhex("00112233445566ff"),
                                                   NOW - skew + 100, NOW + 1)
        await worker(store).check_shared_nonce(bytes.fromhex("00112233445566ff"),
                                               NOW - skew + 100, NOW + 200)
    asyncio.run(run())


def test_an_unreachable_store_failing_closed_refuses_retryably(redis_server):
    async def run():
        stores = redis_stores_for("redis://127.0.0.1:1/0", timeout_s=0.2)   # nothing listens
        with pytest.raises(AtpError) as info:
            await check(worker(stores.nonces), signed())
        assert info.value.code == ErrorCode.UNAVAILABLE and info.value.retry_after_ms > 0
        await stores.close()
    asyncio.run(run())


def test_two_workers_on_one_redis(redis_server):
    async def run():
        stores = redis_stores_for(redis_server.url)
        await check(worker(stores.nonces), signed())
        with pytest.raises(AtpError) as info:
            await check(worker(stores.nonces), signed())
        assert info.value.code == ErrorCode.REPLAYED_NONCE
        await stores.close()
    asyncio.run(run())


# ---- a Redis that loses its data between two calls (issue 12): the epoch key -----------------------

@pytest.fixture
def own_redis():
    from .redis_server import RedisServer
    server = RedisServer().start()
    yield server
    server.stop()


def two_workers(url: str):
    """Two workers as two processes would be: one client each, the same key prefix."""
    stores = [redis_stores_for(url, prefix="w:") for _ in range(2)]
    for s in stores:
        s.epoch.clock = lambda: NOW / 1000           # the start happens "now"
    auths = []
    for s in stores:
        auth = worker(s.nonces)
        s.epoch.listeners.append(auth.shared_floor)  # as the App wires it
        auths.append(auth)
    return stores, auths


def test_a_flush_between_two_calls_refuses_the_replay_at_the_other_worker(own_redis):
    async def run():
        stores, (a, b) = two_workers(own_redis.url)
        for s in stores:
            await s.start()
        await check(a, signed())                              # recorded by worker A
        await check(b, signed("00112233445566ee"))            # ... and one by worker B
        await stores[0].client.flushall()                    # Redis empties; no call failed
        with pytest.raises(AtpError) as info:                 # the replay, through worker B
            await check(b, signed(), NOW + 5)
        assert info.value.code == ErrorCode.STALE_TIMESTAMP and "lost its data" in info.value.message
        assert stores[1].epoch.resets == 1
        # a fresh nonce timestamped after the moment of the loss is accepted at both workers
        await check(b, signed("0011223344556601", NOW + 10), NOW + 10)
        assert stores[0].epoch.resets == 0                   # A has not called since
        await check(a, signed("0011223344556602", NOW + 11), NOW + 11)
        # ... and that call told A: B re-creating the key did not hide the loss from it
        assert stores[0].epoch.resets == 1 and stores[0].epoch.floor_ms == NOW + 5
        assert a.nonce_cache.floor_ms == NOW + 5
        # B's nonce from before the loss, replayed through A (whose cache never saw it): refused
        # by A's own cache now, synchronously: no round trip
        with pytest.raises(AtpError) as info:
            check(a, signed("00112233445566ee"), NOW + 12)
        assert info.value.code == ErrorCode.STALE_TIMESTAMP
        for s in stores:
            await s.close()
    asyncio.run(run())


def test_a_restart_on_a_redis_that_kept_its_data_refuses_no_lagging_client(own_redis):
    async def run():
        earlier = redis_stores_for(own_redis.url, prefix="r:")
        earlier.epoch.clock = lambda: (NOW - 3_600_000) / 1000    # the first run, an hour ago
        await earlier.start()
        await earlier.close()
        stores = redis_stores_for(own_redis.url, prefix="r:")   # the next start, now
        stores.epoch.clock = lambda: NOW / 1000
        auth = worker(stores.nonces)
        await stores.start()
        # a client whose clock lags 20 s (within the skew) is not refused by the epoch
        await check(auth, signed(ts=NOW - 20_000), NOW)
        assert stores.epoch.floor_ms == NOW - 3_600_000 and stores.epoch.resets == 0
        await stores.close()
    asyncio.run(run())
