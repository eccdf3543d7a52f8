"""The simulated provider's tools / JSON answers, through the pipeline (tool-call deltas pass through)."""
import asyncio

import orjson

from atp_server.app import App
from atp_server.types import (ChatRequest, Delta, Done, ResponseFormat, ToolCallDelta, ToolChoice,
                              ToolSpec)

from ..server.helpers import PRINCIPAL, make_config

WEATHER = ToolSpec("weather", "the weather in a city", {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"]})


async def _both(tmp_path, request_kwargs):
    # Greedy routing: both calls must reach the same model (the simulated answer is a function of
    # the model and the request id; Thompson sampling could send the two calls to two models).
    app = App(make_config(tmp_path, extra='[routing]\nbandit = "greedy"\n'))
    try:
        items = [i async for i in app.pipeline.stream(ChatRequest([("user", "hi")], request_id="same", **request_kwargs),
                                                      PRINCIPAL, "test")]
        whole = await app.pipeline.complete(ChatRequest([("user", "hi")], request_id="same", **request_kwargs), PRINCIPAL, "test")
    finally:
        await app.stop(0)
    return items, whole


def test_a_tools_request_streams_tool_call_deltas_and_completes_with_the_same_call(tmp_path):
    items, whole = asyncio.run(_both(tmp_path, {"tools": (ToolSpec("other"), WEATHER),
                                                "tool_choice": ToolChoice("function", "weather")}))
    deltas = [i for i in items if type(i) is ToolCallDelta]
    assert deltas[0].name == "weather" and deltas[0].id.startswith("call_")
    args = "".join(d.arguments for d in deltas)
    assert orjson.loads(args) == {"city": orjson.loads(args)["city"], "days": 1}
    assert items[-1].finish_reason == "tool_calls" and not [i for i in items if type(i) is Delta]
    assert whole.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in whole.tool_calls] == [(deltas[0].id, "weather", args)]


def test_tool_choice_none_gives_plain_text(tmp_path):
    items, whole = asyncio.run(_both(tmp_path, {"tools": (WEATHER,), "tool_choice": ToolChoice("none")}))
    assert not [i for i in items if type(i) is ToolCallDelta] and whole.tool_calls == () and whole.text


def test_json_schema_format_answers_json_that_has_the_schema_properties(tmp_path):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "ok": {"type": "boolean"},
                                               "tags": {"type": "array"}}}
    items, whole = asyncio.run(_both(tmp_path, {"response_format": ResponseFormat("json_schema", "x", schema)}))
    streamed = "".join(i.text for i in items if type(i) is Delta)
    assert streamed == whole.text and len([i for i in items if type(i) is Delta]) > 1
    value = orjson.loads(whole.text)
    assert set(value) == {"name", "ok", "tags"} and value["ok"] is True
    assert type(items[-1]) is Done and items[-1].usage.output_tokens == whole.usage.output_tokens


def test_json_object_format_answers_a_json_object(tmp_path):
    _, whole = asyncio.run(_both(tmp_path, {"response_format": ResponseFormat("json_object")}))
    assert type(orjson.loads(whole.text)) is dict
