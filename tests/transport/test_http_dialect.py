"""The OpenAI dialect over real sockets with the official client: tools, JSON mode, vision routing,
legacy completions, embeddings, /v1/models/{id}, JSON 404/405, cost headers, the output clamp."""
import asyncio
import dataclasses

import aiohttp
import openai
import orjson
import pytest

from atp_server import config as atp_config

from tests.helpers.toml_models import EMBED_MODEL

from .conftest import ServerHarness

KEY = atp_config.DEV_API_KEY
AUTH = {"Authorization": f"Bearer {KEY}"}
HELLO = [{"role": "user", "content": "hello"}]
WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

# A model whose max_output_tokens is below what the simulated provider would write.
EXTRA_TOML = EMBED_MODEL + """
[[models]]
id = "sim-short"
provider = "sim"
quality = 0.01
latency_ms = 9000
price_in_per_mtok = 99.0
price_out_per_mtok = 99.0
max_output_tokens = 4
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dialect")
    cfg = atp_config.loads(atp_config.DEFAULT_TOML + EXTRA_TOML)
    cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, http_port=0, grpc_port=0,
                                                              quic_port=0, state_dir=str(tmp)))
    harness = ServerHarness(cfg, str(tmp / "audit.sqlite"))
    yield harness.start(http=True, grpc=False, quic=False)
    harness.stop()
    harness.close()


def client(h) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{h.ports.http}/v1", api_key=KEY, max_retries=0, timeout=30)


def call(h, method: str, path: str, json=None):
    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.request(method, f"http://127.0.0.1:{h.ports.http}{path}", json=json, headers=AUTH) as r:
                return r.status, r.headers, await r.read()
    return asyncio.run(asyncio.wait_for(go(), 30))


def test_tools_route_to_a_tools_model_and_come_back_as_tool_calls(server):
    raw = client(server).chat.completions.with_raw_response.create(
        model="auto", messages=HELLO, tools=[WEATHER], tool_choice="required")
    c = raw.parse()
    assert raw.headers["x-atp-model"] == "sim-high"        # the only default model with "tools"
    call_ = c.choices[0].message.tool_calls[0]
    assert c.choices[0].finish_reason == "tool_calls" and call_.function.name == "weather"
    assert set(orjson.loads(call_.function.arguments)) == {"city"}
    assert float(raw.headers["x-atp-cost-usd"]) > 0 and raw.headers["x-atp-usage-estimated"] == "false"


def test_streamed_tool_call_deltas_reassemble(server):
    chunks = list(client(server).chat.completions.create(model="auto", messages=HELLO, tools=[WEATHER],
                                                         stream=True, stream_options={"include_usage": True}))
    calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or ())]
    assert calls[0].id and calls[0].function.name == "weather" and all(tc.index == 0 for tc in calls)
    assert set(orjson.loads("".join(tc.function.arguments for tc in calls))) == {"city"}
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens > 0


def test_a_pinned_model_without_tools_is_refused_not_silently_used(server):
    with pytest.raises(openai.UnprocessableEntityError, match="tools"):
        client(server).chat.completions.create(model="sim-fast", messages=HELLO, tools=[WEATHER])


def test_json_mode_answers_json_and_needs_a_json_model(server):
    raw = client(server).chat.completions.with_raw_response.create(
        model="auto", messages=HELLO, response_format={"type": "json_schema", "json_schema": {
            "name": "person", "schema": {"type": "object", "properties": {"name": {"type": "string"}}}}})
    assert raw.headers["x-atp-model"] == "sim-high"
    assert set(orjson.loads(raw.parse().choices[0].message.content)) == {"name"}


def test_an_image_part_routes_to_a_vision_model(server):
    raw = client(server).chat.completions.with_raw_response.create(model="atp-fast", messages=[
        {"role": "user", "content": [{"type": "text", "text": "what is this"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
    assert raw.headers["x-atp-model"] == "sim-high"


def test_refused_parameter_is_an_openai_400_naming_it(server):
    with pytest.raises(openai.BadRequestError) as info:
        client(server).chat.completions.create(model="auto", messages=HELLO, logprobs=True)
    assert info.value.body["param"] == "logprobs" and "logprobs" in info.value.body["message"]


def test_max_output_tokens_clamps_what_the_client_asked(server):
    c = client(server).chat.completions.create(model="sim-short", messages=HELLO, max_tokens=100)
    assert c.usage.completion_tokens == 4 and c.choices[0].finish_reason == "length"


def test_legacy_completions_streaming_and_not(server):
    c = client(server).completions.create(model="atp-fast", prompt="say hi", max_tokens=3)
    assert c.object == "text_completion" and c.choices[0].text and c.usage.completion_tokens == 3
    parts = list(client(server).completions.create(model="atp-fast", prompt="say hi", max_tokens=3, stream=True))
    texts = [p.choices[0].text for p in parts if p.choices and p.choices[0].text]
    assert len(texts) == 3 and parts[-1].choices[0].finish_reason == "length"


def test_embeddings_through_the_official_client(server):
    raw = client(server).embeddings.with_raw_response.create(model="sim-embed", input=["a", "b", "a"])
    e = raw.parse()
    vectors = [d.embedding for d in e.data]
    assert len(vectors) == 3 and len(vectors[0]) == 8 and vectors[0] == vectors[2] != vectors[1]
    assert e.model == "sim-embed" and e.usage.prompt_tokens == 3 and raw.headers["x-atp-model"] == "sim-embed"
    assert len(client(server).embeddings.create(model="auto", input="x", dimensions=3).data[0].embedding) == 3
    with pytest.raises(openai.UnprocessableEntityError, match="embeddings"):
        client(server).embeddings.create(model="sim-fast", input="x")


def test_model_by_id_and_json_404_405(server):
    m = client(server).models.retrieve("sim-high")
    assert m.id == "sim-high" and m.owned_by == "sim"
    with pytest.raises(openai.NotFoundError):
        client(server).models.retrieve("gpt-nope")
    for method, path, status in (("GET", "/v1/nowhere", 404), ("GET", "/v1/chat/completions", 405),
                                 ("POST", "/v1/models", 405), ("DELETE", "/v1/models/sim-high", 405)):
        got, headers, body = call(server, method, path)
        assert got == status and headers["Content-Type"] == "application/json", (method, path)
        assert orjson.loads(body)["error"]["type"] == "invalid_request_error"
        if status == 405:
            assert headers["Allow"] in ("GET", "POST")


def test_a_failing_embeddings_provider_is_a_json_500_and_the_server_keeps_serving(server):
    adapter = server.app.adapters["sim"]

    async def broken(model, request):
        raise RuntimeError("bug in an adapter")
    adapter.embed, original = broken, adapter.embed
    try:
        status, headers, body = call(server, "POST", "/v1/embeddings", {"model": "sim-embed", "input": "x"})
    finally:
        adapter.embed = original
    assert status == 500 and headers["Content-Type"] == "application/json"
    assert orjson.loads(body)["error"]["code"] == "INTERNAL"
    assert call(server, "POST", "/v1/embeddings", {"model": "sim-embed", "input": "x"})[0] == 200
