"""The official `anthropic` SDK pointed at ATP (base_url): any configured model, streaming, tools,
system prompts, stop sequences, usage and Anthropic-shaped errors — and, end to end, through ATP's
Anthropic adapter to a recorded-format Anthropic fixture server."""
import anthropic
import pytest

from atp_server.config import DEV_API_KEY
from tests.adapters.fixtures.server import ThreadedFixture, anthropic_server, atp_http_server
from tests.transport.test_http import EXTRA_TOML as CUT_TOML

# Anthropic-typed models served by the fixture server (model "upstream" = the transcript replayed),
# never the router's first choice; test_http's providers add sim-cut, which dies mid-stream.
FIXTURE_MODELS = {"claude-fx": "text", "claude-fx-tools": "tool_use", "claude-fx-msg": "message"}
ANTHROPIC_TOML = ('[[providers]]\nname = "claude"\ntype = "anthropic"\nbase_url = "{url}"\n'
                  'api_key = "sk-ant-fixture"\n') + "".join(
    f'[[models]]\nid = "{mid}"\nprovider = "claude"\nupstream = "{up}"\nquality = 0.01\nlatency_ms = 5000\n'
    f'price_in_per_mtok = 3.0\nprice_out_per_mtok = 15.0\ncapabilities = ["chat", "tools"]\n'
    for mid, up in FIXTURE_MODELS.items())
WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                            "required": ["location"]}}


@pytest.fixture(scope="module")
def fixture():
    fx = anthropic_server()
    with ThreadedFixture(fx) as url:
        yield fx, url


@pytest.fixture(scope="module")
def atp(tmp_path_factory, fixture):
    with atp_http_server(tmp_path_factory.mktemp("anthropic-sdk"),
                         CUT_TOML + ANTHROPIC_TOML.replace("{url}", fixture[1])) as harness:
        yield harness


def client(h, key: str = DEV_API_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"http://127.0.0.1:{h.ports.http}", api_key=key, max_retries=0, timeout=30)


def test_create_with_system_prompt_stop_sequences_and_usage(atp):
    msg = client(atp).messages.create(model="sim-fast", max_tokens=64, system="You are terse.",
                                      stop_sequences=["\n\n"], extra_body={"temperature": 0.2},
                                      messages=[{"role": "user", "content": "hello"}])
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "sim-fast"
    assert msg.content[0].type == "text" and msg.content[0].text
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0


def test_stream_text_and_final_message(atp):
    with client(atp).messages.stream(model="auto", max_tokens=32,
                                     messages=[{"role": "user", "content": "tell me something"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text and final.content[0].text == text
    assert final.usage.output_tokens > 0 and final.stop_reason in ("end_turn", "max_tokens")


@pytest.mark.parametrize("stream", [False, True])
def test_tools_round_trip(atp, stream):
    c = client(atp)
    kw = dict(model="sim-high", max_tokens=64, tools=[WEATHER], tool_choice={"type": "any"},
              messages=[{"role": "user", "content": "weather in Paris?"}])
    if stream:
        with c.messages.stream(**kw) as s:
            msg = s.get_final_message()
    else:
        msg = c.messages.create(**kw)
    call = next(b for b in msg.content if b.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input["location"], str)
    assert msg.stop_reason == "tool_use"
    # the tool result goes back and the model answers in text
    answer = c.messages.create(model="sim-high", max_tokens=64, tools=[WEATHER], messages=[
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18C, sunny"}]}])
    assert answer.content[0].type == "text" and answer.stop_reason == "end_turn"


def test_end_to_end_through_the_anthropic_adapter(atp, fixture):
    fx, _ = fixture
    with client(atp).messages.stream(model="claude-fx", max_tokens=100, system="be kind",
                                     messages=[{"role": "user", "content": "hi"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Hello! How can I help you today?"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (25, 12)   # the provider's own counts
    upstream = fx.requests[-1]
    assert upstream["headers"]["x-api-key"] == "sk-ant-fixture" and upstream["body"]["system"] == "be kind"
    with client(atp).messages.stream(model="claude-fx-tools", max_tokens=100, tools=[WEATHER],
                                     messages=[{"role": "user", "content": "weather?"}]) as s:
        msg = s.get_final_message()
    assert msg.content[0].text == "Okay, let me check the weather." and msg.stop_reason == "tool_use"
    call = msg.content[1]
    assert (call.type, call.id, call.name) == ("tool_use", "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather")
    assert call.input == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert fx.requests[-1]["body"]["tools"][0]["input_schema"] == WEATHER["input_schema"]
    whole = client(atp).messages.create(model="claude-fx-msg", max_tokens=100, tools=[WEATHER],
                                        messages=[{"role": "user", "content": "weather?"}])
    assert [b.type for b in whole.content] == ["text", "tool_use"]
    assert whole.content[1].input == {"location": "San Francisco, CA"}
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == (2095, 503)


def test_tools_never_reach_a_model_without_them(atp):
    with pytest.raises(anthropic.BadRequestError, match="lacks tools"):
        client(atp).messages.create(model="sim-fast", max_tokens=8, tools=[WEATHER],
                                    messages=[{"role": "user", "content": "x"}])


def test_errors_are_the_sdk_exceptions(atp):
    with pytest.raises(anthropic.AuthenticationError):
        client(atp, "sk-wrong").messages.create(model="auto", max_tokens=8,
                                                messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.NotFoundError, match="no-such-model"):
        client(atp).messages.create(model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError, match="top_k"):
        client(atp).messages.create(model="auto", max_tokens=8, extra_body={"top_k": 5}, messages=[{"role": "user", "content": "x"}])


def test_a_cut_stream_raises_in_the_sdk(atp):
    with pytest.raises(anthropic.APIStatusError, match="'code': 'UPSTREAM_CUT'.*'retryable': True"):
        with client(atp).messages.stream(model="sim-cut", max_tokens=32,
                                         messages=[{"role": "user", "content": "x"}]) as s:
            for _ in s.text_stream:
                pass
