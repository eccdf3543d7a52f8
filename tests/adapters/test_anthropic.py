"""AnthropicAdapter against the recorded-format fixture server, and its sans-I/O SSE parser alone."""
import orjson
import pytest

from atp_server.adapters import anthropic as an
from atp_server.adapters.base import ModelSpec
from atp_server.adapters.settings import AnthropicSettings
from atp_server.types import (AtpError, ChatRequest, Finish, ImagePart, MessageDetail, ResponseFormat, TextDelta,
                              ToolCall, ToolCallDelta, ToolChoice, ToolSpec)
from codec.errors import ErrorCode
from tests.adapters.fixtures.server import anthropic_server, events, serving, transcript

TRANSCRIPTS = ["text.sse", "tool_use.sse", "thinking.sse", "stop_sequence.sse", "error_overloaded.sse",
               "error_invalid.sse", "unknown_events.sse"]


def parse(data: bytes, step: int | None = None, pieces=None) -> list:
    p = an.SSEParser()
    if pieces is None:
        pieces = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    out = [ev for piece in pieces for ev in p.feed(piece)]
    return out, p


# ---- parser ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TRANSCRIPTS)
def test_parser_result_does_not_depend_on_how_bytes_arrive(name):
    data = transcript("anthropic", name)
    whole, _ = parse(data)
    assert whole == parse(data, 1)[0] == parse(data, 7)[0]
    assert whole == parse(data, pieces=events(data, b"\n\n"))[0]
    assert whole and all(type(e) is not dict for e in whole)


def test_parser_text_stream_every_event_type_in_order():
    evs, p = parse(transcript("anthropic", "text.sse"))
    assert [type(e).__name__ for e in evs] == [
        "MessageStart", "BlockStart", "Ping", "TextChunk", "TextChunk", "TextChunk", "BlockStop",
        "MessageDelta", "MessageStop"]
    assert evs[0] == an.MessageStart("msg_01XFDUDYJgAACzvnptvVoYEL", "claude-sonnet-4-5", 25, 1, 0)
    assert evs[7] == an.MessageDelta("end_turn", None, 12, None)
    p.end()   # finished: no error


def test_parser_tool_use_block_and_input_json_deltas():
    evs, _ = parse(transcript("anthropic", "tool_use.sse"))
    start = next(e for e in evs if type(e) is an.BlockStart and e.block_type == "tool_use")
    assert (start.index, start.block["id"], start.block["name"]) == (1, "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                                                                    "get_weather")
    args = "".join(e.partial_json for e in evs if type(e) is an.ToolInputChunk and e.index == 1)
    assert orjson.loads(args) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert [e for e in evs if type(e) is an.MessageDelta][0].stop_reason == "tool_use"


def test_parser_thinking_signature_and_redacted_blocks():
    evs, _ = parse(transcript("anthropic", "thinking.sse"))
    thinking = "".join(e.thinking for e in evs if type(e) is an.ThinkingChunk)
    assert thinking.startswith("Let me solve this step by step") and "453 = 400 + 50 + 3" in thinking
    assert [e.signature for e in evs if type(e) is an.SignatureChunk] == ["EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"]
    assert [e.block_type for e in evs if type(e) is an.BlockStart] == ["thinking", "redacted_thinking", "text"]


def test_parser_error_event_and_unknown_events():
    evs, _ = parse(transcript("anthropic", "error_overloaded.sse"))
    assert evs[-1] == an.StreamError("overloaded_error", "Overloaded")
    evs, p = parse(transcript("anthropic", "unknown_events.sse"))   # CRLF, a comment, future kinds
    assert [e.text for e in evs if type(e) is an.TextChunk] == ["fine"]
    assert len(evs) == 6     # start, block start, text, block stop, delta, stop: the rest skipped
    p.end()


def test_parser_multi_line_data_and_events_without_data():
    evs, _ = parse(b'event: ping\n\n: keep-alive comment\n\nevent: message_start\ndata: {"type":"message_start",\n'
                   b'data: "message":{"id":"m","model":"x","usage":{"input_tokens":3}}}\n\n')
    assert evs == [an.MessageStart("m", "x", 3, None, None)]
    for bad in (b'data: {"type": {"a": 1}}\n\n', b'data: [1]\n\n', b'data: {"no_type": 1}\n\n'):
        with pytest.raises(AtpError, match="malformed SSE data"):
            parse(bad)


@pytest.mark.parametrize("name,code,match", [
    ("malformed.sse", ErrorCode.UPSTREAM_ERROR, "malformed SSE data"),
    ("out_of_order.sse", ErrorCode.UPSTREAM_ERROR, "content_block_delta not allowed before message_start"),
])
def test_parser_refuses_broken_streams(name, code, match):
    with pytest.raises(AtpError, match=match) as e:
        parse(transcript("anthropic", name))
    assert e.value.code == code


def test_parser_truncated_stream_is_a_cut_and_a_huge_line_is_refused():
    evs, p = parse(transcript("anthropic", "truncated.sse"))
    assert [e.text for e in evs if type(e) is an.TextChunk] == ["Hello", "! How can I help"]
    with pytest.raises(AtpError, match="without message_stop") as e:
        p.end()
    assert e.value.code == ErrorCode.UPSTREAM_CUT
    with pytest.raises(AtpError, match="before message_start"):
        an.SSEParser().end()
    with pytest.raises(AtpError, match="over 1 MiB"):
        an.SSEParser().feed(b"data: " + b"x" * (1 << 20))


def test_payload_lifts_system_and_requires_max_tokens():
    model = ModelSpec("c", "a", "claude-x", max_output_tokens=256)
    req = ChatRequest([("system", "be brief"), ("user", "hi"), ("assistant", "yo"), ("user", "again")],
                      temperature=0.5)
    body = an.messages_payload(model, req, True)
    assert body == {"model": "claude-x", "max_tokens": 256, "system": "be brief", "temperature": 0.5,
                    "stream": True, "messages": [{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "yo"},
                                                 {"role": "user", "content": "again"}]}
    for bad, match in (([("user", "x")], "temperature above 1"), ([("system", "only")], "at least one user"),
                       ([("tool", "x")], "needs the tool_call_id"), ([("function", "x")], "role 'function'")):
        with pytest.raises(AtpError, match=match) as e:
            an.messages_payload(model, ChatRequest(bad, temperature=1.5 if "temperature" in match else None), False)
        assert e.value.code == ErrorCode.INVALID_REQUEST


# ---- adapter over HTTP ----------------------------------------------------------------------------

def _adapter(url: str, **kw) -> an.AnthropicAdapter:
    return an.AnthropicAdapter("claude", AnthropicSettings(base_url=url, api_key="sk-ant-test", **kw))


async def _collect(upstream: str, messages=(("user", "hi"),), **kw):
    fx = anthropic_server()
    async with serving(fx) as url:
        adapter = _adapter(url, **kw)
        try:
            items = [i async for i in adapter.stream(ModelSpec("c", "claude", upstream, max_output_tokens=300),
                                                      ChatRequest(list(messages)))]
        finally:
            await adapter.aclose()
    return items, fx.requests


@pytest.mark.parametrize("upstream", ["text", "text@split=7", "text@split=1"])
def test_stream_text_usage_and_headers(run, upstream):
    items, reqs = run(lambda: _collect(upstream, (("system", "sys"), ("user", "hi")),
                                       extra_headers={"anthropic-beta": "tools-2024-05-16"}))
    assert "".join(i.text for i in items if type(i) is TextDelta) == "Hello! How can I help you today?"
    assert items[-1] == Finish("stop", 25, 12, (), 0)   # cache_read_input_tokens 0 is reported
    (req,) = reqs
    assert req["headers"]["x-api-key"] == "sk-ant-test"
    assert req["headers"]["anthropic-version"] == "2023-06-01"
    assert req["headers"]["anthropic-beta"] == "tools-2024-05-16"
    assert "Authorization" not in req["headers"]
    assert req["body"]["system"] == "sys" and req["body"]["max_tokens"] == 300 and req["body"]["stream"] is True


@pytest.mark.parametrize("upstream,text,finish", [
    ("tool_use", "Okay, let me check the weather.", Finish("tool_calls", 472, 89)),
    ("thinking", "27 * 453 = 12,231", Finish("stop", 85, 310)),          # thinking is not answer text
    ("stop_sequence", "one, two, ", Finish("stop", 12, 5)),
    ("unknown_events", "fine", Finish("stop", 7, 2)),
])
def test_stream_documented_event_kinds(run, upstream, text, finish):
    items, _ = run(lambda: _collect(upstream))
    assert "".join(i.text for i in items if type(i) is TextDelta) == text
    assert items[-1] == finish


def test_stream_tool_use_becomes_tool_call_deltas(run):
    items, _ = run(lambda: _collect("tool_use"))
    calls = [i for i in items if type(i) is ToolCallDelta]
    assert calls[0] == ToolCallDelta(0, "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather", "")
    assert all(c.index == 0 and c.id is None for c in calls[1:])
    assert orjson.loads("".join(c.arguments for c in calls)) == {"location": "San Francisco, CA",
                                                                 "unit": "fahrenheit"}


def test_payload_tools_images_tool_results_and_parameters():
    model = ModelSpec("c", "a", "claude-x")
    call = ToolCall("toolu_1", "get_weather", '{"city":"Paris"}')
    req = ChatRequest(
        [("user", "what is this?"), ("assistant", ""), ("tool", "18C"), ("tool", "sunny")],
        details=(MessageDetail(parts=("what is this?", ImagePart("data:image/png;base64,iVBORw0K"),
                                      ImagePart("https://x.test/a.jpg"))),
                 MessageDetail(tool_calls=(call,)), MessageDetail(tool_call_id="toolu_1"),
                 MessageDetail(tool_call_id="toolu_2")),
        tools=(ToolSpec("get_weather", "Weather now", {"type": "object", "properties": {"city": {"type": "string"}}}),),
        tool_choice=ToolChoice("required"), parallel_tool_calls=False, stop=("END",), top_p=0.9, user="u-1")
    body = an.messages_payload(model, req, False)
    assert body["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}},
            {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                                     {"type": "tool_result", "tool_use_id": "toolu_2", "content": "sunny"}]}]
    assert body["tools"] == [{"name": "get_weather", "description": "Weather now", "input_schema": {
        "type": "object", "properties": {"city": {"type": "string"}}}}]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert (body["stop_sequences"], body["top_p"], body["metadata"]) == (["END"], 0.9, {"user_id": "u-1"})
    forced = an.messages_payload(model, ChatRequest([("user", "x")], tool_choice=ToolChoice("function", "f")), False)
    assert forced["tool_choice"] == {"type": "tool", "name": "f"}


@pytest.mark.parametrize("field,value", [("seed", 7), ("logit_bias", {"1": 2.0}), ("presence_penalty", 0.5),
                                         ("logprobs", True)])
def test_payload_refuses_what_anthropic_cannot_do_by_name(field, value):
    with pytest.raises(AtpError, match=field) as e:
        an.messages_payload(ModelSpec("c", "a", "x"), ChatRequest([("user", "x")], **{field: value}), False)
    assert e.value.code == ErrorCode.INVALID_REQUEST


def test_payload_json_formats_become_structured_output():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    for fmt, want in ((ResponseFormat("json_schema", "x", schema), schema),
                      (ResponseFormat("json_object"), {"type": "object"})):
        body = an.messages_payload(ModelSpec("c", "a", "x"), ChatRequest([("user", "x")], response_format=fmt), False)
        assert body["output_config"] == {"format": {"type": "json_schema", "schema": want}}
    assert "output_config" not in an.messages_payload(ModelSpec("c", "a", "x"), ChatRequest(
        [("user", "x")], response_format=ResponseFormat("text")), False)


@pytest.mark.parametrize("upstream,code,retry_ms,match", [
    ("error_overloaded", ErrorCode.UPSTREAM_ERROR, 0, "overloaded_error: Overloaded"),
    ("error_invalid", ErrorCode.INVALID_REQUEST, 0, "prompt is too long"),
    ("truncated", ErrorCode.UPSTREAM_CUT, 0, "without message_stop"),
    ("text@cut=300", ErrorCode.UPSTREAM_CUT, 0, "mid-body"),
    ("malformed", ErrorCode.UPSTREAM_ERROR, 0, "malformed SSE data"),
    ("out_of_order", ErrorCode.UPSTREAM_ERROR, 0, "not allowed"),
    ("http_529", ErrorCode.UPSTREAM_ERROR, 7000, "overloaded_error"),
    ("http_429", ErrorCode.RATE_LIMITED, 7000, "rate_limit_error"),
    ("http_400", ErrorCode.INVALID_REQUEST, 0, "max_tokens: Field required"),
    ("http_401", ErrorCode.FORBIDDEN, 0, "authentication_error"),
    ("http_404", ErrorCode.UNKNOWN_MODEL, 0, "model: claude-nope"),
    ("http_500", ErrorCode.UPSTREAM_ERROR, 0, "api_error"),
    ("http_502", ErrorCode.UPSTREAM_ERROR, 0, "502 Bad Gateway"),
])
def test_stream_failures_map_to_wire_codes(run, upstream, code, retry_ms, match):
    with pytest.raises(AtpError, match=match) as e:
        run(lambda: _collect(upstream))
    assert e.value.code == code and e.value.retry_after_ms == retry_ms
    assert e.value.message.startswith("claude: ")
    assert e.value.retryable == (code not in (ErrorCode.INVALID_REQUEST, ErrorCode.UNKNOWN_MODEL,
                                              ErrorCode.FORBIDDEN))


def test_complete_reads_one_messages_body(run):
    async def go():
        fx = anthropic_server()
        async with serving(fx) as url:
            adapter = _adapter(url)
            try:
                model = ModelSpec("c", "claude", "message")
                got = await adapter.complete(model, ChatRequest([("user", "weather?")], max_tokens=50))
                with pytest.raises(AtpError) as e:
                    await adapter.complete(ModelSpec("c", "claude", "http_400"), ChatRequest([("user", "x")]))
            finally:
                await adapter.aclose()
        return got, e.value, fx.requests
    (text, finish), err, reqs = run(go)
    assert text == "I'll check the weather." and finish[:3] == ("tool_calls", 2095, 503)
    assert finish.tool_calls == (ToolCall("toolu_01A09q90qw90lq917835lq9", "get_weather",
                                          '{"location":"San Francisco, CA"}'),)
    assert err.code == ErrorCode.INVALID_REQUEST
    assert "stream" not in reqs[0]["body"] and reqs[0]["body"]["max_tokens"] == 50


def test_overload_before_any_text_yields_nothing_so_the_pipeline_can_fail_over(run):
    async def go():
        fx = anthropic_server()
        got = []
        async with serving(fx) as url:
            adapter = _adapter(url)
            try:
                with pytest.raises(AtpError) as e:
                    async for item in adapter.stream(ModelSpec("c", "claude", "error_overloaded"),
                                                     ChatRequest([("user", "x")])):
                        got.append(item)
            finally:
                await adapter.aclose()
        return got, e.value
    got, err = run(go)
    assert got == [] and err.retryable     # nothing reached the client: failover is still allowed


def test_list_models_and_health(run):
    async def go():
        fx = anthropic_server()
        async with serving(fx) as url:
            adapter, dead = _adapter(url), _adapter("http://127.0.0.1:9")
            try:
                return await adapter.list_models(), await adapter.health(), await dead.health(), fx.requests
            finally:
                await adapter.aclose()
                await dead.aclose()
    names, healthy, dead_healthy, reqs = run(go)
    assert names == ["claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001"]
    assert healthy is True and dead_healthy is False
    assert reqs[0]["method"] == "GET" and reqs[0]["headers"]["x-api-key"] == "sk-ant-test"


def test_refused_connection_is_a_retryable_upstream_error(run):
    async def go():
        adapter = _adapter("http://127.0.0.1:9")   # discard port: nothing listens
        try:
            return [i async for i in adapter.stream(ModelSpec("c", "claude", "text"), ChatRequest([("user", "x")]))]
        finally:
            await adapter.aclose()
    with pytest.raises(AtpError) as e:
        run(go)
    assert e.value.code == ErrorCode.UPSTREAM_ERROR and e.value.retryable


# ---- configuration --------------------------------------------------------------------------------

def test_config_builds_an_anthropic_provider_and_names_a_bad_option(monkeypatch):
    from atp_server import config
    from atp_server.app import build_adapter
    monkeypatch.setenv("ATP_TEST_ANTHROPIC_KEY", "sk-ant-env")
    toml = ('[[providers]]\nname = "claude"\ntype = "anthropic"\napi_key_env = "ATP_TEST_ANTHROPIC_KEY"\n'
            '[[models]]\nid = "sonnet"\nprovider = "claude"\nupstream = "claude-sonnet-4-5"\n')
    cfg = config.loads(toml)
    (p,) = cfg.providers
    assert p.settings.api_key == "sk-ant-env" and p.settings.base_url == "https://api.anthropic.com"
    adapter = build_adapter(p.name, p.type, p.options)
    assert isinstance(adapter, an.AnthropicAdapter) and adapter._json_headers["x-api-key"] == "sk-ant-env"
    for option, value, match in (("timeout_s", '"abc"', "providers\\[claude\\].timeout_s"),
                                 ("max_connections", "0", "providers\\[claude\\].max_connections"),
                                 ("anthropic_version", '""', "providers\\[claude\\].anthropic_version"),
                                 ("base_url", '"ftp://x"', "providers\\[claude\\].base_url")):
        bad = toml.replace('type = "anthropic"\n', f'type = "anthropic"\n{option} = {value}\n')
        with pytest.raises(config.ConfigError, match=match):
            config.loads(bad)
