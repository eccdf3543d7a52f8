"""`python -m bench sched`: µs per AIMD update and per fair-queue selection, numba vs twin, in process.

Each figure is the median over repeats of (time for N calls) / N. The AIMD update is the one the
dispatch gate makes per upstream call; the selection is the pick of the next flow among `n`
backlogged tenants, which admission makes per queued request. Also: a whole fair-queue push + pop
per item, and one gate slot (enter + exit) as dispatch pays it. numba's first call (compile or
cache load) happens before timing.
"""
import json
import statistics
import time

import numpy as np

HELP = "µs per AIMD update and per fair-queue selection (numba vs twin) and per gate slot"


def add_arguments(p) -> None:
    p.add_argument("--iterations", type=int, default=20_000, help="calls per repeat (default 20000)")
    p.add_argument("--repeats", type=int, default=7, help="repeats; the median is reported (default 7)")
    p.add_argument("--flows", default="4,16,64,256", help="backlogged flows for selection (default 4,16,64,256)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _median_us(fn, iterations: int, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn(iterations)
        runs.append((time.perf_counter_ns() - t0) / iterations / 1000)
    return round(statistics.median(runs), 3)


def _aimd(update, iterations, repeats, arrays=True):
    from atp_server.routing.aimd import WindowState
    s = WindowState(8, arrays=arrays)
    s.window[:], s.ceiling[:] = [8.0] * 8, [64.0] * 8
    rng = np.random.default_rng(0)
    signals = [int(x) for x in rng.integers(0, 3, size=iterations)]
    lat = [float(x) for x in rng.exponential(0.2, size=iterations)]
    rows = [int(x) for x in rng.integers(0, 8, size=iterations)]
    args = (s.window, s.floor, s.ceiling, s.slo_s, s.rtt_s, s.last_cut)
    update(*args, 0, 0, 0.1, 0.0, 1.0, 0.5)   # compile / load the cache before timing

    def run(n):
        for k in range(n):
            update(*args, rows[k], signals[k], lat[k], k * 0.01, 1.0, 0.5)
    return _median_us(run, iterations, repeats)


def _select(select, n_flows, iterations, repeats):
    rng = np.random.default_rng(1)
    finish = np.full(max(n_flows, 1), np.inf)
    finish[:n_flows] = rng.integers(0, 50, size=n_flows) / 7
    flows = rng.permutation(n_flows).astype(np.int64)
    select(finish, flows, n_flows)

    def run(n):
        for _ in range(n):
            select(finish, flows, n_flows)
    return _median_us(run, iterations, repeats)


def _push_pop(select, n_flows, iterations, repeats):
    from atp_server.routing.fairq import FairQueue
    q = FairQueue(4 * n_flows + 8, n_flows, select=select)
    fids = [q.flow(f"t{i}", float(1 + i % 3)) for i in range(n_flows)]
    for fid in fids:            # keep every flow backlogged
        q.push(fid, fid)
        q.push(fid, fid)

    def run(n):
        for _ in range(n):
            fid = q.pop()       # items are their flow ids: the served flow queues again
            q.push(fid, fid)
    return _median_us(run, iterations, repeats)


def _gate(iterations, repeats):
    from atp_server.routing.aimd import ProviderWindows
    w = ProviderWindows({"p": (1, 1 << 30, 0, 0.0)}, clock=time.monotonic)

    def run(n):
        for _ in range(n):
            with w.slot("p"):
                pass
    return _median_us(run, iterations, repeats)


def measure(args) -> dict:
    from atp_server.routing import aimd, fairq
    it, rep = args.iterations, args.repeats
    out = {"aimd_update_us": {"python (lists)": _aimd(aimd.UPDATE_PYTHON, it, rep, arrays=False),
                              "python (numpy arrays)": _aimd(aimd.UPDATE_PYTHON, it, rep)},
           "select_us": {}, "push_pop_us": {}, "gate_slot_us": _gate(it, rep),
           "gate_uses": "numba" if aimd.UPDATE is aimd.UPDATE_NUMBA else "python"}
    if aimd.UPDATE_NUMBA is not None:
        out["aimd_update_us"]["numba"] = _aimd(aimd.UPDATE_NUMBA, it, rep)
    selects = {"python": fairq.SELECT_PYTHON}
    if fairq.SELECT_NUMBA is not None:
        selects["numba"] = fairq.SELECT_NUMBA
    for n in (int(x) for x in args.flows.split(",")):
        out["select_us"][n] = {k: _select(f, n, it, rep) for k, f in selects.items()}
        out["push_pop_us"][n] = {k: _push_pop(f, n, it // 4, rep) for k, f in selects.items()}
    return out


def main(args) -> int:
    r = measure(args)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"AIMD update (µs/call): " + ", ".join(f"{k} {v}" for k, v in r["aimd_update_us"].items())
          + f"  — the gate uses {r['gate_uses']}")
    print(f"gate slot enter+exit (µs): {r['gate_slot_us']}")
    print("fair-queue selection (µs/call) and push+pop (µs/item) by backlogged flows:")
    for n, sel in r["select_us"].items():
        pp = r["push_pop_us"][n]
        print(f"  {n:>4} flows  select: " + ", ".join(f"{k} {v}" for k, v in sel.items())
              + "   push+pop: " + ", ".join(f"{k} {v}" for k, v in pp.items()))
    return 0
