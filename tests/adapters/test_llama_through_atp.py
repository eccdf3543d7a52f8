"""A real llama.cpp server (llama-cpp-python + Gemma 3 270M) behind ATP, driven by the official
openai client: stop sequences, seed, JSON mode, streaming and not, usage counted and priced."""
import openai
import orjson
import pytest

from atp_server import config as atp_config

from tests.helpers.llama_server import atp_config_head, llama_server, require_llama
from tests.transport.conftest import ServerHarness

require_llama()

# Priced so that a cost is visible: $1 / $2 per million tokens in / out.
ATP_MODELS = """
[[models]]
id = "gemma"
provider = "llama"
upstream = "gemma-3-270m"
capabilities = ["chat", "json"]
price_in_per_mtok = 1.0
price_out_per_mtok = 2.0
context_window = 2048
max_output_tokens = 64
"""
COUNT = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]


@pytest.fixture(scope="module")
def atp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llama-atp")
    with llama_server() as url:
        cfg = atp_config.loads(atp_config_head(tmp, url, 'json_schema_format = "json_object_schema"') + ATP_MODELS)
        harness = ServerHarness(cfg, str(tmp / "audit.sqlite")).start(grpc=False, quic=False)
        try:
            yield openai.OpenAI(base_url=f"http://127.0.0.1:{harness.ports.http}/v1",
                                api_key=atp_config.DEV_API_KEY, max_retries=0, timeout=120)
        finally:
            harness.stop()
            harness.close()


def test_non_streamed_answer_has_exact_usage_and_its_cost(atp):
    raw = atp.chat.completions.with_raw_response.create(model="gemma", messages=COUNT, max_tokens=10, temperature=0)
    c = raw.parse()
    assert c.choices[0].message.content.strip() and c.choices[0].finish_reason in ("stop", "length")
    assert c.usage.prompt_tokens > 0 and 0 < c.usage.completion_tokens <= 10
    assert raw.headers["x-atp-usage-estimated"] == "false"   # llama.cpp reported the counts
    expected = (c.usage.prompt_tokens * 1.0 + c.usage.completion_tokens * 2.0) / 1e6
    assert float(raw.headers["x-atp-cost-usd"]) == pytest.approx(expected, abs=1e-6)


def test_stop_sequence_ends_the_answer_before_it(atp):
    free = atp.chat.completions.create(model="gemma", messages=COUNT, max_tokens=40, temperature=0)
    text = free.choices[0].message.content
    words = text.split()
    assert len(words) > 4, text
    stop = words[3]        # a word from the deterministic (temperature 0) answer's middle
    c = atp.chat.completions.create(model="gemma", messages=COUNT, max_tokens=40, temperature=0, stop=[stop])
    assert c.choices[0].message.content == text[:text.index(stop)] and c.choices[0].finish_reason == "stop"


def test_the_same_seed_gives_the_same_sampled_answer(atp):
    ask = dict(model="gemma", messages=[{"role": "user", "content": "Write one sentence about the sea."}],
               max_tokens=16, temperature=1.0, top_p=0.95)
    a = atp.chat.completions.create(seed=1234, **ask).choices[0].message.content
    b = atp.chat.completions.create(seed=1234, **ask).choices[0].message.content
    assert a == b and a


def test_json_schema_mode_gives_json_of_that_shape(atp):
    c = atp.chat.completions.create(
        model="gemma", messages=[{"role": "user", "content": "Give the name and age of a person."}],
        max_tokens=64, temperature=0, response_format={"type": "json_schema", "json_schema": {
            "name": "person", "schema": {"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
                "required": ["name", "age"]}}})
    value = orjson.loads(c.choices[0].message.content)
    assert set(value) == {"name", "age"} and type(value["age"]) is int


def test_json_object_mode_reaches_the_server_grammar(atp):
    """This 270M model rambles on inside a JSON object until max_tokens, so the answer is a JSON
    prefix: what proves json_object was forwarded is that the server's grammar forced the `{`."""
    ask = dict(model="gemma", messages=[{"role": "user", "content": "Reply with a JSON object."}],
               max_tokens=24, temperature=0)
    free = atp.chat.completions.create(**ask).choices[0].message.content
    forced = atp.chat.completions.create(response_format={"type": "json_object"}, **ask).choices[0].message.content
    assert forced.startswith("{") and not free.startswith("{")


def test_streamed_answer_matches_and_its_usage_is_counted_and_marked_estimated(atp):
    whole = atp.chat.completions.create(model="gemma", messages=COUNT, max_tokens=12, temperature=0)
    chunks = list(atp.chat.completions.create(model="gemma", messages=COUNT, max_tokens=12, temperature=0,
                                              stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    usage = chunks[-1].usage
    # llama-cpp-python sends no usage in streams: ATP counts the deltas it forwarded, and says so.
    assert usage.completion_tokens == len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content])
    assert usage.prompt_tokens > 0 and usage.model_extra["estimated"] is True


def test_a_request_over_max_output_tokens_is_clamped(atp):
    c = atp.chat.completions.create(model="gemma", messages=[{"role": "user", "content": "Tell a long story."}],
                                    max_tokens=500, temperature=0)
    assert c.usage.completion_tokens <= 64
