"""The OpenAI-compatible HTTP transport over real sockets: the official openai client for the happy
paths, raw aiohttp for errors, signatures, SSE edge cases, cancellation, overload and draining."""
import asyncio
import dataclasses
import os
import sqlite3
import time
import uuid

import aiohttp
import openai
import orjson
import pytest

from atp_server import config as atp_config
from atp_server.auth import SIG_KEY_ID, SIG_NONCE, SIG_SIGNATURE, SIG_TIMESTAMP, sign_request

from tests.helpers.toml_models import BROKEN_MODEL

from .conftest import ServerHarness

KEY = atp_config.DEV_API_KEY
AUTH = {"Authorization": f"Bearer {KEY}"}
HELLO = [{"role": "user", "content": "hello"}]
CHAT = "/v1/chat/completions"

# A provider that dies mid-stream, and a cheap, fast-looking one that always fails (failover bait).
EXTRA_TOML = """
[[providers]]
name = "cutter"
type = "simulated"
output_tokens = 8
cut_rate = 1.0

[[models]]
id = "sim-cut"
provider = "cutter"
quality = 0.01
latency_ms = 5000
price_in_per_mtok = 50.0
price_out_per_mtok = 50.0

""" + BROKEN_MODEL + """
# Greedy on the posterior mean, not Thompson sampling: these tests need sim-broken ranked first on
# every request (a sampled posterior may rank another model first, and then nothing fails over).
[routing]
bandit = "greedy"
"""


def url(h: ServerHarness, path: str = "") -> str:
    return f"http://127.0.0.1:{h.ports.http}{path}"


def call(method: str, u: str, *, json=None, data=None, headers=AUTH, timeout: float = 30):
    """One request on a fresh connection -> (status, headers, body bytes)."""
    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.request(method, u, json=json, data=data, headers=headers) as r:
                return r.status, r.headers, await r.read()
    return asyncio.run(asyncio.wait_for(go(), timeout))


def sse_events(body: bytes) -> list:
    """The data payloads of an SSE body: dicts, or the string "[DONE]"."""
    out = []
    for line in body.split(b"\n"):
        if line.startswith(b"data: "):
            payload = line[6:]
            out.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return out


def error_of(body: bytes) -> dict:
    return orjson.loads(body)["error"]


@pytest.fixture
def http(atp_server):
    assert atp_server.ports.http     # the harness raises when a transport does not start
    return atp_server


@pytest.fixture
def custom_server(tmp_path):
    """An HTTP-only server with EXTRA_TOML's providers added to the embedded default."""
    started = []
    cfg = atp_config.loads(atp_config.DEFAULT_TOML + EXTRA_TOML)
    cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, http_port=0, grpc_port=0,
                                                              quic_port=0, state_dir=str(tmp_path)))
    harness = ServerHarness(cfg, str(tmp_path / "audit.sqlite"))
    started.append(harness)
    yield harness.start(http=True, grpc=False, quic=False)
    harness.stop()
    harness.close()


def openai_client(h) -> openai.OpenAI:
    return openai.OpenAI(base_url=url(h, "/v1"), api_key=KEY, max_retries=0, timeout=30)


# ---- the official client ---------------------------------------------------------------------------

def test_openai_client_completion_with_gateway_headers(http):
    raw = openai_client(http).chat.completions.with_raw_response.create(
        model="atp-fast", messages=HELLO, max_tokens=5)
    c = raw.parse()
    assert c.object == "chat.completion" and c.choices[0].message.role == "assistant"
    assert c.choices[0].message.content and c.choices[0].finish_reason == "length"
    assert c.usage.completion_tokens == 5
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens
    assert c.model == raw.headers["x-atp-model"] and c.model.startswith("sim-")
    assert raw.headers["x-atp-provider"] == "sim"
    assert int(raw.headers["x-atp-overhead-us"]) >= 0
    assert c.id == "chatcmpl-" + raw.headers["x-request-id"]


def test_openai_client_stream_with_usage_and_text_parts(http):
    stream = openai_client(http).chat.completions.create(
        model="auto", messages=[{"role": "system", "content": "be brief"},
                                {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        stream=True, stream_options={"include_usage": True}, max_completion_tokens=6,
        extra_body={"atp": {"tier": "fast", "max_cost_usd": 1.0}})
    chunks = list(stream)
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) == 6 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert len({c.id for c in chunks}) == 1


def test_openai_client_models_list(http):
    ids = {m.id for m in openai_client(http).models.list()}
    assert {"sim-fast", "sim-balanced", "sim-high"} <= ids
    status, _, body = call("GET", url(http, "/v1/models"))
    entry = next(m for m in orjson.loads(body)["data"] if m["id"] == "sim-high")
    assert entry["object"] == "model" and entry["owned_by"] == "sim"
    assert entry["atp"]["price"] == {"input_per_mtok": 3.0, "output_per_mtok": 15.0}
    assert entry["atp"]["context_window"] == 131072 and entry["atp"]["healthy"] is True
    assert "vision" in entry["atp"]["capabilities"]


def test_openai_client_stream_cut_raises(custom_server):
    with pytest.raises(openai.APIError, match="mid-stream|cut"):
        for _ in openai_client(custom_server).chat.completions.create(
                model="sim-cut", messages=HELLO, stream=True):
            pass


# ---- errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-wrong"},
                                     {"Authorization": "Basic c2stYXRwLWRldg=="}])
def test_missing_or_wrong_key_is_401(http, headers):
    status, _, body = call("POST", url(http, CHAT), json={"model": "auto", "messages": HELLO},
                           headers=headers)
    err = error_of(body)
    assert status == 401 and err["atp_code"] == 205 and err["code"] == "UNAUTHENTICATED"
    assert err["type"] == "authentication_error" and err["retryable"] is False
    assert call("GET", url(http, "/v1/models"), headers=headers)[0] == 401


def test_openai_client_sees_authentication_error(http):
    client = openai.OpenAI(base_url=url(http, "/v1"), api_key="sk-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="auto", messages=HELLO)


@pytest.mark.parametrize("body,status,code,needle", [
    ({"model": "gpt-nope", "messages": HELLO}, 404, "UNKNOWN_MODEL", "gpt-nope"),
    ({"model": "auto", "messages": HELLO, "atp": {"capabilities": ["telepathy"]}}, 422, "NO_ROUTE",
     "telepathy"),
    ({"model": "auto", "messages": []}, 400, "INVALID_REQUEST", "messages"),
    ({"model": "auto", "messages": HELLO, "max_tokens": "many"}, 400, "INVALID_REQUEST", "max_tokens"),
    ({"model": "auto", "messages": HELLO, "temperature": 7}, 400, "INVALID_REQUEST", "temperature"),
    ({"model": "auto", "messages": HELLO, "n": 2}, 400, "INVALID_REQUEST", "n must be 1"),
    ({"model": "atp-fast", "messages": HELLO, "atp": {"tier": "high"}}, 400, "INVALID_REQUEST", "conflicts"),
    ({"model": "auto", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "INVALID_REQUEST", "content[0]"),
    ([1, 2], 400, "INVALID_REQUEST", "JSON object"),
])
def test_request_errors_map_to_http_status(http, body, status, code, needle):
    for stream in (False, True):    # a stream that fails before its first token is a plain error
        if isinstance(body, dict):
            body = {**body, "stream": stream}
        got, headers, raw = call("POST", url(http, CHAT), json=body)
        err = error_of(raw)
        assert (got, err["code"]) == (status, code), raw
        assert needle in err["message"] and headers["Content-Type"] == "application/json"


def test_malformed_json_is_400(http):
    status, _, body = call("POST", url(http, CHAT), data=b'{"model": "auto", "messages": [',
                           headers={**AUTH, "Content-Type": "application/json"})
    err = error_of(body)
    assert status == 400 and err["code"] == "INVALID_REQUEST" and "malformed JSON" in err["message"]


def test_oversized_body_is_413(http):
    status, _, body = call("POST", url(http, CHAT), data=b"x" * (5 * 1024 * 1024))
    assert status == 413 and error_of(body)["code"] == "INVALID_REQUEST"


def test_healthz_and_metrics_need_no_key(http):
    call("POST", url(http, CHAT), json={"model": "auto", "messages": HELLO, "max_tokens": 2})
    status, _, body = call("GET", url(http, "/healthz"), headers={})
    assert status == 200 and orjson.loads(body) == {"status": "ok"}
    status, headers, body = call("GET", url(http, "/metrics"), headers={})
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b"atp_requests" in body and b'transport="http"' in body


# ---- signatures ------------------------------------------------------------------------------------

def _signed(body: bytes, nonce: str, sign_body: bytes | None = None) -> dict:
    ts = int(time.time() * 1000)
    sig = sign_request(atp_config.DEV_HMAC_SECRET, "POST", CHAT, ts, nonce,
                       body if sign_body is None else sign_body)
    return {**AUTH, "Content-Type": "application/json", SIG_KEY_ID: str(atp_config.DEV_HMAC_KEY_ID),
            SIG_TIMESTAMP: str(ts), SIG_NONCE: nonce, SIG_SIGNATURE: sig}


def test_signed_request_accepted_and_replay_refused(http):
    body = orjson.dumps({"model": "auto", "messages": HELLO, "max_tokens": 2})
    headers = _signed(body, os.urandom(8).hex())
    assert call("POST", url(http, CHAT), data=body, headers=headers)[0] == 200
    status, _, raw = call("POST", url(http, CHAT), data=body, headers=headers)
    assert status == 401 and error_of(raw)["code"] == "REPLAYED_NONCE"
    tampered = _signed(body, os.urandom(8).hex(), sign_body=body + b" ")
    status, _, raw = call("POST", url(http, CHAT), data=body, headers=tampered)
    assert status == 401 and error_of(raw)["code"] == "BAD_SIGNATURE"


# ---- streams that end badly ------------------------------------------------------------------------

def test_mid_stream_cut_is_an_error_event_without_done(custom_server):
    status, headers, body = call("POST", url(custom_server, CHAT),
                                 json={"model": "sim-cut", "messages": HELLO, "stream": True})
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = sse_events(body)
    assert "[DONE]" not in events
    assert sum(1 for e in events if e.get("choices") and e["choices"][0]["delta"].get("content")) == 4
    assert events[-1]["error"]["code"] == "UPSTREAM_CUT" and events[-1]["error"]["atp_code"] == 503
    status, _, body = call("POST", url(custom_server, CHAT), json={"model": "sim-cut", "messages": HELLO})
    assert status == 502 and error_of(body)["code"] == "UPSTREAM_CUT"


def test_failover_before_first_token_names_the_model_that_answered(custom_server):
    for stream in (True, False):
        status, headers, body = call("POST", url(custom_server, CHAT), json={
            "model": "atp-fast", "messages": HELLO, "stream": stream, "max_tokens": 3})
        assert status == 200 and headers["x-atp-model"] != "sim-broken"
        final = next(e for e in sse_events(body) if "atp" in e) if stream else orjson.loads(body)
        assert final["model"] == headers["x-atp-model"] == final["atp"]["model"]
        assert any("failing over" in r or "failed over" in r for r in final["atp"]["route_reasons"])


def test_client_disconnect_cancels_the_pipeline(http):
    rid = f"disconnect-{uuid.uuid4().hex}"

    async def go():
        async with aiohttp.ClientSession() as s:
            r = await s.post(url(http, CHAT), headers={**AUTH, "X-Request-Id": rid}, json={
                "model": "sim-slow", "messages": HELLO, "stream": True})
            assert r.status == 200
            seen = b""
            while b'"content":"' not in seen.replace(b'"content":""', b""):
                seen += await r.content.readany()
            r.close()       # hang up mid-stream (sim-slow would need ~4 s to finish)
    asyncio.run(asyncio.wait_for(go(), 15))
    # CANCELLED, not ok: the hang-up ended the pipeline call before sim-slow could finish
    assert http.outcome(rid, timeout=10) == ("http", "CANCELLED", 505)

    async def flush():
        return http.app.audit.flush()
    http.run(flush())
    with sqlite3.connect(http.audit_path) as db:
        rows = db.execute("SELECT transport, outcome, code FROM audit WHERE request_id = ?",
                          (rid,)).fetchall()
    assert rows == [("http", "CANCELLED", 505)]


# ---- overload and draining ---------------------------------------------------------------------------

async def _open_slow_stream(s: aiohttp.ClientSession, h, **extra):
    """Start a sim-slow stream and return once its first token arrived (it holds a dispatch slot)."""
    r = await s.post(url(h, CHAT), headers=AUTH, json={"model": "sim-slow", "messages": HELLO,
                                                       "stream": True, **extra})
    assert r.status == 200
    seen = b""
    while b'"content":"' not in seen.replace(b'"content":""', b""):
        seen += await r.content.readany()
    return r, seen


def test_overload_is_429_with_retry_after(start_server):
    h = start_server(grpc=False, quic=False, max_inflight=1, max_queue=0)

    async def go():
        async with aiohttp.ClientSession() as s:
            slow, _ = await _open_slow_stream(s, h)
            async with aiohttp.ClientSession() as s2:
                r = await s2.post(url(h, CHAT), headers=AUTH, json={"model": "auto", "messages": HELLO})
                result = r.status, r.headers.get("Retry-After"), error_of(await r.read())
            slow.close()
            return result
    status, retry_after, err = asyncio.run(asyncio.wait_for(go(), 20))
    assert status == 429 and int(retry_after) >= 1
    assert err["code"] == "OVERLOADED" and err["retryable"] is True and err["type"] == "rate_limit_error"


def test_draining_refuses_new_requests_and_finishes_inflight(start_server):
    h = start_server(grpc=False, quic=False)
    app = h.app

    async def go():
        async with aiohttp.ClientSession() as s:
            slow, seen = await _open_slow_stream(s, h, max_tokens=60)   # ~1.2 s at 50 tokens/s
            stopping = asyncio.wrap_future(h.begin_stop(15))           # returns once draining
            async with aiohttp.ClientSession() as s2:
                r = await s2.post(url(h, CHAT), headers=AUTH, json={"model": "auto", "messages": HELLO})
                refused = r.status, r.headers.get("Retry-After"), error_of(await r.read())
                r = await s2.get(url(h, "/healthz"))
                health = r.status, await r.json()
                others = []     # the Anthropic route and the REST API refuse (and count) too
                for path in ("/v1/messages", "/api/v1/ai/route-request"):
                    r = await s2.post(url(h, path), headers=AUTH, json={"messages": HELLO})
                    others.append(r.status)
                r = await s2.post(url(h, "/v1/embeddings"), headers=AUTH,
                                  json={"model": "auto", "input": "hi"})
                others.append(r.status)
            rest = seen + await slow.read()
            await stopping
            return refused, health, rest, others
    refused, health, rest, others = asyncio.run(asyncio.wait_for(go(), 30))
    h.app = None                                  # stopped here; the fixture must not stop it again
    status, retry_after, err = refused
    assert status == 503 and err["code"] == "UNAVAILABLE" and retry_after
    assert health == (503, {"status": "draining"})
    assert others == [529, 503, 503]             # 529: the Anthropic dialect's status for UNAVAILABLE
    # four requests refused at the door while draining; the health probe is no refusal
    assert app.metrics.refusals == {("http", "draining"): 4}
    events = sse_events(rest)
    assert events[-1] == "[DONE]" and not any("error" in e for e in events[:-1])
    assert sum(1 for e in events[:-1] if e.get("choices") and e["choices"][0]["delta"].get("content")) == 60


def test_drain_past_grace_ends_requests_with_unavailable(start_server):
    h = start_server(grpc=False, quic=False)
    app = h.app

    async def go():
        async with aiohttp.ClientSession() as s:
            slow, seen = await _open_slow_stream(s, h)                     # ~4 s to finish
            plain = asyncio.ensure_future(s.post(url(h, CHAT), headers=AUTH, json={
                "model": "sim-slow", "messages": HELLO}))                  # non-streaming, ~4 s
            # both requests hold a dispatch slot before the stop begins (an event, not a poll)
            await asyncio.get_running_loop().run_in_executor(None, h.wait_inflight, 2)
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(app.stop(0.2), h.loop))
            rest = seen + await slow.read()
            r = await plain
            return rest, r.status, error_of(await r.read())
    rest, status, err = asyncio.run(asyncio.wait_for(go(), 20))
    h.app = None
    # Both ended with UNAVAILABLE at the grace, not with sim-slow's answer (~4 s later): the
    # error event without [DONE] and the 503 prove it without a clock.
    events = sse_events(rest)
    assert "[DONE]" not in events and events[-1]["error"]["code"] == "UNAVAILABLE"
    assert status == 503 and err["code"] == "UNAVAILABLE" and err["retryable"] is True
