"""OpenAICompatAdapter against a fake OpenAI-compatible server: SSE, JSON, error mapping, cuts."""
import asyncio

import orjson
import pytest
from aiohttp import web

from atp_server.routing.spec import ModelSpec
from atp_server.adapters.openai_compat import OpenAICompatAdapter, _SSEParser
from atp_server.types import AtpError, ChatRequest, ErrorCode, Finish, TextDelta

from ._servers import RawServer, peer_port, read_request, serve_app, until_eof

REQ = ChatRequest(messages=[("system", "be brief"), ("user", "hi")], max_tokens=16, temperature=0.5)


def _spec(upstream: str) -> ModelSpec:
    return ModelSpec(id=f"sim/{upstream}", provider="sim", upstream=upstream)


def _chunk(delta: dict | None = None, finish=None, usage=None) -> bytes:
    obj = {"id": "c1", "object": "chat.completion.chunk", "model": "x",
           "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage:
        obj["usage"] = usage
    return b"data: " + orjson.dumps(obj) + b"\n\n"


USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
GOOD_SSE = (_chunk({"role": "assistant", "content": ""}) + _chunk({"content": "Hel"}) + _chunk({"content": "lo"})
            + _chunk({"content": " world"}) + _chunk({}, finish="stop") + _chunk(None, usage=USAGE)
            + b"data: [DONE]\n\n")


def _fake_openai(seen: list, ports: list) -> web.Application:
    async def completions(request: web.Request):
        body = await request.json()
        seen.append((dict(request.headers), body))
        ports.append(peer_port(request))
        mode = body["model"]
        if mode == "ratelimit":
            return web.json_response({"error": {"message": "slow down", "type": "rate_limit"}}, status=429,
                                     headers={"Retry-After": "2"})
        if mode == "boom":
            return web.Response(status=500, text="internal failure")
        if mode == "missing":
            return web.json_response({"error": {"message": f"The model `{mode}` does not exist",
                                                "code": "model_not_found"}}, status=404)
        if mode == "bad":
            return web.json_response({"error": {"message": "messages: field required"}}, status=400)
        if mode == "nopath":
            return web.Response(status=404, text="404: Not Found")
        if not body["stream"]:
            finish = "length" if mode == "length" else "stop"
            answer = {"id": "c1", "object": "chat.completion", "model": mode,
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello world"},
                                   "finish_reason": finish}]}
            if mode != "length":
                answer["usage"] = USAGE
            return web.json_response(answer)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if mode == "ok":
            payload = GOOD_SSE
        elif mode == "split":  # CRLF lines, written in 7-byte pieces: events straddle reads
            payload = GOOD_SSE.replace(b"\n", b"\r\n")
        elif mode == "cut":  # a clean HTTP end, but the SSE stream never finished
            payload = _chunk({"content": "partial"})
        elif mode == "finish-no-done":
            payload = _chunk({"content": "x"}) + _chunk({}, finish="length")
        elif mode == "inband":
            payload = _chunk({"content": "a"}) + b'data: {"error": {"message": "model crashed"}}\n\n'
        else:
            raise AssertionError(mode)
        step = 7 if mode == "split" else len(payload)
        for i in range(0, len(payload), step):
            await resp.write(payload[i:i + step])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app


async def _collect(adapter, upstream, request=REQ):
    return [item async for item in adapter.stream(_spec(upstream), request)]


def test_stream_parses_deltas_usage_and_reuses_the_connection(run):
    async def main():
        seen, ports = [], []
        async with serve_app(_fake_openai(seen, ports)) as url:
            adapter = OpenAICompatAdapter("sim", url + "/v1/", api_key="sk-test", extra_headers={"X-Org": "atp"})
            for mode in ("ok", "split", "ok"):
                items = await _collect(adapter, mode)
                assert items == [TextDelta("Hel"), TextDelta("lo"), TextDelta(" world"), Finish("stop", 7, 3)]
            assert len(set(ports)) == 1  # drained after [DONE] -> back in the pool each time
            headers, body = seen[0]
            assert headers["Authorization"] == "Bearer sk-test" and headers["X-Org"] == "atp"
            assert headers["Accept"] == "text/event-stream"
            assert body == {"model": "ok", "stream": True, "max_tokens": 16, "temperature": 0.5,
                            "stream_options": {"include_usage": True},
                            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}
            await adapter.aclose()
    run(main)


def test_complete_non_streaming(run):
    async def main():
        seen, ports = [], []
        async with serve_app(_fake_openai(seen, ports)) as url:
            adapter = OpenAICompatAdapter("sim", url + "/v1")
            assert await adapter.complete(_spec("ok"), REQ) == ("Hello world", Finish("stop", 7, 3))
            assert await adapter.complete(_spec("length"), ChatRequest(messages=[("user", "x")])) == \
                ("Hello world", Finish("length", None, None))
            headers, body = seen[1]
            assert "Authorization" not in headers and body["stream"] is False
            assert "stream_options" not in body and "temperature" not in body
            assert body["max_tokens"] == 1024      # unasked, the model's max_output_tokens (the clamp)
            assert len(set(ports)) == 1
            await adapter.aclose()
    run(main)


@pytest.mark.parametrize("mode,code,retry_ms", [
    ("ratelimit", ErrorCode.RATE_LIMITED, 2000),
    ("boom", ErrorCode.UPSTREAM_ERROR, 0),
    ("missing", ErrorCode.UNKNOWN_MODEL, 0),
    ("bad", ErrorCode.INVALID_REQUEST, 0),
    ("nopath", ErrorCode.INTERNAL, 0),  # 404 not about a model: a wrong base_url, not retryable
])
def test_http_errors_map_to_codes(run, mode, code, retry_ms):
    async def main():
        async with serve_app(_fake_openai([], [])) as url:
            adapter = OpenAICompatAdapter("sim", url + "/v1")
            for call in (adapter.complete(_spec(mode), REQ), _collect(adapter, mode)):
                with pytest.raises(AtpError) as info:
                    await call
                assert (info.value.code, info.value.retry_after_ms) == (code, retry_ms)
                assert "HTTP" in info.value.message
            await adapter.aclose()
    run(main)


@pytest.mark.parametrize("mode,code", [("cut", ErrorCode.UPSTREAM_CUT), ("inband", ErrorCode.UPSTREAM_ERROR)])
def test_broken_streams(run, mode, code):
    async def main():
        async with serve_app(_fake_openai([], [])) as url:
            adapter = OpenAICompatAdapter("sim", url + "/v1")
            got = []
            with pytest.raises(AtpError) as info:
                async for item in adapter.stream(_spec(mode), REQ):
                    got.append(item)
            assert info.value.code == code and got and isinstance(got[0], TextDelta)
            await adapter.aclose()
    run(main)


def test_finish_reason_without_done_is_a_normal_end(run):
    async def main():
        async with serve_app(_fake_openai([], [])) as url:
            adapter = OpenAICompatAdapter("sim", url + "/v1")
            assert await _collect(adapter, "finish-no-done") == [TextDelta("x"), Finish("length", None, None)]
            await adapter.aclose()
    run(main)


def _sse_script(then_close: bool):
    async def script(reader, writer, index):
        await read_request(reader)
        event = _chunk({"content": "first"})
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
        if not then_close:
            await until_eof(reader)
    return script


def test_connection_dropped_mid_stream_is_upstream_cut(run):
    async def main():
        async with RawServer(_sse_script(then_close=True)) as server:
            adapter = OpenAICompatAdapter("sim", server.url)
            got = []
            with pytest.raises(AtpError) as info:
                async for item in adapter.stream(_spec("any"), REQ):
                    got.append(item)
            assert info.value.code == ErrorCode.UPSTREAM_CUT and got == [TextDelta("first")]
            await adapter.aclose()
    run(main)


def test_closing_the_stream_early_closes_the_upstream_connection(run):
    async def main():
        async with RawServer(_sse_script(then_close=False)) as server:
            adapter = OpenAICompatAdapter("sim", server.url)
            stream = adapter.stream(_spec("any"), REQ)
            assert await stream.__anext__() == TextDelta("first")
            await stream.aclose()  # what the pipeline does when its client goes away
            await server.closed[0].wait()
            await adapter.aclose()
    run(main)


def test_transport_failures(run):
    async def main():
        async def silent(reader, writer, index):
            await read_request(reader)
            await until_eof(reader)

        async with RawServer(silent) as server:
            adapter = OpenAICompatAdapter("sim", server.url, timeout_s=0.1)
            for call in (adapter.complete(_spec("x"), REQ), _collect(adapter, "x")):
                with pytest.raises(AtpError) as info:
                    await call
                assert info.value.code == ErrorCode.UPSTREAM_TIMEOUT
            await adapter.aclose()
            port = server.port
        await asyncio.sleep(0)
        adapter = OpenAICompatAdapter("sim", f"http://127.0.0.1:{port}")  # nobody listens any more
        for call in (adapter.complete(_spec("x"), REQ), _collect(adapter, "x")):
            with pytest.raises(AtpError) as info:
                await call
            assert info.value.code == ErrorCode.UPSTREAM_ERROR and "ConnectError" in info.value.message
        await adapter.aclose()
    run(main)


def test_sse_parser_edge_cases():
    p = _SSEParser()
    assert p.feed(b"data: a\n") == []
    assert p.feed(b"\n: comment\nevent: x\ndata:b\ndata: c\n\ndata: [DO") == [b"a", b"b\nc"]
    assert p.feed(b"NE]\r\n\r\n") == [b"[DONE]"]


@pytest.mark.parametrize("vector,why", [([[0.1, 0.2], [0.3, 0.4]], "per-token embeddings"),
                                        ([], "malformed"), ("abc", "malformed"), ([0.1, "x"], "malformed"),
                                        ([None], "malformed")])
def test_an_embedding_that_is_not_a_flat_list_of_numbers_is_an_upstream_error(vector, why):
    from atp_server.adapters.openai_compat import _check_vector
    with pytest.raises(AtpError, match=why) as caught:
        _check_vector("up", vector)
    assert caught.value.code is ErrorCode.UPSTREAM_ERROR
    _check_vector("up", [0.5, -1, 2.0])    # a flat list of numbers passes
