"""`python -m bench audit`: what the audit log costs a request — off, on (durable before the
answer, group commit), and on with synchronous=full — in process, under concurrency.

A real App (embedded default, zero-latency simulated model, temporary state dir) answers
`--requests` pipeline.complete calls from `--concurrency` coroutines; the modes alternate per
repeat so drift hits each alike. Reported per mode: median requests/s, and for audit on the rows
per commit (how many requests shared one group commit) and the requests answered before their
row was committed (`late`, 0 unless the disk fails).
"""
import asyncio
import dataclasses
import json
import statistics
import tempfile
import time

HELP = "requests/s with the audit log off, on (durable, group commit) and synchronous=full"
MODES = ("off", "normal", "full")


def add_arguments(p) -> None:
    p.add_argument("--requests", type=int, default=5000, help="requests per run (default 5000)")
    p.add_argument("--concurrency", type=int, default=64, help="concurrent callers (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="runs per mode; median reported (default 5)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


async def _run(mode: str, args) -> dict:
    from atp_server import config as atp_config
    from atp_server.app import App
    from atp_server.auth import Principal
    from atp_server.types import ChatRequest

    with tempfile.TemporaryDirectory() as tmp:
        cfg = atp_config.loads(atp_config.DEFAULT_TOML.replace("latency_ms = 20\n", "latency_ms = 0\n")
                               .replace("tokens_per_s = 400\n", "tokens_per_s = 0\n"))
        audit = dataclasses.replace(cfg.audit, enabled=mode != "off",
                                    synchronous="full" if mode == "full" else "normal")
        server = dataclasses.replace(cfg.server, state_dir=tmp, max_inflight=args.concurrency * 2)
        app = App(dataclasses.replace(cfg, server=server, audit=audit))
        if app.audit is not None:
            app.audit.start()
        principal = Principal("default", "dev", "api_key")
        todo = iter(range(args.requests))

        async def caller():
            for _ in todo:
                await app.pipeline.complete(ChatRequest([("user", "audit me")], tier="fast"),
                                            principal, "bench")
        t0 = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - t0
        out = {"rps": args.requests / elapsed}
        if app.audit is not None:
            out["rows_per_commit"] = app.audit.written / max(1, app.audit.commits)
            out["late"] = app.audit.late
        await app.stop(0)
        return out


async def _measure(args) -> dict:
    runs = {m: [] for m in MODES}
    for _ in range(args.repeats):
        for mode in MODES:
            runs[mode].append(await _run(mode, args))
    result = {"requests": args.requests, "concurrency": args.concurrency, "repeats": args.repeats}
    for mode in MODES:
        r = {"rps": round(statistics.median(x["rps"] for x in runs[mode]))}
        if mode != "off":
            r["rows_per_commit"] = round(statistics.median(x["rows_per_commit"] for x in runs[mode]), 1)
            r["late"] = sum(x["late"] for x in runs[mode])
            r["vs_off"] = round(r["rps"] / result["off"]["rps"], 3)
        result[mode] = r
    return result


def main(args) -> int:
    import uvloop
    result = uvloop.run(_measure(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.requests} requests from {args.concurrency} callers, median of {args.repeats}")
    for mode in MODES:
        r = result[mode]
        extra = (f"  {r['vs_off']:.3f}× off, {r['rows_per_commit']} rows/commit, late {r['late']}"
                 if mode != "off" else "")
        print(f"  audit {mode:<7} {r['rps']:>8} req/s{extra}")
    return 0
