"""A real llama.cpp server killed under ATP: mid-stream the client gets a retryable error (no
[DONE]) and is billed for what it received; the next request fails over to another model."""
import openai
import pytest

from atp_server import config as atp_config

from tests.helpers.llama_server import atp_config_head, llama_server, require_llama
from tests.transport.conftest import ServerHarness

require_llama()

# gemma is the high tier's first choice (quality); the simulated "backup" is its fallback.
ATP_MODELS = """
[[providers]]
name = "sim"
type = "simulated"
output_tokens = 5

[[models]]
id = "gemma"
provider = "llama"
upstream = "gemma-3-270m"
quality = 0.9
price_in_per_mtok = 1.0
price_out_per_mtok = 2.0
context_window = 2048
max_output_tokens = 1500

[[models]]
id = "backup"
provider = "sim"
quality = 0.1
"""
PROMPT = [{"role": "user", "content": "Count from 1 to 1000."}]


def test_killed_mid_stream_is_a_retryable_error_then_the_next_request_fails_over(tmp_path):
    procs = []
    with llama_server(processes=procs) as url:
        cfg = atp_config.loads(atp_config_head(tmp_path, url, 'connect_timeout_s = 2.0') + ATP_MODELS)
        harness = ServerHarness(cfg, str(tmp_path / "audit.sqlite")).start(grpc=False, quic=False)
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{harness.ports.http}/v1",
                                   api_key=atp_config.DEV_API_KEY, max_retries=0, timeout=120)
            received = 0
            with pytest.raises(openai.APIError) as info:
                for chunk in client.chat.completions.create(model="atp-high", messages=PROMPT, max_tokens=1500,
                                                            temperature=0, stream=True):
                    if chunk.choices and chunk.choices[0].delta.content:
                        received += 1
                        if received == 3:
                            procs[0].kill()          # the provider dies mid-answer
            assert info.value.body["code"] == "UPSTREAM_CUT" and info.value.body["retryable"] is True
            totals = harness.app.accountant.by_model["gemma"]
            assert totals.estimated == 1 and totals.output_tokens >= received   # billed for what it sent
            raw = client.chat.completions.with_raw_response.create(model="atp-high", messages=PROMPT, max_tokens=5)
            assert raw.headers["x-atp-model"] == "backup" and raw.parse().choices[0].message.content
        finally:
            harness.stop()
            harness.close()
