"""OllamaAdapter against the recorded-format Ollama fixture server, and its NDJSON parser alone."""
import orjson
import pytest

from atp_server.adapters import ollama as ol
from atp_server.adapters.base import ModelSpec
from atp_server.adapters.settings import OllamaSettings
from atp_server.types import (AtpError, ChatRequest, EmbeddingRequest, Finish, ImagePart, MessageDetail,
                              ResponseFormat, TextDelta, ToolCall, ToolCallDelta, ToolChoice, ToolSpec)
from codec.errors import ErrorCode
from tests.adapters.fixtures.server import ollama_server, serving, transcript


def test_parser_splits_lines_wherever_the_bytes_break():
    data = transcript("ollama", "chat.ndjson")
    whole = ol.NDJSONParser().feed(data)
    p = ol.NDJSONParser()
    assert [o for i in range(len(data)) for o in p.feed(data[i:i + 1])] == whole
    assert [o["message"]["content"] for o in whole] == ["The", " sky", " is blue.", ""]
    assert whole[-1]["done"] is True and whole[-1]["eval_count"] == 282


def test_parser_refuses_malformed_lines_and_bounds_a_line():
    with pytest.raises(AtpError, match="malformed NDJSON line") as e:
        ol.NDJSONParser().feed(transcript("ollama", "malformed.ndjson"))
    assert e.value.code == ErrorCode.UPSTREAM_ERROR
    with pytest.raises(AtpError, match="not an object"):
        ol.NDJSONParser().feed(b"[1, 2]\n")
    with pytest.raises(AtpError, match="over 1 MiB"):
        ol.NDJSONParser().feed(b"x" * ((1 << 20) + 1))


def test_payload_options_format_tools_images_and_tool_results():
    model = ModelSpec("l", "o", "llama3.2", max_output_tokens=128)
    call = ToolCall("call_0", "get_weather", '{"city":"Tokyo"}')
    req = ChatRequest(
        [("developer", "be brief"), ("user", "what is this?"), ("assistant", ""), ("tool", "18C")],
        details=(None, MessageDetail(parts=("what is this?", ImagePart("data:image/png;base64,iVBOR"))),
                 MessageDetail(tool_calls=(call,)), MessageDetail(tool_call_id="call_0")),
        tools=(ToolSpec("get_weather", "Weather", {"type": "object"}),), temperature=0.3, top_p=0.8, seed=42,
        stop=("END",), response_format=ResponseFormat("json_object"))
    body = ol.chat_payload(model, req, True, keep_alive="10m")
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is this?", "images": ["iVBOR"]},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                          "arguments": {"city": "Tokyo"}}}]},
        {"role": "tool", "content": "18C", "tool_name": "get_weather"}]
    assert body["options"] == {"temperature": 0.3, "top_p": 0.8, "seed": 42, "num_predict": 128, "stop": ["END"]}
    assert body["format"] == "json" and body["keep_alive"] == "10m" and body["stream"] is True
    assert body["tools"] == [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                                               "parameters": {"type": "object"}}}]
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert ol.chat_payload(model, ChatRequest([("user", "x")], response_format=ResponseFormat(
        "json_schema", "s", schema)), False)["format"] == schema


@pytest.mark.parametrize("kw,match", [
    ({"logit_bias": {"1": 1.0}}, "logit_bias"), ({"logprobs": True}, "logprobs"),
    ({"tool_choice": ToolChoice("required")}, "tool_choice required"),
    ({"details": (MessageDetail(parts=("x", ImagePart("https://x.test/a.png"))),)}, "not remote URLs"),
])
def test_payload_refuses_what_ollama_cannot_do(kw, match):
    with pytest.raises(AtpError, match=match) as e:
        ol.chat_payload(ModelSpec("l", "o", "m"), ChatRequest([("user", "x")], **kw), False)
    assert e.value.code == ErrorCode.INVALID_REQUEST


# ---- over HTTP ------------------------------------------------------------------------------------

async def _with_adapter(fn):
    fx = ollama_server()
    async with serving(fx) as url:
        adapter = ol.OllamaAdapter("local", OllamaSettings(base_url=url))
        try:
            return await fn(adapter), fx.requests
        finally:
            await adapter.aclose()


def _stream(upstream: str):
    async def fn(adapter):
        return [i async for i in adapter.stream(ModelSpec("l", "local", upstream), ChatRequest([("user", "hi")]))]
    return lambda: _with_adapter(fn)


@pytest.mark.parametrize("upstream", ["chat", "chat@split=5"])
def test_stream_text_and_exact_usage(run, upstream):
    items, reqs = run(_stream(upstream))
    assert "".join(i.text for i in items if type(i) is TextDelta) == "The sky is blue."
    assert items[-1] == Finish("stop", 26, 282)
    assert reqs[0]["path"] == "/api/chat" and reqs[0]["body"]["stream"] is True
    assert reqs[0]["body"]["options"]["num_predict"] == 1024      # the model's max_output_tokens


def test_stream_length_and_tool_calls(run):
    items, _ = run(_stream("chat_length"))
    assert items[-1] == Finish("length", 11, 2)
    items, _ = run(_stream("chat_tools"))
    assert [i for i in items if type(i) is TextDelta] == []       # thinking is not answer text
    assert [i for i in items if type(i) is ToolCallDelta] == [
        ToolCallDelta(0, "call_0", "get_weather", '{"city":"Tokyo"}'),
        ToolCallDelta(1, "call_1", "get_time", '{"zone":"Asia/Tokyo"}')]
    assert items[-1] == Finish("tool_calls", 180, 40)


@pytest.mark.parametrize("upstream,code,match", [
    ("error_midstream", ErrorCode.UPSTREAM_ERROR, "unexpected EOF"),
    ("truncated", ErrorCode.UPSTREAM_CUT, "without a done line"),
    ("chat@cut=200", ErrorCode.UPSTREAM_CUT, "mid-body"),
    ("malformed", ErrorCode.UPSTREAM_ERROR, "malformed NDJSON"),
    ("http_404", ErrorCode.UNKNOWN_MODEL, "not found, try pulling it first"),
    ("http_400", ErrorCode.INVALID_REQUEST, "num_ctx must be positive"),
    ("http_500", ErrorCode.UPSTREAM_ERROR, "runner process has terminated"),
    ("http_503", ErrorCode.UPSTREAM_ERROR, "server busy"),
])
def test_stream_failures_map_to_wire_codes(run, upstream, code, match):
    with pytest.raises(AtpError, match=match) as e:
        run(_stream(upstream))
    assert e.value.code == code and e.value.message.startswith("local: ")
    if upstream == "http_503":
        assert e.value.retry_after_ms == 7000 and e.value.retryable


def test_complete_embed_tags_ps_and_health(run):
    async def fn(adapter):
        text = await adapter.complete(ModelSpec("l", "local", "chat"), ChatRequest([("user", "hi")]))
        tools = await adapter.complete(ModelSpec("l", "local", "chat_tools"), ChatRequest([("user", "hi")]))
        emb = await adapter.embed(ModelSpec("e", "local", "all-minilm"), EmbeddingRequest(("a", "b"), dimensions=5))
        return text, tools, emb, await adapter.list_models(), await adapter.loaded_models(), await adapter.health()
    (text, tools, emb, tags, ps, healthy), reqs = run(lambda: _with_adapter(fn))
    assert text == ("Hello! How are you today?", Finish("stop", 26, 298))
    assert tools[1].reason == "tool_calls" and tools[1].tool_calls == (
        ToolCall("call_0", "get_weather", '{"city":"Toronto"}'),)
    assert len(emb.vectors) == 2 and emb.vectors[0][0] == pytest.approx(0.010071029) and emb.input_tokens == 8
    assert reqs[2]["body"] == {"model": "all-minilm", "input": ["a", "b"], "dimensions": 5}
    assert tags == ["llama3.2:latest", "all-minilm:latest"]
    assert ps == [ol.LoadedModel("mistral:latest", 5137025024, 5137025024, "2024-06-04T14:38:31.83753-07:00", 4096)]
    assert healthy is True and reqs[0]["body"]["stream"] is False


def test_embed_errors_and_a_dead_server_is_unhealthy(run):
    async def fn(adapter):
        with pytest.raises(AtpError) as e:
            await adapter.embed(ModelSpec("e", "local", "http_404"), EmbeddingRequest(("a",)))
        with pytest.raises(AtpError) as short:      # two inputs, the fixture answers with two vectors
            await adapter.embed(ModelSpec("e", "local", "all-minilm"), EmbeddingRequest(("a", "b", "c")))
        dead = ol.OllamaAdapter("gone", OllamaSettings(base_url="http://127.0.0.1:9"))
        try:
            return e.value, short.value, await dead.health()
        finally:
            await dead.aclose()
    (err, short, healthy), _ = run(lambda: _with_adapter(fn))
    assert err.code == ErrorCode.UNKNOWN_MODEL and short.code == ErrorCode.UPSTREAM_ERROR and healthy is False


def test_config_builds_an_ollama_provider_and_names_a_bad_option():
    from atp_server import config
    from atp_server.app import build_adapter
    toml = ('[[providers]]\nname = "local"\ntype = "ollama"\nkeep_alive = "5m"\n'
            '[[models]]\nid = "llama"\nprovider = "local"\nupstream = "llama3.2"\n')
    (p,) = config.loads(toml).providers
    adapter = build_adapter(p.name, p.type, p.options)
    assert isinstance(adapter, ol.OllamaAdapter) and adapter._chat == "http://127.0.0.1:11434/api/chat"
    assert "embeddings" in adapter.capabilities
    for option, value in (("timeout_s", "0"), ("base_url", '"localhost"'), ("max_connections", '"8"'),
                          ("api_key", '"x"')):
        with pytest.raises(config.ConfigError, match=f"providers\\[local\\].{option}"):
            config.loads(toml.replace('keep_alive = "5m"\n', f"{option} = {value}\n"))
