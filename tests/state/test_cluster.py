"""[state] redis_url = "redis+cluster://…": on a real three-master Redis Cluster, every ATP key
shares one hash slot (the prefix becomes a hash tag), so the multi-key scripts run: limits refuse,
budgets settle through the background writer (no pipelines of scripts on a cluster), the response
cache hits, a replayed nonce is refused; a malformed cluster URL names the key."""
import asyncio

import pytest

from atp_server import config as atp_config
from atp_server.app import App
from atp_server.state.redis import key_prefix
from atp_server.types import AtpError, ChatRequest
from codec.errors import ErrorCode
from tests.server.helpers import PRINCIPAL, make_config

from .redis_server import ClusterServer


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    server = ClusterServer(tmp_path_factory.mktemp("cluster")).start()
    yield server
    server.stop()


def test_limits_budgets_and_the_cache_work_on_a_cluster(tmp_path, cluster):
    extra = (f'[state]\nredis_url = "{cluster.url}"\ntimeout_ms = 2000\n'
             '[[limits]]\nname = "rpm"\nrequests_per_min = 3\n'
             '[[limits]]\nname = "usd"\nusd_per_day = 100.0\n'
             '[cache]\nenabled = true\n')
    app = App(make_config(tmp_path, extra=extra))

    async def main():
        await app.stores.start()
        ask = lambda: ChatRequest([("user", "hi")], model="cheap", metadata={"cache": "on"})  # noqa: E731
        outcomes = []
        for _ in range(4):
            try:
                r = await app.pipeline.complete(ask(), PRINCIPAL, "t")
                outcomes.append(r.decision.provider)
            except AtpError as exc:
                outcomes.append(exc.code)
            await app.cache.drain()                    # the background store landed
        await app.stores.drain()                       # the settles reached the cluster
        day = app.limit_stage._periods(__import__("time").time())[0]
        spent = await app.stores.budgets.usage(f"usd:usd:default:{day}")
        errors = app.cache.errors
        now = __import__("time").time()
        nonces = app.stores.nonces            # the replay window: the epoch key and the nonce, one slot
        seen = [await nonces.add(b"n" * 8, 30, now, int(now * 1000)) for _ in range(2)]
        await app.stop(0)
        return outcomes, spent, errors, seen
    outcomes, (spent, reserved), errors, seen = asyncio.run(main())
    assert errors == 0 and seen == [True, False]   # recorded once, the replay refused
    assert outcomes == ["sim", "cache", "cache", ErrorCode.RATE_LIMITED]
    assert spent > 0 and reserved == 0                 # settled, nothing left reserved
    assert key_prefix(cluster.url, "atp:") == "{atp:}"


@pytest.mark.parametrize("url", ["redis+cluster://", "redis+cluster://h:1/0", "redis+cluster://h"])
def test_a_malformed_cluster_url_names_the_key(url):
    with pytest.raises(atp_config.ConfigError, match="state.redis_url"):
        atp_config.loads(atp_config.DEFAULT_TOML + f'[state]\nredis_url = "{url}"\n')
