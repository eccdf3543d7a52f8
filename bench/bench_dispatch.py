"""Dispatch cost in process: CPU µs per request for a first-try answer, a failover and a hedge.

    PYTHONPATH=. python bench/bench_dispatch.py [--n 3000] [--repeats 15]

A real App (embedded default config, audit off) with a zero-latency simulated provider, so what is
left is the gateway's own work. CPU time (process_time), not wall time: on a shared, loaded
machine it is the steadier measure of what our code costs; the minimum over repeats is reported.
Run it with PYTHONPATH pointing at another tree (e.g. main) to compare the same paths there.
"""
import argparse
import asyncio
import dataclasses
import tempfile
import time

from atp_server import config as atp_config
from atp_server.app import App
from atp_server.auth import Principal
from atp_server.types import AtpError, ChatRequest, ErrorCode

MESSAGES = [("user", "What does a request control plane do for an agent?")]


class FirstFails:
    """Wraps the simulated adapter: the chain's first model fails before its first token."""

    def __init__(self, inner, failing: str):
        self.inner, self.failing, self.name = inner, failing, inner.name
        self.capabilities = inner.capabilities

    async def complete(self, model, request):
        if model.id == self.failing:
            raise AtpError(ErrorCode.UPSTREAM_ERROR, "bench failure")
        return await self.inner.complete(model, request)

    def stream(self, model, request):
        return self.inner.stream(model, request)

    async def aclose(self):
        return None


async def _per_request(fn, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time_ns()
        for _ in range(n):
            await fn()
        best = min(best, (time.process_time_ns() - t0) / n / 1000)
    return best


async def main(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = atp_config.loads(atp_config.DEFAULT_TOML.replace("latency_ms = 20\n", "latency_ms = 0\n")
                               .replace("tokens_per_s = 400\n", "tokens_per_s = 0\n"))
        cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, state_dir=tmp),
                                  audit=dataclasses.replace(cfg.audit, enabled=False))
        app = App(cfg)
        p = Principal("default", "dev", "api_key")
        pipe = app.pipeline

        async def complete():
            await pipe.complete(ChatRequest(list(MESSAGES)), p, "bench")

        async def stream():
            async for _ in pipe.stream(ChatRequest(list(MESSAGES)), p, "bench"):
                pass

        out = {"complete": await _per_request(complete, args.n, args.repeats),
               "stream (24 tokens)": await _per_request(stream, args.n, args.repeats)}
        first = pipe.route(ChatRequest(list(MESSAGES)), p).model
        sim = app.adapters["sim"]
        app.adapters["sim"] = FirstFails(sim, first)
        app.router.health.threshold = 10 ** 9          # keep the failing model in the chain
        if hasattr(pipe, "dispatch"):
            pipe.sleep = _no_sleep
        out["complete, one failover"] = await _per_request(complete, args.n, args.repeats)
        app.adapters["sim"] = sim
        if hasattr(pipe, "dispatch"):                   # hedging exists on this tree
            pipe.dispatch = dataclasses.replace(pipe.dispatch, hedge_after_ms=1000.0,
                                                hedge_tiers=("balanced",))
            out["complete, hedging on (first answers)"] = await _per_request(complete, args.n, args.repeats)
        await app.stop(0)
        return out


async def _no_sleep(seconds: float) -> None:
    return None


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=15)
    for name, us in asyncio.run(main(parser.parse_args())).items():
        print(f"{name:40s} {us:8.1f} µs CPU")
