"""`python -m bench nonces`: µs per shared nonce record on a private redis-server, one call at a time.

Compares what RedisNonces.add sent before the epoch check (SET NX PX under the store's guard) with
what it sends now (the _NONCE script: epoch check + SET NX PX, one EVALSHA): both one round trip,
so the difference is the script's cost in Redis plus redis-py's encoding of the longer call.
Medians of 3 rounds after a warm-up.
"""
import asyncio
import os
import statistics
import time

HELP = "µs per shared nonce record: SET NX PX vs the epoch-checking script (one round trip each)"


def add_arguments(parser) -> None:
    parser.add_argument("--number", type=int, default=5000, help="calls per round and path")


async def _measure(url: str, number: int) -> dict:
    from atp_server.state.redis import redis_stores
    stores = redis_stores(url, timeout_s=5.0, prefix="bench:",
                          fail={"limits": "closed", "budgets": "closed", "nonces": "closed"})
    await stores.start()
    client, nonces = stores.client, stores.nonces

    async def set_nx():
        key = b"bench:n:" + os.urandom(8).hex().encode()
        await nonces.guard.call(lambda: client.set(key, b"1", nx=True, px=30_000), True)

    async def script():
        now = time.time()
        await nonces.add(os.urandom(8), 30.0, now, int(now * 1000))

    rounds: dict[str, list[float]] = {"SET NX PX (before)": [], "epoch script (now)": []}
    for fn in (set_nx, script):              # warm-up: connections, the script's SHA loaded
        for _ in range(200):
            await fn()
    for _ in range(3):
        for name, fn in zip(rounds, (set_nx, script)):
            t0 = time.perf_counter()
            for _ in range(number):
                await fn()
            rounds[name].append((time.perf_counter() - t0) / number * 1e6)
    await stores.close()
    return {name: statistics.median(values) for name, values in rounds.items()}


def main(args) -> int:
    from .workers import RedisProc
    redis = RedisProc()
    try:
        results = asyncio.run(_measure(redis.url, args.number))
    finally:
        redis.stop()
    for name, us in results.items():
        print(f"{name:<20} {us:7.1f} µs per call")
    return 0
