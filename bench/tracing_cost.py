"""What tracing costs per request, in process: pipeline.complete on a zero-latency simulated provider,
[tracing] off, off with a client traceparent, on but sampled out, and on (every span kept).

    python -m bench.tracing_cost [--requests 5000] [--runs 7]

Each setting gets its own App in the same process; runs interleave the settings so a machine
that slows down mid-way slows all of them alike. The figure is the median over runs of the mean
µs per request (the whole pipeline: stages, routing, the simulated call, accounting, audit off).
"""
import argparse
import asyncio
import statistics
import tempfile
import time

from atp_server import config
from atp_server.app import App
from atp_server.auth import Principal
from atp_server.types import ChatRequest

PRINCIPAL = Principal("default", "dev", "api_key")
PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

# latency 0 and no token pacing: what is left is the gateway's own work per request.
BASE = """
[server]
state_dir = "{state}"
""" + config.dev_auth_toml() + """
[[providers]]
name = "sim"
type = "simulated"
latency_ms = 0
tokens_per_s = 0
output_tokens = 8

[[models]]
id = "m"
provider = "sim"
"""
SETTINGS = {
    "off": ("", ""),
    "off, client traceparent": ("", PARENT),
    "on, sampled out (ratio 0)": ('[tracing]\nenabled = true\nexporter = "memory"\nsample_ratio = 0\n', ""),
    "on, every span kept": ('[tracing]\nenabled = true\nexporter = "memory"\n', ""),
}


async def one_run(app: App, n: int, parent: str) -> float:
    complete = app.pipeline.complete
    t0 = time.perf_counter()
    extra = {"traceparent": parent} if parent else {}    # so --only off runs on a tree without tracing
    for _ in range(n):
        await complete(ChatRequest([("user", "hello there")], model="m", **extra), PRINCIPAL, "t")
    per = (time.perf_counter() - t0) / n * 1e6
    if getattr(app, "tracer", None) is not None:     # (a tree without tracing has no attribute)
        app.tracer.exporter.clear()      # the memory exporter keeps every span: drop them per run
    return per


async def main_async(n: int, runs: int, only: str | None = None) -> dict:
    apps = {}
    for name, (section, _) in SETTINGS.items():
        if only is not None and name != only:
            continue
        apps[name] = App(config.loads(BASE.format(state=tempfile.mkdtemp()) + section))
    spans_per_request = None
    for name, app in apps.items():         # warm up: numba kernels, first-call caches
        await one_run(app, 200, SETTINGS[name][1])
        if name == "on, every span kept":
            await app.pipeline.complete(ChatRequest([("user", "x")], model="m"), PRINCIPAL, "t")
            spans_per_request = len(app.tracer.finished_spans())
    results = {name: [] for name in apps}
    for _ in range(runs):
        for name, app in apps.items():
            results[name].append(await one_run(app, n, SETTINGS[name][1]))
    for app in apps.values():
        await app.stop(0)
    return {name: statistics.median(r) for name, r in results.items()}, spans_per_request


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--only", choices=list(SETTINGS), help="one setting (e.g. 'off' on a tree without tracing)")
    args = p.parse_args(argv)
    medians, spans = asyncio.run(main_async(args.requests, args.runs, args.only))
    off = medians.get("off") or next(iter(medians.values()))
    print(f"pipeline.complete, {args.requests} requests x {args.runs} runs (median of run means):")
    for name, us in medians.items():
        print(f"  {name:<28} {us:8.1f} µs/request   {us - off:+7.1f} µs vs off   x{us / off:.2f}")
    print(f"  spans per traced request: {spans}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
