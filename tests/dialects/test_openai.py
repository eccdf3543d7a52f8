"""The OpenAI dialect in memory: every chat parameter is forwarded into the neutral request or refused by name."""
import orjson
import pytest

from atp_server.dialects import openai as dialect
from atp_server.types import (AtpError, Completion, Done, ImagePart, RouteDecision, ToolCall, ToolCallDelta,
                              Usage)
from codec.errors import ErrorCode

HELLO = [{"role": "user", "content": "hi"}]
WEATHER = {"type": "function", "function": {"name": "weather", "description": "d",
                                            "parameters": {"type": "object"}, "strict": True}}
DECISION = RouteDecision("sim", "m1", 0.0, 1.0, 1.0, ("r",))


def parse(**body):
    return dialect.parse_chat({"model": "auto", "messages": HELLO, **body})[0]


def refused(body) -> AtpError:
    with pytest.raises(AtpError) as info:
        dialect.parse_chat(body)
    assert info.value.code == ErrorCode.INVALID_REQUEST
    return info.value


def test_every_sampling_parameter_is_forwarded():
    r = parse(stop=["x", "y"], top_p=0.5, seed=7, presence_penalty=0.1, frequency_penalty=-0.2,
              logit_bias={"50256": -100}, user="u1", temperature=0.3, max_completion_tokens=9,
              parallel_tool_calls=False, logprobs=False, n=1)
    assert (r.stop, r.top_p, r.seed, r.presence_penalty, r.frequency_penalty) == (("x", "y"), 0.5, 7, 0.1, -0.2)
    assert (r.logit_bias, r.user, r.temperature, r.max_tokens) == ({"50256": -100}, "u1", 0.3, 9)
    assert r.parallel_tool_calls is False and r.metadata == {"user": "u1"}
    assert parse(stop="end").stop == ("end",)


def test_tools_tool_choice_and_response_format_are_forwarded_and_set_capabilities():
    r = parse(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "weather"}},
              response_format={"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"},
                                                                      "strict": True}})
    assert [(t.name, t.description, t.parameters, t.strict) for t in r.tools] == [
        ("weather", "d", {"type": "object"}, True)]
    assert (r.tool_choice.mode, r.tool_choice.name) == ("function", "weather")
    assert (r.response_format.type, r.response_format.name, r.response_format.strict) == ("json_schema", "out", True)
    assert r.capabilities == ("json", "tools")
    assert parse(response_format={"type": "json_object"}).capabilities == ("json",)
    assert parse(response_format={"type": "text"}).capabilities == ()


def test_image_parts_tool_calls_and_tool_results_reach_the_details():
    msgs = [{"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "what is"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA",
                                                                             "detail": "low"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    r = dialect.parse_chat({"model": "auto", "messages": msgs})[0]
    assert r.messages == [("system", "be brief"), ("user", "what is"), ("assistant", ""), ("tool", "sunny")]
    assert r.details[0] is None
    assert r.details[1].parts == ("what is", ImagePart("data:image/png;base64,AA", "low"))
    assert r.details[2].tool_calls == (ToolCall("c1", "weather", "{}"),)
    assert r.details[3].tool_call_id == "c1"
    assert r.capabilities == ("vision",)


def test_plain_text_requests_carry_no_details():
    r = dialect.parse_chat({"model": "auto", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]})[0]
    assert r.messages == [("user", "a\nb")] and r.details == () and r.capabilities == ()


@pytest.mark.parametrize("extra, param", [
    ({"logprobs": True}, "logprobs"), ({"top_logprobs": 3}, "top_logprobs"), ({"store": True}, "store"),
    ({"functions": [{"name": "f"}]}, "functions"), ({"function_call": "auto"}, "function_call"),
    ({"audio": {"voice": "x"}}, "audio"), ({"modalities": ["text", "audio"]}, "modalities"),
    ({"prediction": {"type": "content"}}, "prediction"), ({"metadata": {"a": "b"}}, "metadata"),
    ({"reasoning_effort": "low"}, "reasoning_effort"), ({"service_tier": "flex"}, "service_tier"),
    ({"web_search_options": {}}, "web_search_options"), ({"made_up": 1}, "made_up"),
    ({"n": 3}, "n"), ({"stop": 5}, "stop"), ({"seed": 1.5}, "seed"), ({"top_p": "x"}, "top_p"),
    ({"logit_bias": {"1": 500}}, "logit_bias"), ({"tools": [{"type": "function"}]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"), ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "function", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
])
def test_unsupported_values_are_refused_naming_the_parameter(extra, param):
    exc = refused({"model": "auto", "messages": HELLO, **extra})
    assert exc.param == param and orjson.loads(dialect.error_body(exc))["error"]["param"] == param


def test_accepted_defaults_of_refusable_parameters_pass():
    r = parse(logprobs=False, top_logprobs=0, store=False, modalities=["text"], service_tier="auto", metadata=None)
    assert r.messages == [("user", "hi")]


def test_legacy_completion_becomes_one_user_message_and_refuses_echo():
    chat, stream, _ = dialect.parse_completion({"model": "auto", "prompt": ["say hi"], "max_tokens": 3,
                                                "stop": "\n", "stream": True})
    assert chat.messages == [("user", "say hi")] and chat.stop == ("\n",) and chat.max_tokens == 3 and stream
    for extra in ({"echo": True}, {"best_of": 2}, {"logprobs": 2}, {"suffix": "x"}, {"prompt": ["a", "b"]},
                  {"messages": HELLO}):
        with pytest.raises(AtpError):
            dialect.parse_completion({"model": "auto", "prompt": "x", **extra})


def test_embeddings_request():
    req, _ = dialect.parse_embeddings({"model": "e1", "input": "a", "dimensions": 4})
    assert (req.inputs, req.model, req.dimensions) == (("a",), "e1", 4)
    assert dialect.parse_embeddings({"model": "auto", "input": ["a", "b"]})[0].model is None
    for bad in ({"input": [1, 2]}, {"input": ""}, {"input": "a", "encoding_format": "int8"}, {"input": "a", "x": 1}):
        with pytest.raises(AtpError):
            dialect.parse_embeddings(bad)


def test_completion_body_carries_tool_calls_cost_and_the_estimated_flag():
    usage = Usage(10, 4, 1234, True, 2)
    body = orjson.loads(dialect.completion_body(Completion(
        "r1", "", "tool_calls", usage, DECISION, 5, (ToolCall("c1", "weather", '{"a":1}'),))))
    msg = body["choices"][0]["message"]
    assert msg["content"] is None and msg["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"a":1}'}}]
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14, "estimated": True,
                             "prompt_tokens_details": {"cached_tokens": 2}}
    assert body["atp"]["cost_usd"] == 0.001234 and body["atp"]["usage_estimated"] is True


def test_chunk_encoder_emits_openai_chunks():
    enc = dialect.ChunkEncoder("r1", "m1")
    first = orjson.loads(enc.tool_call(ToolCallDelta(0, "c1", "weather", "{"))[6:])
    assert first["choices"][0]["delta"]["tool_calls"] == [
        {"index": 0, "id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{"}}]
    more = orjson.loads(enc.tool_call(ToolCallDelta(0, None, None, "}"))[6:])
    assert more["choices"][0]["delta"]["tool_calls"] == [{"index": 0, "function": {"arguments": "}"}}]
    tail = enc.done(Done("stop", Usage(1, 2, 3), DECISION, 4), True).split(b"\n\n")
    assert orjson.loads(tail[1][6:])["usage"]["total_tokens"] == 3 and tail[2] == b"data: [DONE]"
    legacy = orjson.loads(dialect.ChunkEncoder("r1", "m1", legacy=True).text("hi")[6:])
    assert legacy["object"] == "text_completion" and legacy["choices"][0]["text"] == "hi"
