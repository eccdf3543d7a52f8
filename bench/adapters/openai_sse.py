"""`python -m bench adapters`: µs per streamed chunk of OpenAI SSE, parsed, translated and re-emitted.

The real OpenAICompatAdapter.stream loop runs over an in-memory upstream (one SSE event per read,
as a token-by-token server sends them), and each TextDelta / ToolCallDelta it yields is encoded by
the OpenAI dialect's ChunkEncoder, as the HTTP front door does. No sockets: what is measured is
the gateway's per-chunk work, the part the issue's ≤ 20 µs target is about.
"""
import asyncio
import json
import statistics
import time

import orjson

HELP = "µs per streamed OpenAI SSE chunk: parse + translate (adapter) + re-emit (dialect)"


def add_arguments(p) -> None:
    p.add_argument("--chunks", type=int, default=2_000, help="chunks per stream (default 2000)")
    p.add_argument("--repeats", type=int, default=9, help="repeats; the median is reported (default 9)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _event(delta: dict, finish=None) -> bytes:
    return b"data: " + orjson.dumps({
        "id": "chatcmpl-9x", "object": "chat.completion.chunk", "created": 1767225600, "model": "gpt-4o-mini",
        "system_fingerprint": "fp_1", "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                   "finish_reason": finish}]}) + b"\n\n"


def transcript(n: int, tools: bool) -> list[bytes]:
    """n content (or tool-argument) events, then the finish, the usage event and [DONE]."""
    if tools:
        body = [_event({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                        "function": {"name": "lookup", "arguments": ""}}]})]
        body += [_event({"tool_calls": [{"index": 0, "function": {"arguments": '"x",'}}]}) for _ in range(n - 1)]
    else:
        body = [_event({"content": " token"}) for _ in range(n)]
    usage = b'data: {"id":"chatcmpl-9x","object":"chat.completion.chunk","choices":[],"usage":' \
            b'{"prompt_tokens":12,"completion_tokens":%d,"total_tokens":%d}}\n\n' % (n, n + 12)
    return body + [_event({}, "tool_calls" if tools else "stop"), usage, b"data: [DONE]\n\n"]


class _Response:
    status, complete, headers = 200, True, {}

    def __init__(self, chunks):
        self._chunks = chunks

    def __aiter__(self):
        return self._iter()

    async def _iter(self):
        for c in self._chunks:
            yield c


class _Stream:
    def __init__(self, chunks):
        self._resp = _Response(chunks)

    async def __aenter__(self):
        return self._resp

    async def __aexit__(self, *exc):
        return False


class _MemoryHttp:
    """Stands in for adapters.http_client.HttpClient: `stream()` replays the transcript."""

    def __init__(self, chunks):
        self.chunks = chunks

    def stream(self, *args, **kwargs):
        return _Stream(self.chunks)

    async def aclose(self):
        return None


async def _one(adapter, spec, request, encoder_cls) -> int:
    from atp_server.types import TextDelta, ToolCallDelta
    """One stream through the adapter and the encoder; returns the number of SSE events re-emitted."""
    enc = encoder_cls("atp-1", spec.id)
    emitted = 0
    async for item in adapter.stream(spec, request):
        kind = type(item)
        if kind is TextDelta:
            emitted += enc.text(item.text).startswith(b"data: ")
        elif kind is ToolCallDelta:
            emitted += enc.tool_call(item).startswith(b"data: ")
    return emitted


async def _measure(args) -> dict:
    from atp_server.adapters.openai_compat import OpenAICompatAdapter
    from atp_server.dialects.openai import ChunkEncoder
    from atp_server.routing.spec import ModelSpec
    from atp_server.types import ChatRequest

    spec = ModelSpec("gpt-4o-mini", "openai", "gpt-4o-mini")
    request = ChatRequest([("user", "hello")])
    result = {}
    for name, tools in (("text", False), ("tool_calls", True)):
        adapter = OpenAICompatAdapter("openai", "http://127.0.0.1:9/v1")
        await adapter.aclose()
        adapter._http = _MemoryHttp(transcript(args.chunks, tools))
        runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter_ns()
            emitted = await _one(adapter, spec, request, ChunkEncoder)
            runs.append((time.perf_counter_ns() - t0) / 1000 / args.chunks)
        if emitted != args.chunks:
            raise AssertionError(f"{name}: {emitted} chunks re-emitted of {args.chunks}")
        result[name] = {"us_per_chunk_median": round(statistics.median(runs), 2),
                        "us_per_chunk_min": round(min(runs), 2)}
    # The irreducible part, measured in the same run: decoding one event's JSON and encoding one
    # delta. On a loaded machine both scale alike, so the ratio is the comparable figure.
    event, runs = transcript(1, False)[0][6:-2], []
    for _ in range(args.repeats):
        t0 = time.perf_counter_ns()
        for _ in range(args.chunks):
            orjson.dumps(orjson.loads(event)["choices"][0]["delta"]["content"])
        runs.append((time.perf_counter_ns() - t0) / 1000 / args.chunks)
    result["reference_json_roundtrip"] = {"us_per_chunk_median": round(statistics.median(runs), 2),
                                          "us_per_chunk_min": round(min(runs), 2)}
    return result


def main(args) -> int:
    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        result = runner.run(_measure(args))
    if args.json:
        print(json.dumps(result))
    else:
        for name, r in result.items():
            print(f"{name:<11} {r['us_per_chunk_median']:>7.2f} µs/chunk median  ({r['us_per_chunk_min']:.2f} min)"
                  f"  over {args.chunks} chunks x {args.repeats}")
    return 0
