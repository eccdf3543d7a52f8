"""Two workers learn together through Redis: failures one worker saw move the other's quality
posterior, a breaker one worker opens is open in the other within one merge interval, and
LinUCB's matrices one worker learnt from feedback reach the other (and its saved posteriors)."""
import asyncio
import http.client
import re
import time

import numpy as np
import orjson
import pytest

from atp_server import config as atp_config
from atp_server.app import App
from atp_server.routing.bandit import FILE as POSTERIORS
from atp_server.types import ChatRequest

from ..state.redis_server import RedisServer
from .helpers import PRINCIPAL, make_config
from .workers_helpers import serving, workers_toml

INTERVAL_S = 0.3
DEAD = f"""
[[providers]]
name = "dead"
type = "simulated"
failure_rate = 1.0

[[models]]
id = "sim-dead"
provider = "dead"
price_in_per_mtok = 0.10
price_out_per_mtok = 0.40
quality = 0.6
latency_ms = 150
context_window = 8192
"""
STATE = f"merge_interval_ms = {int(INTERVAL_S * 1000)}\n"
AUTH = {"Authorization": f"Bearer {atp_config.DEV_API_KEY}"}
BODY = orjson.dumps({"model": "sim-dead", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


def toml(tmp_path, url: str) -> str:
    # [state] is the last table workers_toml writes: the merge interval joins it
    return workers_toml(tmp_path, url, hmac=False) + STATE + DEAD


def fresh(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One request on a new connection: either worker may answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body, {**AUTH, "Connection": "close", "Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def posteriors(port: int) -> list[float]:
    """Each worker's posterior for sim-dead: one scrape carries every worker's series."""
    _, text = fresh(port, "GET", "/metrics")
    found = re.findall(rb'atp_routing_quality_posterior\{worker="(\d)",model="sim-dead"\} ([0-9.e-]+)', text)
    assert sorted(w for w, _ in found) == [b"0", b"1"], text
    return [float(v) for _, v in found]


def unhealthy(port: int) -> bool:
    _, body = fresh(port, "GET", "/v1/models")
    return not next(m for m in orjson.loads(body)["data"] if m["id"] == "sim-dead")["atp"]["healthy"]


def every_worker_says(check, deadline_s: float, in_a_row: int = 10) -> float:
    """Seconds until `in_a_row` answers on fresh connections in a row pass `check` (10 in a
    row: both workers answered, unless the kernel sent all ten to one, odds 2**-9)."""
    started, streak = time.monotonic(), 0
    while streak < in_a_row:
        assert time.monotonic() - started < deadline_s, "the workers did not agree in time"
        streak = streak + 1 if check() else 0
    return time.monotonic() - started


def test_failures_and_a_breaker_seen_by_one_worker_reach_the_other(tmp_path, redis_server):
    q = 0.6                          # the model's configured quality: its prior mean
    with serving(tmp_path, toml(tmp_path, redis_server.url)) as s:
        assert all(abs(p - q) < 1e-9 for p in posteriors(s.http))
        one = http.client.HTTPConnection("127.0.0.1", s.http, timeout=10)   # one worker only

        def send() -> int:
            one.request("POST", "/v1/chat/completions", BODY, {**AUTH, "Content-Type": "application/json"})
            r = one.getresponse()
            r.read()
            return r.status

        assert send() >= 500          # its dispatch retries: faults below the breaker threshold
        def merged() -> bool:         # every worker holds the same lower posterior ...
            values = posteriors(s.http)
            return max(values) < q and max(values) - min(values) < 1e-9
        every_worker_says(merged, 10)
        # ... though only one saw the failures
        statuses = [send()]
        while len(statuses) < 12 and statuses[-1] != 503:
            statuses.append(send())
        one.close()
        assert statuses[-1] == 503, statuses          # that worker's circuit is open
        took = every_worker_says(lambda: unhealthy(s.http), 10)
    # pushed at once by the worker that tripped, pulled by the other at its next merge
    assert took < INTERVAL_S + 1.0, took


def test_linucb_learnt_from_feedback_in_one_worker_reaches_the_other_and_its_file(tmp_path, redis_server):
    """Two Apps in this process stand for two workers (so the merges can be called, not waited
    for): the App starts the merge with LinUCB's sums, and stop() merges before it saves."""
    def worker(name: str) -> App:
        d = tmp_path / name
        d.mkdir()
        # an hour between merges: only the ones this test calls (and stop's) happen
        extra = (f'[routing]\nbandit = "linucb"\n[state]\nredis_url = "{redis_server.url}"\n'
                 "merge_interval_ms = 3600000\n")
        return App(make_config(d, extra=extra), audit_path=str(d / "audit.sqlite"))

    async def go():
        a, b = worker("a"), worker("b")
        for app in (a, b):
            await app.start(http=False, grpc=False, quic=False)
        try:
            for i in range(5):
                req = ChatRequest([("user", f"Is {i} a prime number?")], request_id=f"r{i}")
                await a.service.complete(req, PRINCIPAL, "test")
                assert a.service.feedback(PRINCIPAL, f"r{i}", 0.0)
            lin_a, lin_b = a.router.table.bandit, b.router.table.bandit
            assert not np.allclose(lin_a.A, lin_b.A)          # a learnt, b did not
            assert await a.learning.merge_once() and await b.learning.merge_once()
            assert np.allclose(lin_b.A, lin_a.A) and np.allclose(lin_b.b, lin_a.b)
            assert np.allclose(lin_b.A_inv, lin_a.A_inv)
            learnt = lin_a.A.copy()
        finally:
            await a.stop(0)
            await b.stop(0)
        with np.load(tmp_path / "b" / POSTERIORS) as saved:
            assert np.allclose(saved["A"], learnt)
    asyncio.run(go())
