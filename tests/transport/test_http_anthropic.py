"""The Anthropic front door (POST /v1/messages) over real HTTP: event order, tools, JSON output,
Anthropic-shaped errors with the field at fault, cut streams; raw aiohttp so every byte is seen."""
import orjson
import pytest

from .test_http import AUTH, KEY, call, custom_server, http, url  # noqa: F401 (fixtures)

MSGS = "/v1/messages"
XKEY = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
HELLO = [{"role": "user", "content": "hello"}]


def sse(body: bytes) -> list[tuple[str, dict]]:
    """(event name, data) per SSE event, checking each event line matches its data's type."""
    out = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = orjson.loads(lines["data"])
        assert lines["event"] == data["type"]
        out.append((lines["event"], data))
    return out


def test_stream_has_the_documented_event_order_and_usage(http):
    status, headers, body = call("POST", url(http, MSGS), headers=XKEY, json={
        "model": "sim-fast", "max_tokens": 16, "system": [{"type": "text", "text": "be brief"}],
        "messages": HELLO, "stream": True})
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = sse(body)
    names = [e for e, _ in events]
    assert names[:2] == ["message_start", "content_block_start"] and names[-3:] == [
        "content_block_stop", "message_delta", "message_stop"]
    assert set(names[2:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["model"] == "sim-fast" == headers["x-atp-model"] and start["id"].startswith("msg_")
    assert start["usage"]["input_tokens"] > 0
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] in ("end_turn", "max_tokens") and delta["usage"]["output_tokens"] > 0
    assert delta["atp"]["model"] == "sim-fast"


def test_bearer_authorization_is_accepted_too_and_a_json_answer_has_usage(http):
    status, headers, body = call("POST", url(http, MSGS), headers=AUTH,
                                 json={"model": "auto", "max_tokens": 8, "messages": HELLO})
    msg = orjson.loads(body)
    assert status == 200 and msg["type"] == "message" and msg["content"][0]["type"] == "text"
    assert msg["usage"]["input_tokens"] > 0 and msg["usage"]["output_tokens"] > 0
    assert float(headers["x-atp-cost-usd"]) >= 0 and headers["x-atp-model"] == msg["model"]
    # the simulated provider reports its counts, so usage is exact: said in the header and the body
    assert headers["x-atp-usage-estimated"] == "false" and msg["atp"]["usage_estimated"] is False


def test_streamed_tool_call_is_a_tool_use_block_with_input_json_deltas(http):
    tool = {"name": "lookup", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}},
                                               "required": ["q"]}}
    _, _, body = call("POST", url(http, MSGS), headers=XKEY, json={
        "model": "sim-high", "max_tokens": 32, "messages": HELLO, "stream": True, "tools": [tool],
        "tool_choice": {"type": "tool", "name": "lookup"}})
    events = sse(body)
    start = next(d for e, d in events if e == "content_block_start" and d["content_block"]["type"] == "tool_use")
    assert start["content_block"]["name"] == "lookup" and start["content_block"]["id"]
    args = "".join(d["delta"]["partial_json"] for e, d in events
                   if e == "content_block_delta" and d["index"] == start["index"])
    assert isinstance(orjson.loads(args)["q"], str)
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_output_config_json_schema_gets_json(http):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    _, _, body = call("POST", url(http, MSGS), headers=XKEY, json={
        "model": "auto", "max_tokens": 64, "messages": HELLO,
        "output_config": {"format": {"type": "json_schema", "schema": schema}}})
    assert isinstance(orjson.loads(orjson.loads(body)["content"][0]["text"])["city"], str)


@pytest.mark.parametrize("body,status,etype,needle", [
    ({"model": "auto", "messages": HELLO}, 400, "invalid_request_error", "max_tokens: is required"),
    ({"max_tokens": 5, "messages": HELLO}, 400, "invalid_request_error", "model: is required"),
    ({"model": "auto", "max_tokens": 5, "messages": []}, 400, "invalid_request_error", "messages: must be"),
    ({"model": "auto", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, 400,
     "invalid_request_error", "messages[0].role"),
    ({"model": "auto", "max_tokens": 5, "messages": HELLO, "frobnicate": 1}, 400, "invalid_request_error",
     "frobnicate: unknown parameter"),
    ({"model": "auto", "max_tokens": 5, "messages": HELLO, "thinking": {"type": "enabled"}}, 400,
     "invalid_request_error", "thinking: is not supported"),
    ({"model": "auto", "max_tokens": 5, "messages": HELLO, "output_config": {"effort": "high"}}, 400,
     "invalid_request_error", "output_config.effort"),
    ({"model": "auto", "max_tokens": "5", "messages": HELLO}, 400, "invalid_request_error", "max_tokens: must be"),
    ({"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}, 400, "invalid_request_error",
     "messages[0].content[0].source"),
    ({"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document"}]}]},
     400, "invalid_request_error", "a document block is not supported"),
    ({"model": "auto", "max_tokens": 5, "messages": HELLO, "tool_choice": {"type": "tool"}}, 400,
     "invalid_request_error", "tool_choice.name"),
    ({"model": "no-such-model", "max_tokens": 5, "messages": HELLO}, 404, "not_found_error", "no-such-model"),
])
def test_bad_requests_are_anthropic_errors_naming_the_field(http, body, status, etype, needle):
    got, _, raw = call("POST", url(http, MSGS), headers=XKEY, json=body)
    err = orjson.loads(raw)
    assert got == status and err["type"] == "error" and err["error"]["type"] == etype
    assert needle in err["error"]["message"]


def test_missing_key_and_malformed_json(http):
    status, _, raw = call("POST", url(http, MSGS), headers={}, json={"model": "auto", "max_tokens": 5,
                                                                    "messages": HELLO})
    assert status == 401 and orjson.loads(raw)["error"]["type"] == "authentication_error"
    status, _, raw = call("POST", url(http, MSGS), headers=XKEY, data=b"{not json")
    assert status == 400 and "malformed JSON" in orjson.loads(raw)["error"]["message"]


def test_cut_stream_is_an_error_event_without_message_stop(custom_server):
    status, _, body = call("POST", url(custom_server, MSGS), headers=XKEY, json={
        "model": "sim-cut", "max_tokens": 16, "messages": HELLO, "stream": True})
    events = sse(body)
    assert status == 200 and "message_stop" not in [e for e, _ in events]
    assert events[-1][0] == "error" and events[-1][1]["error"]["code"] == "UPSTREAM_CUT"
    assert sum(1 for e, _ in events if e == "content_block_delta") == 4
    status, _, raw = call("POST", url(custom_server, MSGS), headers=XKEY, json={
        "model": "sim-cut", "max_tokens": 16, "messages": HELLO})
    assert status == 502 and orjson.loads(raw)["error"]["type"] == "api_error"


def test_failover_before_the_first_token_answers_from_another_model(custom_server):
    status, headers, body = call("POST", url(custom_server, MSGS), headers=XKEY, json={
        "model": "atp-fast", "max_tokens": 3, "messages": HELLO, "stream": True})
    assert status == 200 and headers["x-atp-model"] != "sim-broken"
    assert sse(body)[-1][0] == "message_stop"


def test_get_on_messages_is_405_with_allow(http):
    status, headers, _ = call("GET", url(http, MSGS), headers=XKEY)
    assert status == 405 and headers["Allow"] == "POST"


def test_required_capabilities_are_read_off_the_request():
    from atp_server.dialects.anthropic import parse_messages
    base = {"model": "auto", "max_tokens": 5}
    img = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}
    cases = [({"messages": HELLO}, ()),
             ({"messages": HELLO, "tools": [{"name": "t", "input_schema": {"type": "object"}}]}, ("tools",)),
             ({"messages": [{"role": "user", "content": [img, {"type": "text", "text": "what?"}]}]}, ("vision",)),
             ({"messages": HELLO, "output_config": {"format": {"type": "json_schema", "schema": {}}}}, ("json",))]
    for extra, caps in cases:
        chat, _ = parse_messages({**base, **extra})
        assert chat.capabilities == caps
    chat, _ = parse_messages({**base, "messages": [{"role": "user", "content": [img, {"type": "text", "text": "what?"}]}]})
    assert chat.messages == [("user", "what?")] and chat.details[0].parts[0].url == "data:image/png;base64,iVBOR"
