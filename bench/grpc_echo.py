"""The bare grpc.aio references: what `atp.v1.Atp` costs with no gateway behind it.

    python -m bench.grpc_echo --port 9471 [--output-tokens 16]

A grpc.aio server on uvloop exposing the same service and method names as ATP, with none of its
pipeline (no auth, routing, admission, accounting, audit):

  * `Complete` (unary): parses the CompletionRequest and answers one fixed CompletionResponse,
    shaped like ATP's answer for the benchmark's simulated model (same text length, a route, usage)
    — the "bare grpc.aio unary echo" reference for ATP's typed gRPC;
  * `Session` (bidi): echoes every Frame message back as it arrives — the bidi reference
    (per-message cost of a long-lived stream).

`python -m bench load --target grpc-echo | session-echo` measures it with the same client code
as the ATP targets, so ATP can be reported as a fraction of it from the same run.
"""
from __future__ import annotations

import argparse
import asyncio
import operator
import signal
import sys

import grpc
import uvloop

from proto.atp.v1 import atp_pb2 as pb

SERVICE = "atp.v1.Atp"
_WORDS = ("the", "router", "sends", "each", "request", "to", "a", "model", "that", "fits")


def fixed_response(output_tokens: int) -> pb.CompletionResponse:
    text = " ".join(_WORDS[i % len(_WORDS)] for i in range(output_tokens))
    return pb.CompletionResponse(
        request_id="echo-00000000000000000000", text=text, finish_reason="stop",
        usage=pb.Usage(input_tokens=6, output_tokens=output_tokens, cost_usd=0.0, cost_usd_micros=0),
        route=pb.RouteDecision(provider="sim", model="bench-model", estimated_cost_usd=0.0,
                               estimated_latency_ms=500.0, confidence=0.5, reasons=["pinned model"]),
        gateway_overhead_us=0)


def handlers(output_tokens: int) -> grpc.GenericRpcHandler:
    response = fixed_response(output_tokens)

    async def complete(request: pb.CompletionRequest, context) -> pb.CompletionResponse:
        return response

    async def session(request_iterator, context):
        async for frame in request_iterator:
            yield frame

    ser = operator.methodcaller("SerializeToString")
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Complete": grpc.unary_unary_rpc_method_handler(complete, pb.CompletionRequest.FromString, ser),
        "Session": grpc.stream_stream_rpc_method_handler(session, pb.Frame.FromString, ser),
    })


async def serve(host: str, port: int, output_tokens: int) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handlers(output_tokens),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"cannot bind {host}:{port}")
    await server.start()
    print(f"grpc-echo listening on {host}:{bound}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.grpc_echo", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9471, help="0 = any free port (printed)")
    p.add_argument("--output-tokens", type=int, default=16, help="words in the fixed answer (default 16)")
    args = p.parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.host, args.port, args.output_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
