"""What the SLO stage costs per request, and the admission throttle check when nothing is throttled.

    python -m bench.slo_cost
"""
import statistics
import time

from atp_server.admission import Admission
from atp_server.auth import Principal
from atp_server.slo import SloConfig, SloTracker
from atp_server.stages.base import RequestContext
from atp_server.types import ChatRequest, RouteDecision

N = 50_000


def main() -> None:
    tr = SloTracker([SloConfig("m", latency_ms=1000)], Admission(4, 4))
    ctx = RequestContext(ChatRequest([("user", "x")]), Principal("t", "k", "api_key"), "http", None)
    ctx.decision = RouteDecision("p", "m", 0.0, 0.0, 0.5)
    runs = []
    for _ in range(9):
        t0 = time.perf_counter()
        for _ in range(N):
            tr.after(ctx, "ok")
        runs.append((time.perf_counter() - t0) / N * 1e6)
    print(f"SloTracker.after per request (incl. the 1/s evaluation): median {statistics.median(runs):.2f} µs")
    # the same run's yardstick: the metrics stage every request already pays
    from atp_server.metrics import Metrics
    from atp_server.stages.record import MetricsStage
    ms = MetricsStage(Metrics(models=["m"]), frozenset({"m"}))
    base = []
    for _ in range(9):
        t0 = time.perf_counter()
        for _ in range(N):
            ms.after(ctx, "ok")
        base.append((time.perf_counter() - t0) / N * 1e6)
    print(f"yardstick, MetricsStage.after in the same run: median {statistics.median(base):.2f} µs")
    t0 = time.perf_counter()
    for _ in range(10):
        tr.evaluate()
    print(f"one evaluation (4 windows x 2 SLIs over 721 buckets): {(time.perf_counter() - t0) / 10 * 1e6:.0f} µs")
    adm = Admission(4, 4)
    t0 = time.perf_counter()
    for _ in range(1_000_000):
        if adm.throttled and adm.scheduling.tier_of("t") in adm.throttled:
            pass
    print(f"admission's throttle check, nothing throttled: {(time.perf_counter() - t0) * 1e3:.0f} ns")


if __name__ == "__main__":
    main()
