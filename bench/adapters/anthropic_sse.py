"""Per-chunk cost of the Anthropic streaming path: SSE parse + translate (the real adapter) + re-emit.

    python -m bench.adapters.anthropic_sse [--events 20000] [--repeats 7]

The real AnthropicAdapter.stream() runs over an in-memory response (no socket, so only our code is
timed), fed one SSE event per read (the worst case: each network read carries one event) and 16
events per read; every TextDelta it yields is re-emitted as the bytes a client receives, through
the Anthropic front door's StreamEncoder, or the OpenAI dialect's ChunkEncoder. Medians of
`--repeats` rounds, µs of this thread's CPU time per content_block_delta event (CPU time, not
wall time: on a shared, loaded machine wall time mostly measures waiting for a core).
Target (issue 9): ≤ 20 µs per chunk.
"""
import argparse
import asyncio
import statistics
import time

from bench.adapters.openai_sse import _MemoryHttp   # the in-memory stand-in for HttpClient

from atp_server.adapters.anthropic import AnthropicAdapter
from atp_server.adapters.settings import AnthropicSettings
from atp_server.dialects.anthropic import StreamEncoder
from atp_server.dialects.openai import ChunkEncoder
from atp_server.routing.spec import ModelSpec
from atp_server.types import ChatRequest, TextDelta

HEAD = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
        b'"role":"assistant","content":[],"model":"claude-sonnet-4-5","stop_reason":null,"stop_sequence":null,'
        b'"usage":{"input_tokens":25,"output_tokens":1}}}\n\n'
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n')
# A typical delta: a token or two of text, as Claude streams them.
DELTA = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
         b'"delta":{"type":"text_delta","text":" the quick"}}\n\n')
TAIL = (b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
        b'"stop_sequence":null},"usage":{"output_tokens":20000}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n')


async def _round(events: int, per_read: int, emit: str) -> float:
    body = [HEAD] + [DELTA] * events + [TAIL]
    chunks = [b"".join(body[i:i + per_read]) for i in range(0, len(body), per_read)]
    adapter = AnthropicAdapter("claude", AnthropicSettings(api_key="x"))
    await adapter._http.aclose()
    adapter._http = _MemoryHttp(chunks)
    model, request = ModelSpec("c", "claude", "claude-sonnet-4-5"), ChatRequest([("user", "hi")])
    enc, openai_enc = StreamEncoder(), ChunkEncoder("r1", "c")
    enc.start("r1", "c", 25)
    out = 0
    t0 = time.thread_time_ns()
    async for item in adapter.stream(model, request):
        if type(item) is TextDelta:
            if emit == "anthropic":
                out += len(enc.text(item.text))
            elif emit == "openai":
                out += len(openai_enc.text(item.text))
    elapsed = time.thread_time_ns() - t0
    assert emit == "none" or out > events * 20   # every delta produced its bytes
    return elapsed / events / 1000


def run(events: int, repeats: int) -> list[tuple[str, float]]:
    cases = [(f"{per} event(s) per read, re-emit {emit}", per, emit)
             for per in (1, 16) for emit in ("none", "anthropic", "openai")]
    samples = {name: [] for name, _, _ in cases}
    for _ in range(repeats):              # alternate the cases within a round: the VM is noisy
        for name, per, emit in cases:
            samples[name].append(asyncio.run(_round(events, per, emit)))
    return [(name, statistics.median(v)) for name, v in samples.items()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    print("| path (per content_block_delta) | µs |\n|---|---|")
    for name, us in run(args.events, args.repeats):
        print(f"| parse + translate, {name} | {us:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
