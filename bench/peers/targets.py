"""The target registry: name -> how to install, start, address, stop and (optionally) measure it.

Adding a target is one `Target(...)` entry in TARGETS plus a start function returning a Running:

    def _start_mine(ctx: Ctx) -> Running:
        proc = Proc("mine", ["mine-server", "--port", str(port), "--upstream", ctx.upstream_base_url],
                    core=ctx.gateway_core, log_path=ctx.log("mine"))
        return Running.for_proc(proc, f"http://127.0.0.1:{port}/v1/chat/completions",
                                {"Authorization": "Bearer x"}, ready_timeout_s=30)

    Target("mine", "my gateway", _start_mine, version=lambda: "1.0")

Targets measured with something other than wrk (the typed gRPC / QUIC clients) pass
`measure=fn(running, spec) -> dict` returning the same keys as wrk.run (requests, rps, latency_ms
{p50,p90,p99,p99.9}, non2xx, bad_bodies, socket_errors); run it under `pinned(cmd, spec.core)`.
"""
from __future__ import annotations

import sys

from . import atp, litellm, nginx, portkey, wrk
from .base import Ctx, MeasureSpec, Running, Target
from .common import REPO, Proc, free_port


def wrk_measure(running: Running, spec: MeasureSpec) -> dict:
    return wrk.run(running.url, duration_s=spec.duration_s, connections=spec.connections, threads=spec.threads,
                   headers=running.headers, core=spec.core, log_path=spec.log_path)


# ---- the targets ---------------------------------------------------------------------------------

def _start_nginx_direct(ctx: Ctx) -> Running:
    # nginx is already up (on the load core); measuring it directly gives the floor.
    n = ctx.nginx
    return Running(f"{n.base_url}/chat/completions", {"Authorization": "Bearer dummy"}, [n.proc.pid],
                   stop=lambda: None, log_path=n.proc.log_path)


def _start_bare(ctx: Ctx) -> Running:
    port = free_port()
    proc = Proc("bare", [sys.executable, "-m", "bench.bare_proxy", "--port", str(port),
                         "--upstream", f"127.0.0.1:{ctx.upstream_port}"],
                core=ctx.gateway_core, cwd=REPO, log_path=ctx.log("bare"))
    return Running.for_proc(proc, f"http://127.0.0.1:{port}/v1/chat/completions",
                            {"Authorization": "Bearer dummy"}, ready_timeout_s=30)


def _start_litellm(ctx: Ctx) -> Running:
    g = litellm.LiteLLM(ctx.upstream_base_url, ctx.gateway_core, ctx.log("litellm"), ctx.workers)
    try:
        g.start()
    except BaseException:
        g.stop()
        raise
    return Running(f"http://127.0.0.1:{g.port}{g.url_path}", g.headers, [g.proc.pid], g.stop, g.proc.stopped,
                   g.ready_s, g.log_path)


def _start_portkey(ctx: Ctx) -> Running:
    g = portkey.Portkey(ctx.upstream_base_url, ctx.gateway_core, ctx.log("portkey"))
    try:
        g.start()
    except BaseException:
        g.stop()
        raise
    return Running(f"http://127.0.0.1:{g.port}{g.url_path}", g.headers, [g.proc.pid], g.stop, g.proc.stopped,
                   g.ready_s, g.log_path)


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("nginx", "nginx direct (floor)", _start_nginx_direct, nginx.version, nginx.install, is_floor=True),
    Target("bare", "bare aiohttp+uvloop proxy", _start_bare),
    *atp.TARGETS,
    Target("litellm", "LiteLLM proxy", _start_litellm, litellm.version, litellm.install),
    Target("portkey", "Portkey gateway", _start_portkey, portkey.version, portkey.install),
]}
