"""`python -m bench stages`: µs per request of each pipeline stage (before + after), in process.

Each stage of a real App's chain (the embedded default, audit on, in a temporary state dir) runs
`before` then `after` on a fresh RequestContext, N times per repeat; the median over repeats is
reported, next to a whole in-process `pipeline.complete` on a zero-latency simulated model so
the stages can be read as a share of the request. Awaitables a `before` returns (admission) are
awaited, as the pipeline does.
"""
import asyncio
import json
import statistics
import tempfile
import time

HELP = "µs per request of each pipeline stage (before + after) and of a whole in-process request"


def add_arguments(p) -> None:
    p.add_argument("--iterations", type=int, default=20_000, help="calls per repeat (default 20000)")
    p.add_argument("--repeats", type=int, default=7, help="repeats; the median is reported (default 7)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--redis-url", default="", help="keep limits/budgets in this Redis "
                   "(default: in memory)")


# The limits stage with every kind of limit a tenant can have, plus one per key, set so high
# that no iteration is refused: what is measured is the bookkeeping, not a refusal.
BENCH_LIMITS = """
[[limits]]
name = "bench-tenant"
requests_per_min = 1000000000
tokens_per_min = 1000000000000
concurrent = 1000000
usd_per_day = 1000000000.0
usd_per_month = 1000000000.0

[[limits]]
name = "bench-key"
scope = "key"
requests_per_min = 1000000000
"""


async def time_stage(before, after, contexts) -> float:
    """µs per context of one stage's `before` (awaited when it returns an awaitable, as the
    pipeline does) then `after(ctx, "ok")`; either may be None (the stage keeps the no-op)."""
    t0 = time.perf_counter_ns()
    for c in contexts:
        if before is not None:
            pending = before(c)
            if pending is not None:
                await pending
        if after is not None:
            after(c, "ok")
    return (time.perf_counter_ns() - t0) / len(contexts) / 1000


async def _measure(args) -> dict:
    import dataclasses

    from atp_server import config as atp_config
    from atp_server.app import App
    from atp_server.auth import Principal
    from atp_server.stages import RequestContext
    from atp_server.types import ChatRequest

    with tempfile.TemporaryDirectory() as tmp:
        # The embedded default with its simulated provider answering at once: what is left of a
        # request is the gateway's own work.
        cfg = atp_config.loads(atp_config.DEFAULT_TOML.replace("latency_ms = 20\n", "latency_ms = 0\n")
                               .replace("tokens_per_s = 400\n", "tokens_per_s = 0\n")
                               + BENCH_LIMITS
                               + (f'[state]\nredis_url = "{args.redis_url}"\ntimeout_ms = 1000\n'
                                  if args.redis_url else "")
                               # redact + guard on, so their stages are in the chain measured
                               + '\n[redaction]\nmode = "restore"\n[guard]\nmode = "tag"\n')
        cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, state_dir=tmp))
        app = App(cfg)
        app.audit.start()
        principal = Principal("default", "dev", "api_key")
        messages = [("user", "What does a request control plane do for an agent?")]
        chain = app.pipeline.chain
        out: dict[str, float] = {}
        for i, stage in enumerate(chain.stages):
            before, after = chain.befores[i], chain.afters[i]
            runs = []
            for _ in range(args.repeats):
                ctxs = [RequestContext(ChatRequest(list(messages), request_id=f"r{n}"), principal,
                                       "bench", None) for n in range(args.iterations)]
                if stage.name in ("account", "metrics", "audit"):   # what the route stage leaves
                    for c in ctxs:
                        c.decision = app.router.choose(c.request, 0.0)
                runs.append(await time_stage(before, after, ctxs))
                app.audit.flush()
            out[stage.name] = round(statistics.median(runs), 3)
        whole = []
        for _ in range(args.repeats):
            n = max(1, args.iterations // 4)
            t0 = time.perf_counter_ns()
            for k in range(n):
                await app.pipeline.complete(ChatRequest(list(messages), tier="fast"), principal, "bench")
            whole.append((time.perf_counter_ns() - t0) / n / 1000)
            app.audit.flush()
        await app.stop(0)
    return {"stages_us": out, "sum_of_stages_us": round(sum(out.values()), 3),
            "whole_request_us": round(statistics.median(whole), 3),
            "iterations": args.iterations, "repeats": args.repeats}


def main(args) -> int:
    import uvloop
    result = uvloop.run(_measure(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'stage':<12} {'µs/request':>10}")
    for name, us in result["stages_us"].items():
        print(f"{name:<12} {us:>10.3f}")
    print(f"{'sum':<12} {result['sum_of_stages_us']:>10.3f}")
    print(f"{'whole':<12} {result['whole_request_us']:>10.3f}  (pipeline.complete, in process, "
          "zero-latency simulated model)")
    return 0
