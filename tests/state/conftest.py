"""Fixtures for the state-store tests: one real redis-server per session, and the stores to test
parametrised over both implementations (the same contract must hold for each)."""
import itertools

import pytest

from atp_server.state.memory import memory_stores

from .redis_server import RedisServer

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


def redis_stores_for(url: str, **kwargs):
    from atp_server.state.redis import redis_stores
    # generous: the contract is about atomicity; 400 coroutines queue for 32 connections on a
    # loaded 2-core VM, where one call takes ~1 ms of Python (the outage tests set their own)
    kwargs.setdefault("timeout_s", 10.0)
    kwargs.setdefault("fail", {"limits": "closed", "budgets": "closed", "nonces": "closed"})
    # A prefix of its own per test: no test sees another's keys, no flush needed.
    kwargs.setdefault("prefix", f"test{next(_prefixes)}:")
    return redis_stores(url, **kwargs)


@pytest.fixture(params=["memory", "redis"])
def make_stores(request):
    """A factory (stores are built inside the test's event loop: redis-py binds to it)."""
    def make():
        if request.param == "memory":
            return memory_stores()
        return redis_stores_for(request.getfixturevalue("redis_server").url)
    if request.param == "redis":
        request.getfixturevalue("redis_server")
    return make
