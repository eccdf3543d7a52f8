"""Ollama behind ATP, end to end: the official openai client -> ATP's HTTP port -> OllamaAdapter ->
the recorded-format Ollama fixture server (chat streaming and not, tool calls, embeddings, a cut)."""
import openai
import pytest

from atp_server.config import DEV_API_KEY
from tests.adapters.fixtures.server import ThreadedFixture, atp_http_server, ollama_server

# model id -> the transcript its upstream name replays; never the router's first choice
MODELS = {"llama-fx": "chat", "llama-fx-tools": "chat_tools", "llama-fx-cut": "truncated"}
TOML = ('[[providers]]\nname = "local"\ntype = "ollama"\nbase_url = "{url}"\n' + "".join(
    f'[[models]]\nid = "{mid}"\nprovider = "local"\nupstream = "{up}"\nquality = 0.01\nlatency_ms = 5000\n'
    f'capabilities = ["chat", "tools"]\n' for mid, up in MODELS.items())
    + '[[models]]\nid = "minilm"\nprovider = "local"\nupstream = "all-minilm"\ncapabilities = ["embeddings"]\n')
HI = [{"role": "user", "content": "why is the sky blue?"}]


@pytest.fixture(scope="module")
def fixture():
    fx = ollama_server()
    with ThreadedFixture(fx) as url:
        yield fx, url


@pytest.fixture(scope="module")
def client(tmp_path_factory, fixture):
    with atp_http_server(tmp_path_factory.mktemp("ollama-atp"), TOML.replace("{url}", fixture[1])) as h:
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{h.ports.http}/v1", api_key=DEV_API_KEY,
                            max_retries=0, timeout=30)


def test_chat_streaming_and_not_with_the_providers_usage(client, fixture):
    r = client.chat.completions.create(model="llama-fx", messages=HI, temperature=0.1, seed=7, stop=["\n"])
    assert r.choices[0].message.content == "Hello! How are you today?"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (26, 298)
    opts = fixture[0].requests[-1]["body"]["options"]
    assert (opts["temperature"], opts["seed"], opts["stop"]) == (0.1, 7, ["\n"])
    chunks = list(client.chat.completions.create(model="llama-fx", messages=HI, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "The sky is blue."
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (26, 282)


def test_streamed_tool_calls_reach_the_client(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    chunks = list(client.chat.completions.create(model="llama-fx-tools", messages=HI, tools=tools, stream=True))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or ())]
    assert [(tc.index, tc.function.name, tc.function.arguments) for tc in calls] == [
        (0, "get_weather", '{"city":"Tokyo"}'), (1, "get_time", '{"zone":"Asia/Tokyo"}')]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_embeddings_through_the_ollama_adapter(client, fixture):
    r = client.embeddings.create(model="minilm", input=["a", "b"])
    assert [len(e.embedding) for e in r.data] == [5, 5] and r.usage.prompt_tokens == 8
    assert fixture[0].requests[-1]["path"] == "/api/embed"


def test_a_truncated_ollama_stream_is_an_error_to_the_client(client):
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="llama-fx-cut", messages=HI, stream=True))
