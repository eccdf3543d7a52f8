"""Two workers share one replay window through Redis: a signed request or a session HELLO
replayed 20 times over fresh connections (the kernel spreads them over both workers) is served
exactly once; without Redis, --workers 2 refuses to start while anything would split."""
import asyncio
import http.client
import os
import subprocess
import sys
import time

import grpc
import orjson
import pytest

from atp_server import config as atp_config
from atp_server.auth import sign_request
from codec import Connection, Keyring
from codec import events as ev
from codec.errors import ErrorCode

from ..state.redis_server import RedisServer
from .workers_helpers import ROOT, serving, workers_toml

REPLAYS = 20      # fresh connections: all on one worker has odds 2**-19
PATH = "/v1/chat/completions"


@pytest.fixture
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


def signed_headers(body: bytes) -> dict:
    ts, nonce = int(time.time() * 1000), os.urandom(8).hex()
    return {"Authorization": f"Bearer {atp_config.DEV_API_KEY}", "Content-Type": "application/json",
            "x-atp-key-id": str(atp_config.DEV_HMAC_KEY_ID), "x-atp-timestamp": str(ts),
            "x-atp-nonce": nonce,
            "x-atp-signature": sign_request(atp_config.DEV_HMAC_SECRET, "POST", PATH, ts, nonce, body)}


def post(port: int, body: bytes, headers: dict) -> tuple[int, dict]:
    """One request on a connection of its own (a new source port: the kernel picks the worker)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", PATH, body, {**headers, "Connection": "close"})
        r = conn.getresponse()
        return r.status, orjson.loads(r.read())
    finally:
        conn.close()


def test_signed_http_request_replayed_across_two_workers_is_served_once(tmp_path, redis_server):
    body = orjson.dumps({"model": "sim-fast", "max_tokens": 4,
                         "messages": [{"role": "user", "content": "once"}]})
    with serving(tmp_path, workers_toml(tmp_path, redis_server.url)) as s:
        headers = signed_headers(body)   # after the start: earlier timestamps are below its floor
        answers = [post(s.http, body, headers) for _ in range(REPLAYS)]
        fresh = post(s.http, body, signed_headers(body))        # a new nonce still passes
    statuses = [status for status, _ in answers]
    assert statuses.count(200) == 1, statuses
    refused = [doc for status, doc in answers if status != 200]
    assert {status for status in statuses if status != 200} == {401}
    assert all("already used" in doc["error"]["message"] for doc in refused), refused[:2]
    assert fresh[0] == 200


def session_bytes(nonce: bytes, ts: int) -> tuple[Connection, bytes]:
    """HELLO + one REQUEST, signed: the same bytes for the same nonce and timestamp."""
    conn = Connection("client", Keyring({atp_config.DEV_HMAC_KEY_ID: atp_config.DEV_HMAC_SECRET},
                                        current_id=atp_config.DEV_HMAC_KEY_ID), now_ms=ts)
    conn.initiate(nonce, ts)
    conn.send_request({"messages": [["user", "once"]], "stream": False, "model": "sim-fast",
                       "max_tokens": 4}, ts)
    return conn, b"".join(conn.frames_to_send())


async def replay_session(port: int, nonce: bytes, ts: int, sent: bytes) -> tuple[bool, int]:
    """Send the recorded session bytes on a new gRPC channel: (answered, CLOSE code or 0)."""
    from proto.atp.v1 import atp_pb2 as pb
    conn, data = session_bytes(nonce, ts)
    assert data == sent                      # byte for byte the same frames: a true replay
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream("/atp.v1.Atp/Session", request_serializer=pb.Frame.SerializeToString,
                                     response_deserializer=pb.Frame.FromString)()
        await call.write(pb.Frame(data=data))
        answered, code = False, 0
        async with asyncio.timeout(10):
            while not (answered or code) and (msg := await call.read()) is not grpc.aio.EOF:
                conn.receive_frames(msg.data, int(time.time() * 1000))
                while (event := conn.next_event()) is not None:
                    if type(event) is ev.StreamEnded:
                        answered = True
                    elif type(event) is ev.ConnectionTerminated:
                        code = event.code
        call.cancel()
    return answered, code


def test_session_hello_replayed_across_two_workers_is_served_once(tmp_path, redis_server):
    async def replays(port):
        nonce, ts = os.urandom(8), int(time.time() * 1000)   # after the start (its floor)
        _, sent = session_bytes(nonce, ts)
        return [await replay_session(port, nonce, ts, sent) for _ in range(REPLAYS)]

    with serving(tmp_path, workers_toml(tmp_path, redis_server.url)) as s:
        results = asyncio.run(replays(s.grpc))
    assert [answered for answered, _ in results].count(True) == 1, results
    assert {code for answered, code in results if not answered} == {ErrorCode.REPLAYED_NONCE}


# ---- without Redis: refuse what would split --------------------------------------------------------

def serve_refused(tmp_path, toml: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / "atp.toml"
    cfg.write_text(toml)
    return subprocess.run([sys.executable, "-m", "atp_server", "serve", "--config", str(cfg),
                           "--workers", "2", "--http-port", "1", "--grpc-port", "1", "--no-quic"],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)


@pytest.mark.parametrize("what,extra,hmac,needles", [
    ("hmac keys", "", True, ["anti-replay nonce cache", "[[auth.hmac_keys]]", "request signatures"]),
    ("limits", '\n[[limits]]\nname = "t"\nrequests_per_min = 5\n', False,
     ["[[limits]]", "rate limits, budgets"]),
    ("budgets", '\n[[limits]]\nname = "b"\nusd_per_day = 1.0\n', False, ["[[limits]]", "budget"]),
])
def test_two_workers_without_redis_refuse_to_start_naming_the_fix(tmp_path, what, extra, hmac, needles):
    r = serve_refused(tmp_path, workers_toml(tmp_path, None, extra, hmac=hmac))
    assert r.returncode == 2, (what, r.stderr)
    assert r.stderr.startswith("atp: config error: --workers 2: "), r.stderr
    for needle in needles + ["Set [state] redis_url", "--workers 1"]:
        assert needle in r.stderr, (needle, r.stderr)


def test_two_workers_with_redis_accept_what_they_can_share():
    # Checked in-process: the same configurations pass once a Redis URL is set.
    for extra, hmac in (("", True), ('\n[[limits]]\nname = "t"\nrequests_per_min = 5\n', False)):
        cfg = atp_config.loads(workers_toml("/tmp/x", "redis://127.0.0.1:1/0", extra, hmac=hmac))
        atp_config.check_workers(cfg, 2, "--workers")


# ---- a Redis that loses its data between two calls (issue 12) --------------------------------------

def flush(server: RedisServer) -> None:
    """FLUSHALL: Redis empties with no call of the workers failing (a quick restart without
    persistence or a failover to an empty replica look the same to them)."""
    import redis
    client = redis.Redis.from_url(server.url)
    try:
        assert client.flushall()
    finally:
        client.close()


def test_replays_after_redis_lost_its_data_without_a_failed_call_are_refused(tmp_path, redis_server):
    body = orjson.dumps({"model": "sim-fast", "max_tokens": 4,
                         "messages": [{"role": "user", "content": "once"}]})

    async def sessions(port, nonce, ts, sent):
        return [await replay_session(port, nonce, ts, sent) for _ in range(REPLAYS)]

    with serving(tmp_path, workers_toml(tmp_path, redis_server.url)) as s:
        headers = signed_headers(body)
        assert post(s.http, body, headers)[0] == 200
        nonce, ts = os.urandom(8), int(time.time() * 1000)
        _, sent = session_bytes(nonce, ts)
        assert asyncio.run(replay_session(s.grpc, nonce, ts, sent)) == (True, 0)
        flush(redis_server)
        http_replays = [post(s.http, body, headers) for _ in range(REPLAYS)]
        session_replays = asyncio.run(sessions(s.grpc, nonce, ts, sent))
        fresh_http = post(s.http, body, signed_headers(body))
        fresh_nonce, fresh_ts = os.urandom(8), int(time.time() * 1000)
        _, fresh_sent = session_bytes(fresh_nonce, fresh_ts)
        fresh_session = asyncio.run(replay_session(s.grpc, fresh_nonce, fresh_ts, fresh_sent))
    # The worker that served them refuses from its own cache (already used); the other, whose
    # cache never saw them, from the floor the epoch key set when it was found missing.
    assert {status for status, _ in http_replays} == {401}, http_replays
    # (the other worker's later refusals come from its own cache, whose floor followed the store's)
    messages = [doc["error"]["message"] for _, doc in http_replays]
    assert all("already used" in m or "lost its data" in m for m in messages), messages[:3]
    assert any("lost its data" in m for m in messages)   # all 20 on one worker: odds 2**-19
    assert not any(answered for answered, _ in session_replays), session_replays
    assert {code for _, code in session_replays} <= {ErrorCode.REPLAYED_NONCE, ErrorCode.STALE_TIMESTAMP}
    assert ErrorCode.STALE_TIMESTAMP in {code for _, code in session_replays}
    assert fresh_http[0] == 200 and fresh_session == (True, 0)   # new nonces, timestamps after
    assert "REDIS LOST ITS DATA" in s.output and "Redis unreachable" not in s.output
