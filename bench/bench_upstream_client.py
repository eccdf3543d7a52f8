"""Upstream HTTP client cost: atp_server.adapters.http_client vs aiohttp.ClientSession, both on uvloop.

    python bench/bench_upstream_client.py [--rounds 3] [--seq 3000] [--conc 32] [--conc-total 6000]

The upstream is a tiny uvloop raw-asyncio server in a child process (no nginx on this machine)
answering every POST with the same ~400-byte chat.completion JSON (Content-Length, keep-alive), so
the numbers are dominated by client cost. The clients alternate A B A B within one run (noise on
shared cores hits both alike); each cell is the median over rounds. µs/request is wall time per
request: sequential = latency of one round trip (client + server), concurrent = 1 / throughput.
"""
import argparse
import asyncio
import gc
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orjson  # noqa: E402
import uvloop  # noqa: E402

ANSWER = orjson.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog."},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 10, "total_tokens": 22},
    "system_fingerprint": "fp_bench",
})
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: keep-alive\r\n\r\n%s" % (len(ANSWER), ANSWER))
BODY = orjson.dumps({"model": "bench-model", "stream": False, "max_tokens": 64,
                     "messages": [{"role": "user", "content": "Say something about foxes."}]})
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench", "Accept": "application/json"}
_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


# ---- the upstream (child process) ------------------------------------------------------------------

class _Upstream(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buf = transport, b""

    def data_received(self, data):
        buf = self.buf + data if self.buf else data
        out = 0
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            m = _LENGTH.search(buf, 0, end + 2)
            total = end + 4 + (int(m.group(1)) if m else 0)
            if len(buf) < total:
                break
            buf = buf[total:]
            out += 1
        self.buf = buf
        if out:
            self.transport.write(RESPONSE * out)


def serve() -> None:
    async def main():
        server = await asyncio.get_running_loop().create_server(_Upstream, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()
    uvloop.run(main())


# ---- the clients ----------------------------------------------------------------------------------

async def _atp_factory(url):
    from atp_server.adapters.http_client import HttpClient
    client = HttpClient(max_connections=64)

    async def one():
        resp = await client.request("POST", url, headers=HEADERS, body=BODY)
        if resp.status != 200 or len(resp.body) != len(ANSWER):
            raise RuntimeError("bad response")
    return one, client.aclose


async def _aiohttp_factory(url):
    import aiohttp
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

    async def one():
        async with session.post(url, data=BODY, headers=HEADERS) as resp:
            body = await resp.read()
            if resp.status != 200 or len(body) != len(ANSWER):
                raise RuntimeError("bad response")
    return one, session.close


async def _sequential(one, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        await one()
    return time.perf_counter() - t


async def _concurrent(one, workers: int, total: int) -> float:
    per = total // workers

    async def worker():
        for _ in range(per):
            await one()
    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return time.perf_counter() - t


async def bench(url: str, args) -> dict:
    clients = {"atp http_client": _atp_factory, "aiohttp ClientSession": _aiohttp_factory}
    made = {name: await factory(url) for name, factory in clients.items()}
    for one, _ in made.values():  # warm: connections open, code paths hot
        await _concurrent(one, args.conc, args.conc * 20)
        await _sequential(one, 200)
    results = {(name, mode): [] for name in clients for mode in ("seq", "conc")}
    for _ in range(args.rounds):
        for name, (one, _) in made.items():  # A B A B: noise on shared cores hits both alike
            gc.collect()
            results[name, "seq"].append(args.seq / await _sequential(one, args.seq))
            gc.collect()
            total = args.conc_total - args.conc_total % args.conc
            results[name, "conc"].append(total / await _concurrent(one, args.conc, total))
    for _, close in made.values():
        await close()
    return {key: statistics.median(rates) for key, rates in results.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seq", type=int, default=3000)
    ap.add_argument("--conc", type=int, default=32)
    ap.add_argument("--conc-total", type=int, default=6000)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve()
    upstream = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"], stdout=subprocess.PIPE)
    try:
        port = int(upstream.stdout.readline())
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        medians = uvloop.run(bench(url, args))
    finally:
        upstream.terminate()
        upstream.wait()
    print(f"upstream: uvloop raw-asyncio server (child process), {len(RESPONSE)}-byte response; "
          f"request body {len(BODY)} bytes; median of {args.rounds} alternating rounds")
    print(f"{'client':24} {'sequential req/s':>17} {'µs/req':>8} {f'conc-{args.conc} req/s':>15} {'µs/req':>8}")
    for name in ("atp http_client", "aiohttp ClientSession"):
        seq, conc = medians[name, "seq"], medians[name, "conc"]
        print(f"{name:24} {seq:17,.0f} {1e6 / seq:8.1f} {conc:15,.0f} {1e6 / conc:8.1f}")
    a, b = medians["atp http_client", "conc"], medians["aiohttp ClientSession", "conc"]
    print(f"atp / aiohttp: sequential x{medians['atp http_client', 'seq'] / medians['aiohttp ClientSession', 'seq']:.2f}, "
          f"concurrent x{a / b:.2f}")


if __name__ == "__main__":
    main()
