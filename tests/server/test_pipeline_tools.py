"""Tool calls through the pipeline from an adapter that only streams: deltas pass through to
stream(), and complete() assembles them into whole calls."""
import asyncio

from atp_server.app import App
from atp_server.types import ChatRequest, Done, Finish, ToolCall, ToolCallDelta, ToolSpec

from .helpers import PRINCIPAL, make_config


class StreamOnlyToolAdapter:
    name, capabilities = "sim", frozenset({"chat", "tools"})

    async def stream(self, model, request):
        yield ToolCallDelta(0, "c0", "weather", '{"city"')
        yield ToolCallDelta(1, "c1", "time", "{}")
        yield ToolCallDelta(0, None, None, ':"Oslo"}')
        yield Finish("tool_calls", 5, 3)

    async def aclose(self):
        return None


def test_stream_only_adapter_tool_calls_pass_through_and_assemble(tmp_path):
    async def main():
        app = App(make_config(tmp_path))
        app.adapters["sim"] = StreamOnlyToolAdapter()
        request = dict(model="cheap", tools=(ToolSpec("weather"), ToolSpec("time")))
        items = [i async for i in app.pipeline.stream(ChatRequest([("user", "x")], **request), PRINCIPAL, "t")]
        whole = await app.pipeline.complete(ChatRequest([("user", "x")], **request), PRINCIPAL, "t")
        await app.stop(0)
        return items, whole
    items, whole = asyncio.run(main())
    assert [type(i) for i in items[1:]] == [ToolCallDelta] * 3 + [Done]
    assert items[-1].finish_reason == "tool_calls" and items[-1].usage.output_tokens == 3
    assert whole.tool_calls == (ToolCall("c0", "weather", '{"city":"Oslo"}'), ToolCall("c1", "time", "{}"))
    assert whole.text == "" and whole.finish_reason == "tool_calls"
