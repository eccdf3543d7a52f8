"""LangChain's ChatOpenAI pointed at ATP: invoke, streaming, bind_tools, with_structured_output."""
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from atp_server.config import DEV_API_KEY
from tests.transport.conftest import ServerHarness, server_config


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    d = tmp_path_factory.mktemp("langchain")
    harness = ServerHarness(server_config(d), str(d / "audit.sqlite")).start(grpc=False, quic=False)
    yield f"http://127.0.0.1:{harness.ports.http}/v1"
    harness.stop()
    harness.close()


def chat(base_url, model="auto", **kw) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=base_url, api_key=DEV_API_KEY, max_retries=0, timeout=30, **kw)


def get_weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"


class Person(BaseModel):
    name: str
    age: int


def test_invoke_reports_usage_and_the_model(base_url):
    msg = chat(base_url, "atp-fast", max_tokens=5).invoke("hello")
    assert msg.content and msg.usage_metadata["output_tokens"] == 5
    assert msg.response_metadata["model_name"].startswith("sim-")


def test_streaming_with_usage(base_url):
    chunks = list(chat(base_url, "atp-fast", max_tokens=6, stream_usage=True).stream("hello"))
    assert len([c for c in chunks if c.content]) == 6
    total = chunks[0]
    for c in chunks[1:]:
        total += c
    assert total.usage_metadata["output_tokens"] == 6


def test_bind_tools_gets_a_tool_call_and_takes_the_result_back(base_url):
    llm = chat(base_url).bind_tools([get_weather])
    first = llm.invoke([HumanMessage("weather in Oslo?")])
    (call,) = first.tool_calls
    assert call["name"] == "get_weather" and set(call["args"]) == {"city"}
    answer = llm.invoke([HumanMessage("weather in Oslo?"), first,
                         ToolMessage("sunny", tool_call_id=call["id"])])
    assert answer.content and not answer.tool_calls       # after a tool result: text again


def test_bind_tools_streaming_reassembles_the_call(base_url):
    chunks = list(chat(base_url).bind_tools([get_weather], tool_choice="get_weather").stream("weather?"))
    total = chunks[0]
    for c in chunks[1:]:
        total += c
    assert [tc["name"] for tc in total.tool_calls] == ["get_weather"] and set(total.tool_calls[0]["args"]) == {"city"}


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output(base_url, method):
    person = chat(base_url).with_structured_output(Person, method=method).invoke("Invent a person.")
    assert isinstance(person, Person) and person.name and person.age == 1


def test_with_structured_output_json_mode(base_url):
    """json_object carries no schema, so the answer is whatever JSON object the model writes."""
    schema = {"title": "anything", "type": "object"}
    value = chat(base_url).with_structured_output(schema, method="json_mode").invoke("Answer in JSON.")
    assert type(value) is dict and value
