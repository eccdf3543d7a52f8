"""`python -m bench cache`: µs the response cache and the shadow stage add per request, in process.

Medians of 7 repeats: the cache key of a 2 KB prompt, a memory-cache lookup (hit), the shadow
stage's after() when the request is not sampled, and Router.finished() (the failover-learning fix's
path) with Thompson and LinUCB over 16 models.
"""
import random
import statistics
import timeit

HELP = "µs per request: response-cache key + lookup, shadow stage, Router.finished()"


def add_arguments(parser) -> None:
    parser.add_argument("--number", type=int, default=20_000, help="calls per repeat")


def _median_us(fn, number: int) -> float:
    return statistics.median(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def main(args) -> int:
    from atp_server.auth import Principal
    from atp_server.cache import CacheConfig, MemoryCache, request_key
    from atp_server.routing.config import RoutingConfig
    from atp_server.routing.router import Router
    from atp_server.routing.spec import ModelSpec
    from atp_server.shadow import ShadowStage
    from atp_server.stages.base import RequestContext
    from atp_server.types import ChatRequest
    n = args.number
    req = ChatRequest([("system", "You are helpful."), ("user", "x" * 2000)], tier="high")
    cache = MemoryCache(CacheConfig())
    cache.put("acme", "k", b"x" * 2000)

    class Mirror:
        def submit(self, ctx):
            return True
    ctx = RequestContext(req, Principal("acme", "k", "api_key"), "http", None)
    stage = ShadowStage(Mirror(), 1e-12, random.Random(1))
    rows = [("cache key, 2 KB prompt", _median_us(lambda: request_key("acme", req), n)),
            ("memory cache hit lookup", _median_us(lambda: cache.get("acme", "k"), n))]
    r = Router([ModelSpec(f"m{i}", "p", f"m{i}") for i in range(16)], policy=RoutingConfig(seed=1))
    ctx.decision = r.choose(req, 0.0)
    ctx.finished = True
    rows.append(("shadow stage after(), not sampled", _median_us(lambda: stage.after(ctx, "ok"), n)))
    for bandit in ("thompson", "linucb"):
        r = Router([ModelSpec(f"m{i}", "p", f"m{i}") for i in range(16)],
                   policy=RoutingConfig(bandit=bandit, seed=1))
        ctx.decision = r.choose(req, 0.0)
        rows.append((f"Router.finished(), {bandit}", _median_us(lambda: r.finished(ctx, 0.0), n // 4)))
    for name, us in rows:
        print(f"{name:<40} {us:8.2f} µs")
    return 0
