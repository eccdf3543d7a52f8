"""`python -m bench first-token`: how long after its arrival ATP forwards a stream's first token (issue 9).

Three processes on loopback: an OpenAI-compatible SSE upstream (aiohttp, in a child of this
module), `atp serve` with one openai_compat provider pointing at it, and this client. The upstream
writes the first content delta carrying its own CLOCK_MONOTONIC reading (one clock for every
process of the machine), so the client, on the first content byte it reads, knows how long the
token travelled. The same client reads the upstream directly too, alternated request by request:
ATP's share is the difference of the medians (what remains of the direct figure is loopback and
the client's own parsing). The upstream answers after a pause (PAUSE_S), so ATP's request
processing is over when the token leaves and only the forwarding is timed.

Target: the first token forwarded within 1 ms of its arrival.
"""
import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .peers.atp import API_KEY
from .peers.upstream import MODEL

HELP = "µs from the upstream's first SSE token to the client, through ATP vs direct"
TARGET_US = 1000.0
PAUSE_S = 0.02          # upstream think time: ATP has long finished routing when the token leaves


def add_arguments(p) -> None:
    p.add_argument("--requests", type=int, default=300, help="streams per path (default 300)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


# ---- the upstream (run as `python -m bench.first_token --upstream PORT`) ----------------------------

async def _upstream(port: int) -> None:
    from aiohttp import web

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(PAUSE_S)
        for text in (f"t{time.monotonic_ns()}", " and", " more"):
            chunk = {"id": "c", "object": "chat.completion.chunk", "model": MODEL,
                     "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        end = {"id": "c", "object": "chat.completion.chunk", "model": MODEL,
               "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}
        await resp.write(b"data: " + json.dumps(end).encode() + b"\n\ndata: [DONE]\n\n")
        return resp

    from .peers.common import serve_post
    await serve_post(port, "/v1/chat/completions", chat, "ready")


# ---- the measurement -----------------------------------------------------------------------------

async def _first_token_us(session, url: str, headers: dict) -> float:
    """µs from the upstream's stamp to this client reading the first content delta."""
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "go"}]}
    async with session.post(url, json=body, headers=headers) as r:
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}: {(await r.text())[:300]}")
        async for line in r.content:
            if not line.startswith(b"data: {"):
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
            if delta and delta.startswith("t"):
                now = time.monotonic_ns()
                async for _ in r.content:      # read the stream to its end
                    pass
                return (now - int(delta[1:])) / 1000
    raise RuntimeError(f"{url}: no stamped token in the stream")


async def _measure(args) -> dict:
    import aiohttp

    from .peers.atp import atp_command, write_config
    from .peers.common import free_port
    up_port, atp_port = free_port(), free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "bench.first_token", "--upstream", str(up_port)],
                                stdout=subprocess.PIPE, text=True)
    server = None
    try:
        if upstream.stdout.readline().strip() != "ready":
            raise RuntimeError("the fake SSE upstream did not start")
        with tempfile.TemporaryDirectory() as tmp:
            # the peers harness's config: the dev API key, one openai_compat provider, MODEL
            conf = write_config(f"http://127.0.0.1:{up_port}/v1", Path(tmp) / "atp.toml")
            server = subprocess.Popen([*atp_command(), "serve", "--config", str(conf),
                                       "--http-port", str(atp_port), "--no-grpc", "--no-quic",
                                       "--log-level", "warning"], stderr=subprocess.PIPE, text=True)
            for line in server.stderr:            # the banner names the ports once it listens
                if "HTTP" in line and str(atp_port) in line:
                    break
            else:
                raise RuntimeError("atp serve did not start")
            # keep reading its stderr: a full pipe would stall the server mid-measurement
            threading.Thread(target=lambda: server.stderr.read(), daemon=True).start()
            paths = {"direct": (f"http://127.0.0.1:{up_port}/v1/chat/completions", {}),
                     "atp": (f"http://127.0.0.1:{atp_port}/v1/chat/completions",
                             {"Authorization": f"Bearer {API_KEY}"})}
            got = {name: [] for name in paths}
            async with aiohttp.ClientSession() as session:
                for name, (url, headers) in paths.items():     # warm both paths
                    for _ in range(20):
                        await _first_token_us(session, url, headers)
                for _ in range(args.requests):
                    for name, (url, headers) in paths.items():
                        got[name].append(await _first_token_us(session, url, headers))
    finally:
        for p in (server, upstream):
            if p is not None:
                p.terminate()
                p.wait(10)
    med = {name: statistics.median(v) for name, v in got.items()}
    p99 = {name: statistics.quantiles(v, n=100)[98] for name, v in got.items()}
    added = med["atp"] - med["direct"]
    return {"median_us": {k: round(v, 1) for k, v in med.items()},
            "p99_us": {k: round(v, 1) for k, v in p99.items()},
            "atp_added_median_us": round(added, 1), "target_us": TARGET_US,
            "meets_target": med["atp"] <= TARGET_US, "requests": args.requests}


def main(args) -> int:
    import uvloop
    result = uvloop.run(_measure(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    m, p = result["median_us"], result["p99_us"]
    print(f"first token, upstream write -> client read ({result['requests']} streams each):")
    print(f"  direct    median {m['direct']:8.1f} µs   p99 {p['direct']:8.1f} µs")
    print(f"  via ATP   median {m['atp']:8.1f} µs   p99 {p['atp']:8.1f} µs")
    verdict = "meets" if result["meets_target"] else "MISSES"
    print(f"  ATP adds {result['atp_added_median_us']:.1f} µs (median); {verdict} the "
          f"{TARGET_US:g} µs target")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", type=int, required=True, help="serve the fake upstream on this port")
    asyncio.run(_upstream(ap.parse_args().upstream))
