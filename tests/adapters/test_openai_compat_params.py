"""OpenAICompatAdapter forwards the whole neutral request and reads back tool calls, cached tokens,
embeddings and model lists, against a fake server replaying OpenAI's documented wire format."""
import orjson
import pytest
from aiohttp import web

from atp_server.adapters.openai_compat import OpenAICompatAdapter
from atp_server.routing.spec import ModelSpec
from atp_server.types import (ChatRequest, EmbeddingRequest, Finish, ImagePart, MessageDetail, ResponseFormat,
                              TextDelta, ToolCall, ToolCallDelta, ToolChoice, ToolSpec)

from ._servers import serve_app

SPEC = ModelSpec("m", "p", "up-model", max_output_tokens=256)


def _chunk(delta: dict | None = None, finish=None, usage=None) -> bytes:
    obj = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up-model",
           "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    if usage:
        obj["usage"] = usage
    return b"data: " + orjson.dumps(obj) + b"\n\n"


USAGE = {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29, "prompt_tokens_details": {"cached_tokens": 16}}
# OpenAI's streamed tool call: the first delta of each call has id, type and name, the rest append arguments.
TOOL_SSE = (_chunk({"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": "call_a", "type": "function", "function": {"name": "weather", "arguments": ""}}]})
            + _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]})
            + _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "\"Oslo\"}"}}]})
            + _chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                      "function": {"name": "time", "arguments": "{}"}}]})
            + _chunk({}, finish="tool_calls") + _chunk(None, usage=USAGE) + b"data: [DONE]\n\n")
TOOL_ANSWER = {"id": "c1", "object": "chat.completion", "model": "up-model", "usage": USAGE, "choices": [{
    "index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]}}]}

FULL = ChatRequest(
    [("system", "sys"), ("user", "look"), ("assistant", ""), ("tool", "sunny")],
    max_tokens=5000, temperature=0.2, stop=("END",), top_p=0.9, seed=42, presence_penalty=0.5,
    frequency_penalty=0.25, logit_bias={"7": -100}, parallel_tool_calls=False, user="u9",
    details=(None, MessageDetail(parts=("look", ImagePart("https://x/y.png", "high"))),
             MessageDetail(tool_calls=(ToolCall("call_a", "weather", "{}"),)), MessageDetail(tool_call_id="call_a")),
    tools=(ToolSpec("weather", "w", {"type": "object"}, True), ToolSpec("time")),
    tool_choice=ToolChoice("function", "weather"),
    response_format=ResponseFormat("json_schema", "out", {"type": "object"}, True))


def _fake(seen: list) -> web.Application:
    async def chat(request):
        body = await request.json()
        seen.append(body)
        if not body["stream"]:
            return web.json_response(TOOL_ANSWER)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(TOOL_SSE)
        await resp.write_eof()
        return resp

    async def embeddings(request):
        body = await request.json()
        seen.append(body)
        data = [{"object": "embedding", "index": i, "embedding": [float(i), 0.5]} for i in range(len(body["input"]))]
        return web.json_response({"object": "list", "data": data[::-1], "usage": {"prompt_tokens": 6}})

    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": "up-model", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    return app


def test_every_parameter_is_forwarded_and_max_tokens_is_clamped(run):
    async def main():
        seen = []
        async with serve_app(_fake(seen)) as url:
            adapter = OpenAICompatAdapter("p", url + "/v1")
            await adapter.complete(SPEC, FULL)
            await adapter.aclose()
        return seen[0]
    body = run(main)
    assert body["max_tokens"] == 256          # 5000 asked, the model's max_output_tokens sent
    assert {k: body[k] for k in ("stop", "top_p", "seed", "presence_penalty", "frequency_penalty", "logit_bias",
                                 "parallel_tool_calls", "user", "temperature")} == {
        "stop": ["END"], "top_p": 0.9, "seed": 42, "presence_penalty": 0.5, "frequency_penalty": 0.25,
        "logit_bias": {"7": -100}, "parallel_tool_calls": False, "user": "u9", "temperature": 0.2}
    assert body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "high"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_a"}]
    assert body["tools"] == [
        {"type": "function", "function": {"name": "weather", "description": "w", "parameters": {"type": "object"},
                                          "strict": True}},
        {"type": "function", "function": {"name": "time", "parameters": {"type": "object", "properties": {}}}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "out", "schema": {"type": "object"}, "strict": True}}


def test_streamed_tool_calls_become_deltas_and_usage_carries_cached_tokens(run):
    async def main():
        async with serve_app(_fake([])) as url:
            adapter = OpenAICompatAdapter("p", url + "/v1")
            items = [i async for i in adapter.stream(SPEC, FULL)]
            await adapter.aclose()
        return items
    assert run(main) == [
        ToolCallDelta(0, "call_a", "weather", ""), ToolCallDelta(0, None, None, '{"city":'),
        ToolCallDelta(0, None, None, '"Oslo"}'), ToolCallDelta(1, "call_b", "time", "{}"),
        Finish("tool_calls", 20, 9, (), 16)]


def test_a_whole_answer_carries_its_tool_calls(run):
    async def main():
        async with serve_app(_fake([])) as url:
            adapter = OpenAICompatAdapter("p", url + "/v1")
            out = await adapter.complete(SPEC, FULL)
            await adapter.aclose()
        return out
    assert run(main) == ("", Finish("tool_calls", 20, 9, (ToolCall("call_a", "weather", '{"city":"Oslo"}'),), 16))


def test_quirk_options_stream_usage_off_and_max_completion_tokens(run):
    async def main():
        seen = []
        async with serve_app(_fake(seen)) as url:
            adapter = OpenAICompatAdapter("p", url + "/v1", stream_usage=False, max_tokens_field="max_completion_tokens",
                                          json_schema_format="json_object_schema")
            [i async for i in adapter.stream(SPEC, ChatRequest([("user", "x")], max_tokens=3,
                                                               response_format=FULL.response_format))]
            await adapter.aclose()
        return seen[0]
    body = run(main)
    assert "stream_options" not in body and "max_tokens" not in body and body["max_completion_tokens"] == 3
    assert body["response_format"] == {"type": "json_object", "schema": {"type": "object"}}


@pytest.mark.parametrize("fmt,sent", [
    (ResponseFormat("json_schema", "person", {"type": "object", "required": ["name"]}),
     {"type": "json", "value": {"type": "object", "required": ["name"]}}),
    (ResponseFormat("json_object"), {"type": "json", "value": {"type": "object"}}),
    (ResponseFormat("text"), {"type": "text"}),
])
def test_tgi_gets_its_grammar_form_of_response_format(run, fmt, sent):
    async def main():
        seen = []
        async with serve_app(_fake(seen)) as url:
            adapter = OpenAICompatAdapter("p", url + "/v1", json_schema_format="tgi")
            await adapter.complete(SPEC, ChatRequest([("user", "x")], response_format=fmt))
            await adapter.aclose()
        return seen[0]
    assert run(main)["response_format"] == sent


def test_embeddings_in_input_order_models_and_health(run):
    async def main():
        seen = []
        async with serve_app(_fake(seen)) as url:
            adapter = OpenAICompatAdapter("p", url + "/v1")
            emb = await adapter.embed(SPEC, EmbeddingRequest(("a", "b", "c"), dimensions=2))
            models, healthy = await adapter.list_models(), await adapter.health()
            await adapter.aclose()
        dead = OpenAICompatAdapter("p", url + "/v1", connect_timeout_s=1)   # the server is gone now
        down = await dead.health()
        await dead.aclose()
        return seen[0], emb, models, healthy, down
    body, emb, models, healthy, down = run(main)
    assert body == {"model": "up-model", "input": ["a", "b", "c"], "dimensions": 2}
    assert emb.vectors == [[0.0, 0.5], [1.0, 0.5], [2.0, 0.5]] and emb.input_tokens == 6
    assert models == ["up-model"] and healthy is True and down is False


def test_plain_text_stream_still_yields_text(run):
    sse = _chunk({"content": "hi"}) + _chunk({}, finish="stop") + b"data: [DONE]\n\n"

    async def chat(request):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(sse)
        await resp.write_eof()
        return resp

    async def main():
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        async with serve_app(app) as url:
            adapter = OpenAICompatAdapter("p", url + "/v1")
            items = [i async for i in adapter.stream(SPEC, ChatRequest([("user", "x")]))]
            await adapter.aclose()
        return items
    assert run(main) == [TextDelta("hi"), Finish("stop", None, None)]
