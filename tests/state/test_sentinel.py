"""[state] redis_url = "redis+sentinel://…": the stores reach the master a real Redis Sentinel names,
limits hold there, and a malformed sentinel URL is a config error naming the key."""
import asyncio

import pytest
import redis as sync_redis

from atp_server import config as atp_config
from atp_server.app import App
from atp_server.types import AtpError, ChatRequest
from codec.errors import ErrorCode
from tests.server.helpers import PRINCIPAL, make_config

from .redis_server import RedisServer, SentinelServer


@pytest.fixture
def sentinel(tmp_path):
    master = RedisServer().start()
    watcher = SentinelServer(master, tmp_path).start()
    yield watcher
    watcher.stop()
    master.stop()


def test_limits_are_kept_in_the_master_the_sentinel_names(tmp_path, sentinel):
    extra = (f'[state]\nredis_url = "{sentinel.url}"\ntimeout_ms = 2000\nprefix = "snt:"\n'
             '[[limits]]\nname = "rpm"\nrequests_per_min = 3\n')
    app = App(make_config(tmp_path, extra=extra))

    async def main():
        await app.stores.start()
        codes = []
        for _ in range(4):
            try:
                await app.pipeline.complete(ChatRequest([("user", "hi")], model="cheap"), PRINCIPAL, "t")
                codes.append(0)
            except AtpError as exc:
                codes.append(exc.code)
        await app.stop(0)
        return codes
    assert asyncio.run(main()) == [0, 0, 0, ErrorCode.RATE_LIMITED]
    master = sync_redis.Redis(port=sentinel.master.port)
    assert master.keys("snt:c:*")                     # the bucket lives in the master


@pytest.mark.parametrize("url, problem", [
    ("redis+sentinel://127.0.0.1:26379", "service"),
    ("redis+sentinel://127.0.0.1/mymaster", "host:port"),
    ("redis+sentinel://127.0.0.1:26379/mymaster/zero", "service[/db]"),
])
def test_a_malformed_sentinel_url_names_the_key(url, problem):
    with pytest.raises(atp_config.ConfigError, match="state.redis_url") as e:
        atp_config.loads(atp_config.DEFAULT_TOML + f'[state]\nredis_url = "{url}"\n')
    assert problem in str(e.value)


def test_after_a_failover_the_stores_follow_the_new_master(tmp_path):
    master = RedisServer().start()
    replica = RedisServer(args=("--replicaof", "127.0.0.1", str(master.port))).start()
    watcher = SentinelServer(master, tmp_path).start()
    try:
        watcher.wait_for(b"+slave")                    # the sentinel knows the replica
        extra = (f'[state]\nredis_url = "{watcher.url}"\ntimeout_ms = 2000\nprefix = "snt:"\n'
                 '[[limits]]\nname = "rpm"\nrequests_per_min = 100\n')
        app = App(make_config(tmp_path, extra=extra))

        async def ask(tenant: str):
            from atp_server.auth import Principal
            await app.pipeline.complete(ChatRequest([("user", "hi")], model="cheap"),
                                        Principal(tenant, "dev", "api_key"), "t")

        async def main():
            await app.stores.start()
            await ask("before")
            master.stop()                               # the master dies
            await asyncio.get_running_loop().run_in_executor(
                None, watcher.wait_for, b"+switch-master")
            # The first call after the switch meets the dead master's connection, and the store
            # would then skip Redis for its back-off (BACKOFF_S): let every call try Redis, so
            # the next request reaches the promoted replica without waiting out a timer.
            for guard in (app.stores.counters.guard, app.stores.budgets.guard):
                guard.clock = lambda: float("inf")
            for _ in range(5):
                await ask("after")
                if sync_redis.Redis(port=replica.port).keys("snt:c:*after*"):
                    break
            await app.stop(0)
        asyncio.run(main())
        promoted = sync_redis.Redis(port=replica.port)
        assert promoted.info("replication")["role"] == "master"
        assert promoted.keys("snt:c:*after*")           # written after the failover, to the new master
    finally:
        watcher.stop()
        replica.stop()
        master.stop()
