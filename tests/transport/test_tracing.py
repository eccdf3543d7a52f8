"""Trace context through every front door over real sockets: a client's traceparent is the parent
of the request span (HTTP OpenAI and Anthropic dialects, the REST API, typed gRPC metadata, frame
`meta` over a gRPC Session) and the trace id comes back (x-atp-trace-id header / trailing metadata)."""
import asyncio
import uuid

import aiohttp
import grpc
import pytest

from atp_client import AsyncSessionClient
from atp_client.grpc_client import request_message
from atp_server.config import DEV_API_KEY, DEV_HMAC_KEY_ID, DEV_HMAC_SECRET
from proto.atp.v1 import atp_pb2_grpc

from .conftest import ServerHarness, server_config

TRACED = '\n[tracing]\nenabled = true\nexporter = "memory"\n'
CLIENT_TRACE, CLIENT_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
PARENT = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", "tracestate": "congo=t61rcWkgMzE"}
AUTH = {"Authorization": f"Bearer {DEV_API_KEY}"}
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    d = tmp_path_factory.mktemp("atp-traced")
    harness = ServerHarness(server_config(d, TRACED), str(d / "audit.sqlite")).start(quic=False)
    yield harness
    harness.stop()
    harness.close()


def rid() -> str:
    return f"tr-{uuid.uuid4().hex[:12]}"


def request_span(h: ServerHarness, request_id: str):
    """The request span of `request_id` (ended before its response left the server)."""
    (span,) = [s for s in h.app.tracer.finished_spans()
               if s.name == "atp.request" and s.attributes["atp.request_id"] == request_id]
    return span


def assert_child_of_the_client(span) -> None:
    assert format(span.context.trace_id, "032x") == CLIENT_TRACE
    assert format(span.parent.span_id, "016x") == CLIENT_SPAN
    assert span.context.trace_state.get("congo") == "t61rcWkgMzE"


def post(h: ServerHarness, path: str, body: dict, headers: dict):
    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{h.ports.http}{path}", json=body,
                              headers={**AUTH, **headers}) as r:
                return r.status, r.headers, await r.read()
    return asyncio.run(asyncio.wait_for(go(), 30))


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"model": "sim-fast", "messages": HELLO}),
    ("/v1/chat/completions", {"model": "sim-fast", "messages": HELLO, "stream": True}),
    ("/v1/messages", {"model": "sim-fast", "max_tokens": 16, "messages": HELLO}),
    ("/v1/messages", {"model": "sim-fast", "max_tokens": 16, "messages": HELLO, "stream": True}),
    ("/api/v1/ai/route-request", {"model": "sim-fast", "messages": HELLO}),
])
def test_an_http_traceparent_parents_the_request_span_and_the_trace_id_comes_back(traced, path, body):
    request_id = rid()
    status, headers, _ = post(traced, path, body, {**PARENT, "X-Request-Id": request_id})
    assert status == 200
    assert headers["x-atp-trace-id"] == CLIENT_TRACE
    assert_child_of_the_client(request_span(traced, request_id))


def test_without_a_traceparent_the_request_starts_a_trace_and_returns_its_id(traced):
    request_id = rid()
    status, headers, _ = post(traced, "/v1/chat/completions", {"model": "sim-fast", "messages": HELLO},
                              {"X-Request-Id": request_id})
    span = request_span(traced, request_id)
    assert status == 200 and span.parent is None
    assert headers["x-atp-trace-id"] == format(span.context.trace_id, "032x")


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"model": "no-such-model", "messages": HELLO}),
    ("/v1/messages", {"model": "no-such-model", "max_tokens": 16, "messages": HELLO}),
])
def test_a_refusal_in_the_pipeline_still_returns_the_trace_id(traced, path, body):
    request_id = rid()
    status, headers, _ = post(traced, path, body, {**PARENT, "X-Request-Id": request_id})
    assert status == 404 and headers["x-atp-trace-id"] == CLIENT_TRACE
    assert request_span(traced, request_id).attributes["atp.outcome"] == "UNKNOWN_MODEL"


@pytest.mark.parametrize("rpc", ["Complete", "Stream"])
def test_grpc_metadata_traceparent_parents_the_request_span(traced, rpc):
    request_id = rid()

    async def go():
        async with grpc.aio.insecure_channel(traced.grpc_target) as channel:
            stub = atp_pb2_grpc.AtpStub(channel)
            md = (("authorization", AUTH["Authorization"]),) + tuple(PARENT.items())
            call = getattr(stub, rpc)(request_message("hi", request_id=request_id, model="sim-fast"),
                                      metadata=md)
            if rpc == "Stream":
                async for _ in call:
                    pass
            else:
                await call
            return dict(await call.trailing_metadata())
    trailing = asyncio.run(go())
    assert trailing["x-atp-trace-id"] == CLIENT_TRACE
    span = request_span(traced, request_id)
    assert_child_of_the_client(span)
    assert span.attributes["atp.transport"] == "grpc"


def test_a_frame_requests_meta_traceparent_parents_the_request_span(traced):
    request_id = rid()

    async def go():
        async with AsyncSessionClient(traced.grpc_target, DEV_HMAC_KEY_ID, DEV_HMAC_SECRET) as s:
            return await s.complete("hi", model="sim-fast", request_id=request_id, metadata=dict(PARENT))
    assert asyncio.run(go()).text
    span = request_span(traced, request_id)
    assert_child_of_the_client(span)


def test_with_tracing_off_no_trace_id_goes_back(atp_server):
    status, headers, _ = post(atp_server, "/v1/chat/completions", {"model": "sim-fast", "messages": HELLO},
                              PARENT)
    assert status == 200 and "x-atp-trace-id" not in headers
    assert atp_server.app.tracer is None
