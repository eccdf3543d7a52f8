"""What live.LiveStats.record() costs per request (the dashboard's hook on the access-log stage).

    .venv/bin/python -m bench.live_cost [--number 200000] [--repeats 7]

Times record() on a context shaped like a finished, answered request (usage + decision), and the
same loop calling a no-op, and prints the medians of the difference in µs per call.
"""
import argparse
import statistics
import time

from atp_server.live import LiveStats
from atp_server.types import RouteDecision, Usage


class _Ctx:
    __slots__ = ("t0", "code", "outcome", "usage", "decision")

    def __init__(self):
        self.t0 = time.perf_counter_ns()
        self.code, self.outcome = 0, "ok"
        self.usage = Usage(120, 80, 420)
        self.decision = RouteDecision("sim", "sim-fast", 0.0, 0.0, 1.0)


def _loop(fn, ctx, n: int) -> float:
    t = time.perf_counter_ns()
    for _ in range(n):
        fn(ctx)
    return (time.perf_counter_ns() - t) / n / 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--number", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    clock = [0.0]
    live = LiveStats(baseline=(2.5, 10.0), clock=lambda: clock[0])
    ctx = _Ctx()
    for second in range(60):            # fill the ring so snapshot() sums a full window
        clock[0] = float(second)
        for _ in range(50):
            live.record(ctx)
    rows = []
    for _ in range(args.repeats):
        rows.append(_loop(live.record, ctx, args.number) - _loop(lambda c: None, ctx, args.number))
    print(f"LiveStats.record: median {statistics.median(rows):.3f} µs/request "
          f"(min {min(rows):.3f}, {args.repeats} rounds of {args.number})")
    snaps = []
    for _ in range(args.repeats):       # a full ring: 60 one-second slots with requests in each
        t = time.perf_counter_ns()
        live.snapshot()
        snaps.append((time.perf_counter_ns() - t) / 1000)
    print(f"LiveStats.snapshot (once a second, not per request): median {statistics.median(snaps):.0f} µs")


if __name__ == "__main__":
    main()
