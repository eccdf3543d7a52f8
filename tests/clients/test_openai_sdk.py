"""The official openai package (async client) against ATP: parse() with a pydantic schema, streamed
tools, embeddings, and each error class the SDK maps from ATP's OpenAI-shaped errors."""
import asyncio

import openai
import pytest
from pydantic import BaseModel

from atp_server.config import DEV_API_KEY
from tests.helpers.toml_models import EMBED_MODEL
from tests.transport.conftest import ServerHarness, server_config

HELLO = [{"role": "user", "content": "hello"}]


class City(BaseModel):
    name: str
    population: int


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    d = tmp_path_factory.mktemp("openai-sdk")
    harness = ServerHarness(server_config(d, EMBED_MODEL), str(d / "audit.sqlite")).start(grpc=False, quic=False)
    yield f"http://127.0.0.1:{harness.ports.http}/v1"
    harness.stop()
    harness.close()


def run(base_url, fn, key=DEV_API_KEY):
    async def main():
        async with openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30) as client:
            return await fn(client)
    return asyncio.run(main())


def test_parse_with_a_pydantic_schema(base_url):
    async def go(client):
        return await client.chat.completions.parse(model="auto", messages=HELLO, response_format=City)
    c = run(base_url, go)
    city = c.choices[0].message.parsed
    assert isinstance(city, City) and city.population == 1 and c.model == "sim-high"


def test_async_streamed_tool_call(base_url):
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}}}}

    async def go(client):
        stream = await client.chat.completions.create(model="auto", messages=HELLO, tools=[tool], stream=True)
        return [chunk async for chunk in stream]
    chunks = run(base_url, go)
    calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or ())]
    assert calls[0].function.name == "lookup" and "".join(c.function.arguments for c in calls).startswith("{")


def test_embeddings_default_base64_decoded_by_the_sdk(base_url):
    async def go(client):
        return await client.embeddings.create(model="sim-embed", input=["x", "y"])
    e = run(base_url, go)
    assert [len(d.embedding) for d in e.data] == [8, 8] and e.data[0].embedding != e.data[1].embedding
    assert abs(sum(v * v for v in e.data[0].embedding) - 1.0) < 1e-5      # unit vectors survive float32


@pytest.mark.parametrize("kwargs, error, code", [
    ({"model": "gpt-nope"}, openai.NotFoundError, "UNKNOWN_MODEL"),
    ({"model": "auto", "logprobs": True}, openai.BadRequestError, "INVALID_REQUEST"),
    ({"model": "auto", "extra_body": {"atp": {"capabilities": ["telepathy"]}}}, openai.UnprocessableEntityError,
     "NO_ROUTE"),
    ({"model": "sim-fast", "response_format": {"type": "json_object"}}, openai.UnprocessableEntityError, "NO_ROUTE"),
])
def test_errors_reach_the_sdk_as_its_own_classes(base_url, kwargs, error, code):
    async def go(client):
        with pytest.raises(error) as info:
            await client.chat.completions.create(messages=HELLO, **kwargs)
        return info.value
    exc = run(base_url, go)
    assert exc.body["code"] == code and exc.body["message"]


def test_a_wrong_key_is_an_authentication_error(base_url):
    async def go(client):
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
        return True
    assert run(base_url, go, key="sk-wrong")
