"""`python -m bench merge`: µs per learning merge (state/learning.py) of 16 models, in process, real Redis.

Two workers' routers (LearningSync each) on one private redis-server merge in turns, with scored
answers between merges (untimed): 4 per worker (a few models move), or one for every model (all
16 move: a busy deployment, LinUCB's worst case). Reported per case (Thompson: the Beta script
alone; LinUCB: both scripts in one pipeline): the median and p90 of one `merge_once()` as the
worker's loop sees it (round trip included), Redis's own time per merge (INFO commandstats,
evalsha), LinUCB's re-inversion of 16 merged A alone, and LinUCB's per-observation update.
"""
import asyncio
import statistics
import time
import timeit

import numpy as np

HELP = "µs per learning merge of 16 models (Thompson vs LinUCB), in process, private redis-server"
MODELS = 16     # the size of a deployment (issue 8: 16 candidates per decision)


def add_arguments(parser) -> None:
    parser.add_argument("--merges", type=int, default=400, help="timed merges per worker and bandit")


async def _run(url: str, bandit: str, every_model: bool, merges: int, redis) -> dict:
    from atp_server.routing.config import RoutingConfig
    from atp_server.routing.kernels import N_DENSE
    from atp_server.routing.report import Scored, report
    from atp_server.routing.router import Router
    from atp_server.routing.spec import ModelSpec
    from atp_server.state.learning import LearningSync
    from atp_server.state.redis import redis_stores
    stores = redis_stores(url, timeout_s=1.0, prefix=f"bench-{bandit}-{every_model}:",
                          fail={"limits": "open", "budgets": "open", "nonces": "open"})
    specs = [ModelSpec(f"m{i}", "p", f"m{i}") for i in range(MODELS)]
    workers = [LearningSync(Router(specs, policy=RoutingConfig(bandit=bandit, seed=1)), stores.learning,
                            2.0, time.monotonic, worker=name) for name in ("a", "b")]
    rng = np.random.default_rng(1)
    took = []
    try:
        for w in workers:                      # the first merges seed the store: not timed
            await w.merge_once()
        await redis.config_resetstat()
        for _ in range(merges):
            for w in workers:
                table = w.router.ref.table
                for m in range(MODELS) if every_model else rng.integers(MODELS, size=4):
                    x = rng.random(N_DENSE)
                    report(table, Scored(f"m{m}", float(rng.random()), x, 0.5), 0.0)
                start = time.perf_counter()
                ok = await w.merge_once()
                took.append(time.perf_counter() - start)
                assert ok, "the merge did not reach Redis"
        stats = (await redis.info("commandstats")).get("cmdstat_evalsha", {})
    finally:
        await stores.close()
    took.sort()
    return {"median": statistics.median(took) * 1e6, "p90": took[int(0.9 * len(took))] * 1e6,
            "redis_us_per_merge": stats.get("usec", 0) / len(took)}


def main(args) -> int:
    import redis.asyncio as aioredis

    from atp_server.routing.bandit import LinUCB
    from atp_server.routing.kernels import N_DENSE

    from .workers import RedisProc
    server = RedisProc()
    try:
        async def both():
            redis = aioredis.Redis.from_url(server.url)
            try:
                return {(b, every): await _run(server.url, b, every, args.merges, redis)
                        for b in ("thompson", "linucb") for every in (False, True)}
            finally:
                await redis.aclose()
        results = asyncio.run(both())
    finally:
        server.stop()
    for (bandit, every), r in results.items():
        moved = f"all {MODELS} models moved" if every else "4 answers/worker"
        print(f"merge_once(), {MODELS} models, {bandit:<8} {moved:<22} median {r['median']:7.1f} µs  "
              f"p90 {r['p90']:7.1f} µs  Redis {r['redis_us_per_merge']:6.1f} µs per merge")
    lin = LinUCB(MODELS, N_DENSE)
    packed, rows = lin.packed(), list(range(MODELS))
    inv = statistics.median(timeit.repeat(lambda: lin.set_rows(rows, packed), number=2000, repeat=5)) / 2000
    print(f"LinUCB.set_rows(): unpack + invert {MODELS} × {N_DENSE}×{N_DENSE} A: {inv * 1e6:.1f} µs")
    x = np.random.default_rng(1).random(N_DENSE)
    for name, fn in (("LinUCB.update(), one observation", lambda: lin.update(3, x, 0.1)),
                     ("  of which A += x xᵀ (kept for the merge)", lambda: lin.A[3].__iadd__(np.outer(x, x)))):
        us = statistics.median(timeit.repeat(fn, number=20_000, repeat=5)) / 20_000 * 1e6
        print(f"{name}: {us:.2f} µs")
    return 0
