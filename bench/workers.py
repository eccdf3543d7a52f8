"""`python -m bench workers [--redis]`: HTTP req/s of `atp serve --workers 1` vs `--workers 2` in front of nginx.

The issue-12 target: 2 workers sharing state through Redis deliver >= 1.7x the throughput of 1.
Each round starts nginx (the peers harness's fake upstream), a private redis-server when --redis,
then ATP with 1 and with 2 workers in turn (alternating which goes first, so a machine that gets
busier during the run does not favour one), each measured by wrk (the peers harness's script:
every answer checked for the upstream's marker). With --redis the config also has a [[limits]]
rule far above the load (requests/min, tokens/min, a USD budget), so every request runs the
shared-state admit script in Redis and settles after; without --redis the workers share nothing
(API keys only, no limits): the scale-out ceiling to compare with.

Nothing is pinned: two workers need both cores, and wrk, nginx and Redis share them. Run it on an
otherwise idle machine (`--duration 15 --rounds 3`); the machine load is reported next to the
numbers. Results: stdout and bench/.peers/workers.json.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from .peers import atp, nginx, upstream, wrk
from .peers.common import LOGS, WORK, Proc, Unavailable, completion_check, free_port, log, wait_ready

HELP = "HTTP req/s of atp serve --workers 1 vs 2 (with --redis: shared limits/learning in Redis)"
# Far above anything two cores serve in a minute: the rule is checked on every request, never refuses.
LIMIT_RULE = """
[[limits]]
name = "bench"
requests_per_min = 100000000
tokens_per_min = 2000000000
usd_per_day = 1000000.0
"""
REDIS_READY = b"Ready to accept connections"


def add_arguments(p) -> None:
    p.add_argument("--redis", action="store_true",
                   help="share state through a private redis-server ([state] redis_url + a [[limits]] rule)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds per measurement (default 15)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each measurement (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="1-worker/2-worker pairs (default 3; medians reported)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--redis-timeout-ms", type=int, default=50,
                   help="[state] timeout_ms (default 50, the server's default; a loaded machine needs more, "
                        "else budgets fail closed and show up as bad responses)")
    p.add_argument("--json", default=str(WORK / "workers.json"), help="where to write the results")


class RedisProc:
    """A private redis-server on a free port, no persistence; ready once it says so."""

    def __init__(self):
        exe = shutil.which("redis-server")
        if exe is None:
            raise Unavailable("redis-server is not installed (scripts/setup.sh installs it)")
        self.port = free_port()
        self.popen = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--logfile", ""],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for line in self.popen.stdout:
            if REDIS_READY in line:
                break
        else:
            raise Unavailable("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.popen.kill()
        self.popen.wait()
        self.popen.stdout.close()


def write_config(upstream_base_url: str, redis_url: str | None, timeout_ms: int):
    path = atp.write_config(upstream_base_url, WORK / "atp-workers.toml", audit=False)
    if redis_url:
        path.write_text(path.read_text() + f'\n[state]\nredis_url = "{redis_url}"\n'
                        f'timeout_ms = {timeout_ms}\n' + LIMIT_RULE)
    return path


def measure(conf, workers: int, args, tag: str) -> dict:
    port = free_port()
    name = f"atp-{workers}w-{tag}"
    proc = Proc(name, [*atp.atp_command(), "serve", "--config", str(conf), "--no-grpc", "--no-quic",
                       "--http-port", str(port), "--log-level", "warning", "--no-access-log",
                       "--workers", str(workers)], cwd=atp.REPO, log_path=LOGS / f"{name}.log")
    headers = {"Authorization": f"Bearer {atp.API_KEY}"}
    try:
        wait_ready(name, completion_check("127.0.0.1", port, "/v1/chat/completions", headers), 60, proc)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        if args.warmup > 0:
            wrk.run(url, duration_s=args.warmup, connections=args.connections, threads=args.threads,
                    headers=headers)
        load_before = os.getloadavg()[0]
        res = wrk.run(url, duration_s=args.duration, connections=args.connections, threads=args.threads,
                      headers=headers, log_path=LOGS / f"{name}.wrk.log")
    finally:
        proc.stop()
    bad = res["non2xx"] + res["bad_bodies"] + res["socket_errors"]
    log(f"{name}: {res['rps']:,.0f} req/s, p50 {res['latency_ms']['p50']} ms, p99 "
        f"{res['latency_ms']['p99']} ms, {bad} bad, load avg {load_before:.2f}")
    return {"workers": workers, "rps": res["rps"], "latency_ms": res["latency_ms"], "bad": bad,
            "first_bad": res.get("first_bad", ""), "loadavg_before": load_before}


def main(args) -> int:
    try:
        wrk.install()
        upstream_proc = nginx.Nginx().start()
    except Unavailable as exc:
        print(f"bench workers: {exc}", file=sys.stderr)
        return 2
    redis = None
    rows = []
    try:
        if args.redis:
            redis = RedisProc()
        conf = write_config(upstream_proc.base_url, redis.url if redis else None, args.redis_timeout_ms)
        for rnd in range(args.rounds):
            order = (1, 2) if rnd % 2 == 0 else (2, 1)
            for workers in order:
                rows.append(measure(conf, workers, args, f"r{rnd}") | {"round": rnd})
    finally:
        if redis is not None:
            redis.stop()
        upstream_proc.stop()
    one = statistics.median(r["rps"] for r in rows if r["workers"] == 1)
    two = statistics.median(r["rps"] for r in rows if r["workers"] == 2)
    bad = sum(r["bad"] for r in rows)
    summary = {"redis": bool(args.redis), "redis_timeout_ms": args.redis_timeout_ms,
               "duration_s": args.duration, "rounds": args.rounds, "connections": args.connections,
               "cpus": os.cpu_count(), "rps_1_worker": one, "rps_2_workers": two,
               "speedup": round(two / one, 3) if one else None, "bad_responses": bad, "target": 1.7,
               "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "runs": rows}
    path = args.json
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"HTTP -> nginx, {'Redis-shared state' if args.redis else 'no shared state'}: "
          f"1 worker {one:,.0f} req/s, 2 workers {two:,.0f} req/s, x{summary['speedup']} "
          f"(target >= 1.7), {bad} bad responses; {path}")
    return 0 if bad == 0 else 1
