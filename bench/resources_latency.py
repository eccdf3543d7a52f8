"""How fast memory pressure reaches routing (resources.py), and what the sampler and the choose() hook cost.

    python -m bench.resources_latency [--trials 40]

Per trial: a fake /proc goes from calm to stalled; measured from the write to the first moment
the routing table's resource_block column masks the local model (the running 50 ms sampler on an
asyncio loop), plus the cost of one sample (two /proc reads + the decision) on the real /proc,
and choose() with the column None vs set.
"""
import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from atp_server.resources import ResourceMonitor, ResourcesConfig
from atp_server.routing.choose import choose
from atp_server.routing.config import RoutingConfig
from atp_server.routing.health import HealthBoard
from atp_server.routing.spec import ModelSpec
from atp_server.routing.table import build_table
from atp_server.types import ChatRequest

SPECS = [ModelSpec("local", "o", "l", quality=0.9, local=True, memory_mb=8000),
         ModelSpec("remote", "c", "r", 1.0, 2.0, quality=0.7)]
MEMINFO = "MemTotal: 16000000 kB\nMemAvailable: 8000000 kB\n"


def _psi(total_us: int) -> str:
    return (f"some avg10=0.00 avg60=0.00 avg300=0.00 total={total_us}\n"
            f"full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")


async def _trial(root: Path, cfg: ResourcesConfig) -> float:
    (root / "pressure" / "memory").write_text(_psi(0))
    table = build_table(SPECS, HealthBoard(), policy=RoutingConfig(bandit="greedy"))
    mon = ResourceMonitor(cfg, lambda: [table], lambda: table.specs)
    mon.start()
    await asyncio.sleep(0.3 * np.random.default_rng().random())   # a random phase vs the sampler
    t0 = time.perf_counter()
    (root / "pressure" / "memory").write_text(_psi(60_000_000))
    while table.resource_block is None:      # the measurement itself: poll at loop granularity
        await asyncio.sleep(0.001)
    dt = time.perf_counter() - t0
    await mon.stop()
    return dt


def main() -> None:
    logging.getLogger("atp.events").addHandler(logging.NullHandler())   # the events are not the point
    logging.getLogger("atp.events").propagate = False
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=40)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "pressure").mkdir()
        (root / "meminfo").write_text(MEMINFO)
        cfg = ResourcesConfig(proc_root=d)
        lat = [asyncio.run(_trial(root, cfg)) for _ in range(args.trials)]
    lat_ms = sorted(x * 1000 for x in lat)
    print(f"pressure -> routing mask, {args.trials} trials: median {statistics.median(lat_ms):.1f} ms, "
          f"p95 {lat_ms[int(0.95 * (len(lat_ms) - 1))]:.1f} ms, max {lat_ms[-1]:.1f} ms "
          f"(interval {cfg.interval_ms:g} ms)")
    real = ResourceMonitor(ResourcesConfig(), lambda: [], lambda: SPECS)
    costs = []
    for _ in range(2000):
        real.sample()
        costs.append(real.sample_cost_s * 1e6)
    per_s = 1000 / ResourcesConfig().interval_ms
    med = statistics.median(costs)
    print(f"one sample of the real /proc: median {med:.1f} µs -> {med * per_s / 1000:.2f} ms CPU/s "
          f"at {per_s:g} samples/s")
    table = build_table(SPECS, HealthBoard(), policy=RoutingConfig(bandit="greedy"))
    req, rng = ChatRequest([("user", "hi")]), np.random.default_rng(0)
    cols = {"None (no pressure)": None, "set (pressure)": np.array([True, False])}
    runs = {k: [] for k in cols}
    for _ in range(9):                        # alternated A B A B: the VM drifts between runs
        for label, col in cols.items():
            table.resource_block = col
            t0 = time.perf_counter()
            for _ in range(5000):
                choose(req, table, 0.0, rng)
            runs[label].append((time.perf_counter() - t0) / 5000 * 1e6)
    for label, r in runs.items():
        print(f"choose() with resource_block {label}: median {statistics.median(r):.2f} µs")
    n = 1_000_000
    t0 = time.perf_counter()
    for _ in range(n):
        if table.resource_block is not None:
            pass
    print(f"the hook's check alone: {(time.perf_counter() - t0) / n * 1e9:.0f} ns")


if __name__ == "__main__":
    main()
