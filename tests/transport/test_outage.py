"""An upstream outage over real sockets: once a model's circuit opens, every transport answers a
retryable UNAVAILABLE with the time until the half-open probe (HTTP 503 + Retry-After, gRPC
UNAVAILABLE + atp-retry-after-ms, frame ERROR retry/after_ms), and the openai SDK retries it.
A route refused because of the request itself stays a 4xx. The server runs on an injected clock."""
import asyncio

import aiohttp
import grpc
import openai
import orjson
import pytest

from atp_client import AsyncGrpcClient, AsyncSessionClient, AtpClientError
from atp_client.grpc_client import request_message
from atp_server import config as atp_config
from atp_server.adapters.simulated import SimulatedSettings
from codec.errors import ErrorCode
from proto.atp.v1 import atp_pb2_grpc

KEY = atp_config.DEV_API_KEY
AUTH = {"Authorization": f"Bearer {KEY}"}
HELLO = [{"role": "user", "content": "hello"}]

BROKEN_TOML = """
[routing]
max_attempts = 1      # one upstream call per request: `threshold` requests trip the breaker

[[providers]]
name = "broken"
type = "simulated"
failure_rate = 1.0

[[models]]
id = "sim-broken"
provider = "broken"
quality = 0.01
latency_ms = 5000
price_in_per_mtok = 50.0
price_out_per_mtok = 50.0
"""


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def http_url(h, path="/v1/chat/completions") -> str:
    return f"http://127.0.0.1:{h.ports.http}{path}"


def post(h, body: dict):
    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.post(http_url(h), json=body, headers=AUTH) as r:
                return r.status, r.headers, await r.read()
    return asyncio.run(asyncio.wait_for(go(), 30))


@pytest.fixture
def tripped(start_server):
    """A server whose sim-broken circuit has just opened (threshold upstream faults, clock frozen)."""
    h = start_server(quic=False, extra_toml=BROKEN_TOML)
    clock = h.app.pipeline.clock = Clock(1000.0)
    for _ in range(h.app.router.health.threshold):
        status, _, body = post(h, {"model": "sim-broken", "messages": HELLO})
        assert status == 502 and orjson.loads(body)["error"]["code"] == "UPSTREAM_ERROR"
    return h, clock


def test_http_outage_is_503_with_retry_after_for_the_openai_sdk(tripped):
    h, clock = tripped
    clock.now += 3.0
    calls = h.app.adapters["broken"].calls
    client = openai.OpenAI(base_url=http_url(h, "/v1"), api_key=KEY, max_retries=0, timeout=30)
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="sim-broken", messages=HELLO, stream=stream)
        err = info.value
        assert err.status_code == 503 and isinstance(err, openai.InternalServerError)
        assert err.response.headers["retry-after"] == "7"          # cooldown 10 s, opened 3 s ago
        body = err.body if isinstance(err.body, dict) and "code" in err.body else err.body["error"]
        assert body["code"] == "UNAVAILABLE" and body["retryable"] is True
        assert body["retry_after_ms"] == 7000
    assert h.app.adapters["broken"].calls == calls                # nothing went upstream


def test_openai_sdk_retries_the_outage_after_retry_after(tripped, monkeypatch):
    h, clock = tripped
    client = openai.OpenAI(base_url=http_url(h, "/v1"), api_key=KEY, max_retries=2, timeout=30)
    delays = []
    compute = client._calculate_retry_timeout

    def no_sleep(*args, **kwargs):
        """The SDK's own delay (from our Retry-After) is recorded and spent on the server's clock,
        and the upstream heals meanwhile; the SDK then sleeps 0 s instead of really waiting."""
        delay = compute(*args, **kwargs)
        delays.append(delay)
        clock.now += delay
        h.app.adapters["broken"].settings = SimulatedSettings()
        return 0.0
    monkeypatch.setattr(client, "_calculate_retry_timeout", no_sleep)
    answer = client.chat.completions.create(model="sim-broken", messages=HELLO, max_tokens=3)
    assert delays == [10.0]
    assert answer.model == "sim-broken" and answer.choices[0].message.content


def test_no_route_because_of_the_request_stays_a_client_error(tripped):
    h, _ = tripped
    status, headers, body = post(h, {"model": "sim-fast", "messages": HELLO,
                                     "atp": {"capabilities": ["telepathy"]}})
    err = orjson.loads(body)["error"]
    assert status == 422 and err["code"] == "NO_ROUTE" and err["retryable"] is False
    assert "Retry-After" not in headers


def test_grpc_and_frame_session_outage_is_retryable_unavailable(tripped):
    h, clock = tripped
    clock.now += 4.0

    async def go():
        async with AsyncGrpcClient(h.grpc_target, KEY) as c:
            with pytest.raises(AtpClientError) as typed:
                await c.complete("hi", model="sim-broken")
        channel = grpc.aio.insecure_channel(h.grpc_target)
        async with channel:
            stub = atp_pb2_grpc.AtpStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as raw:
                await stub.Complete(request_message("hi", model="sim-broken"),
                                    metadata=(("authorization", f"Bearer {KEY}"),))
        async with AsyncSessionClient(h.grpc_target, atp_config.DEV_HMAC_KEY_ID, atp_config.DEV_HMAC_SECRET) as s:
            with pytest.raises(AtpClientError) as session:
                await s.complete("hi", model="sim-broken")
        return typed.value, raw.value, session.value
    typed, raw, session = asyncio.run(asyncio.wait_for(go(), 30))
    assert raw.code() == grpc.StatusCode.UNAVAILABLE
    trailers = dict(raw.trailing_metadata())
    assert trailers["atp-retryable"] == "true" and trailers["atp-retry-after-ms"] == "6000"
    for err in (typed, session):
        assert err.code == ErrorCode.UNAVAILABLE and err.retryable and err.retry_after_ms == 6000


def test_bogus_model_names_over_http_keep_metrics_bounded(start_server):
    h = start_server(grpc=False, quic=False)

    async def go():
        async with aiohttp.ClientSession() as s:
            async def one(i):
                async with s.post(http_url(h), headers=AUTH, json={
                        "model": f"bogus-{i}-" + "x" * 100, "messages": HELLO}) as r:
                    return r.status
            statuses = await asyncio.gather(*(one(i) for i in range(1000)))
            async with s.get(http_url(h, "/metrics")) as r:
                return statuses, await r.read()
    statuses, body = asyncio.run(asyncio.wait_for(go(), 60))
    assert set(statuses) == {404}
    series = [line for line in body.decode().splitlines() if line.startswith("atp_requests_total{")]
    assert series == ['atp_requests_total{model="unknown",outcome="UNKNOWN_MODEL",transport="http"} 1000.0']
    assert b"bogus" not in body and len(body) < 20_000
