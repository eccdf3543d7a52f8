"""Redis stops answering under two workers: each store does what its fail mode says, within the
timeout (never a hang), and shared state comes back by itself when Redis does.

Defaults (limits_config.StateConfig): rate limits fail open, budgets and nonces fail closed."""
import http.client
import os
import signal
import time

import orjson
import pytest

from atp_server import config as atp_config
from atp_server.auth import sign_request

from ..state.redis_server import RedisServer
from .workers_helpers import serving, workers_toml

PATH = "/v1/chat/completions"
# timeout_ms is 200 in workers_toml: a request waits at most that per store call, plus the
# request itself (~50 ms with the simulated provider). 1.5 s leaves room on a loaded machine.
PROMPT_S = 1.5
RULES = """
[[limits]]
name = "rpm"
requests_per_min = 100000

[[limits]]
name = "premium"
scope = "model"
match = "sim-high"
usd_per_day = 100.0
"""


@pytest.fixture
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


def post(port: int, model: str, signed: bool = False) -> tuple[int, float]:
    """(status, seconds) of one request on a new connection (either worker may take it)."""
    body = orjson.dumps({"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    headers = {"Authorization": f"Bearer {atp_config.DEV_API_KEY}", "Content-Type": "application/json",
               "Connection": "close"}
    if signed:
        ts, nonce = int(time.time() * 1000), os.urandom(8).hex()
        headers.update({"x-atp-key-id": str(atp_config.DEV_HMAC_KEY_ID), "x-atp-timestamp": str(ts),
                        "x-atp-nonce": nonce, "x-atp-signature": sign_request(
                            atp_config.DEV_HMAC_SECRET, "POST", PATH, ts, nonce, body)})
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", PATH, body, headers)
        r = conn.getresponse()
        r.read()
        return r.status, time.monotonic() - started
    finally:
        conn.close()


KINDS = {"limits (open)": ("sim-fast", False, 200),
         "budgets (closed)": ("sim-high", False, 503),
         "nonces (closed)": ("sim-fast", True, 503)}


def check_down(port: int) -> None:
    for what, (model, signed, expected) in KINDS.items():
        for _ in range(6):              # new connections: both workers are asked
            status, took = post(port, model, signed)
            assert status == expected, (what, status)
            assert took < PROMPT_S, (what, took)


def recovered(port: int, deadline_s: float = 10.0) -> int:
    """Requests until 8 in a row of every kind succeed (each worker's back-off ends on its own
    first call after 0.5 s); returns how many it took. Fails at the deadline."""
    deadline, sent, streak = time.monotonic() + deadline_s, 0, 0
    while streak < 8:
        assert time.monotonic() < deadline, "shared state did not come back"
        ok = all(post(port, model, signed)[0] == 200 for model, signed, _ in KINDS.values())
        sent += 1
        streak = streak + 1 if ok else 0
    return sent


def test_redis_stalled_then_killed_then_back(tmp_path, redis_server):
    with serving(tmp_path, workers_toml(tmp_path, redis_server.url, RULES)) as s:
        for model, signed, _ in KINDS.values():
            assert post(s.http, model, signed)[0] == 200
        redis_server.proc.send_signal(signal.SIGSTOP)     # up but silent: only timeouts help
        try:
            check_down(s.http)
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        recovered(s.http)
        redis_server.stop()                               # gone: connections refused
        check_down(s.http)
        redis_server.start()                              # same port, empty
        recovered(s.http)
        assert s.proc.poll() is None                      # the server kept serving throughout
    assert "Redis unreachable" in s.output and "Redis answers again" in s.output


def signed_request(port: int) -> tuple[bytes, dict]:
    body = orjson.dumps({"model": "sim-fast", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]})
    ts, nonce = int(time.time() * 1000), os.urandom(8).hex()
    return body, {"Authorization": f"Bearer {atp_config.DEV_API_KEY}", "Content-Type": "application/json",
                  "Connection": "close", "x-atp-key-id": str(atp_config.DEV_HMAC_KEY_ID),
                  "x-atp-timestamp": str(ts), "x-atp-nonce": nonce,
                  "x-atp-signature": sign_request(atp_config.DEV_HMAC_SECRET, "POST", PATH, ts, nonce, body)}


def send(port: int, body: bytes, headers: dict) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", PATH, body, headers)
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def test_a_redis_restarted_empty_does_not_reopen_the_replay_window(tmp_path, redis_server):
    # Redis without persistence forgets the nonces; a request accepted before the restart must
    # not become acceptable again at the worker that did not see it (auth.shared_store_recovered).
    with serving(tmp_path, workers_toml(tmp_path, redis_server.url, RULES)) as s:
        body, headers = signed_request(s.http)
        assert send(s.http, body, headers) == 200
        redis_server.stop()
        check_down(s.http)
        # Each worker must have noticed the outage (a restart no worker sees is the documented
        # limit): new connections until both logged it — SO_REUSEPORT may send six to one worker.
        deadline = time.monotonic() + 10
        while s.output.count("state store nonces: Redis unreachable") < 2:
            assert time.monotonic() < deadline, s.output
            post(s.http, "sim-fast", True)
        redis_server.start()               # empty
        recovered(s.http)
        replays = [send(s.http, body, headers) for _ in range(10)]
    assert 200 not in replays and set(replays) == {401}, replays
    assert "shared nonce store is back" in s.output
