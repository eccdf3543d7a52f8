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
