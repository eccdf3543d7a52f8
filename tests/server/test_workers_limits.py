"""Two workers count one set of [[limits]] in Redis: a K requests/min limit lets exactly K of 3K
requests through, whichever worker each lands on, and a budget's spend is one sum."""
import http.client
import time

import orjson
import pytest
import redis

from atp_server import config as atp_config

from ..state.redis_server import RedisServer
from .workers_helpers import serving, workers_toml

K = 5       # per minute: one token back every 12 s, far longer than the 3K requests take
PATH = "/v1/chat/completions"
BODY = orjson.dumps({"model": "sim-fast", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


def post(port: int) -> tuple[int, dict]:
    """One request on a new connection: the kernel picks the worker by its source port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", PATH, BODY, {"Authorization": f"Bearer {atp_config.DEV_API_KEY}",
                                          "Content-Type": "application/json", "Connection": "close"})
        r = conn.getresponse()
        r.read()
        return r.status, dict(r.getheaders())
    finally:
        conn.close()


def test_a_rate_limit_holds_across_two_workers(tmp_path, redis_server):
    rule = f'\n[[limits]]\nname = "rpm"\nrequests_per_min = {K}\n'
    with serving(tmp_path, workers_toml(tmp_path, redis_server.url, rule, hmac=False)) as s:
        started = time.monotonic()
        statuses = [post(s.http)[0] for _ in range(3 * K)]
        took = time.monotonic() - started
    assert took < 60 / K, f"{took:.1f}s: a token came back during the test"
    assert statuses.count(200) == K, statuses
    assert set(statuses) == {200, 429}


def test_a_budget_is_one_sum_across_two_workers(tmp_path, redis_server):
    rule = '\n[[limits]]\nname = "spend"\nusd_per_day = 100.0\n'
    with serving(tmp_path, workers_toml(tmp_path, redis_server.url, rule, hmac=False)) as s:
        answers = [post(s.http) for _ in range(12)]
    # the workers have stopped: their background settles were drained into Redis
    assert [status for status, _ in answers] == [200] * 12
    charged = sum(round(float(h["x-atp-cost-usd"]) * 1e6) for _, h in answers)
    r = redis.Redis.from_url(redis_server.url)
    keys = r.keys("atp:b:usd:spend:default:*")
    assert len(keys) == 1, keys                      # one key for both workers
    spent, reserved = (int(x) for x in r.hmget(keys[0], "spent", "reserved"))
    assert reserved == 0 and charged > 0
    assert abs(spent - charged) <= len(answers)      # the header rounds each cost to a micro
