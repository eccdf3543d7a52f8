"""Embeddings from a real llama.cpp server (llama-cpp-python --embedding + Gemma 3 270M).

This server serves a decoder-only GGUF without pooling: /v1/embeddings answers one vector *per
token* (a matrix per input), not the one vector per input the OpenAI format promises. ATP must not
forward that shape: the adapter refuses it with UPSTREAM_ERROR naming the cause, ATP's
/v1/embeddings answers a JSON 502 the official client raises, and the server keeps serving.
"""
import openai
import pytest

from atp_server import config as atp_config
from atp_server.adapters.openai_compat import OpenAICompatAdapter
from atp_server.routing.spec import ModelSpec
from atp_server.types import AtpError, EmbeddingRequest
from codec.errors import ErrorCode

from tests.helpers.llama_server import atp_config_head, llama_server, require_llama
from tests.transport.conftest import ServerHarness

require_llama()

SPEC = ModelSpec(id="gemma-embed", provider="llama", upstream="gemma-3-270m",
                 capabilities=frozenset({"embeddings"}))
ATP_MODELS = """
[[models]]
id = "gemma-embed"
provider = "llama"
upstream = "gemma-3-270m"
capabilities = ["embeddings"]
price_in_per_mtok = 1.0

[[models]]
id = "gemma"
provider = "llama"
upstream = "gemma-3-270m"
capabilities = ["chat"]
"""
TEXTS = ["The cat sat on the mat.", "Quarterly revenue rose by four percent."]


@pytest.fixture(scope="module")
def base_url():
    with llama_server(embedding=True) as url:   # module scope: the model loads once
        yield url


def test_per_token_embeddings_are_refused_with_the_cause(base_url, run):
    async def main():
        adapter = OpenAICompatAdapter("llama", base_url)
        try:
            with pytest.raises(AtpError) as caught:
                await adapter.embed(SPEC, EmbeddingRequest(tuple(TEXTS)))
            return caught.value
        finally:
            await adapter.aclose()
    exc = run(main, 120)   # on both loops (conftest)
    assert exc.code is ErrorCode.UPSTREAM_ERROR and "per-token embeddings" in exc.message
    assert "--pooling mean" in exc.message


def test_through_atp_a_json_502_then_chat_still_served(base_url, tmp_path):
    cfg = atp_config.loads(atp_config_head(tmp_path, base_url) + ATP_MODELS)
    harness = ServerHarness(cfg, str(tmp_path / "audit.sqlite")).start(grpc=False, quic=False)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{harness.ports.http}/v1",
                               api_key=atp_config.DEV_API_KEY, max_retries=0, timeout=120)
        with pytest.raises(openai.APIStatusError) as caught:
            client.embeddings.create(model="gemma-embed", input=TEXTS)
        assert caught.value.status_code == 502 and "per-token embeddings" in str(caught.value)
        c = client.chat.completions.create(model="gemma", max_tokens=4, temperature=0,
                                           messages=[{"role": "user", "content": "Say hi."}])
        assert c.choices[0].message.content is not None and c.usage.completion_tokens > 0
    finally:
        harness.stop()
        harness.close()
