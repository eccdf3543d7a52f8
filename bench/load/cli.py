"""`python -m bench load`: load one ATP transport (or the bare gRPC echo) and report latency, throughput, CPU.

    python -m bench load --target grpc --concurrency 64 --duration 10
    python -m bench load --target quic --mode open --rate 2000 --concurrency 512
    python -m bench load --target http --driver wrk --concurrency 32
    python -m bench load --suite overhead --rounds 3          # every transport at concurrency 1 and 64
    python -m bench load --suite grpc-ratio --rounds 3        # ATP typed gRPC vs bare grpc.aio echo

With --server auto (default) the server is started here: `atp serve` with a generated config
(simulated provider, zero latency, --output-tokens tokens, audit on) and only the transport under
test, or bench/grpc_echo.py; pinned with taskset to --server-core, stopped at the end. This process
(the load generator, uvloop) pins itself to --load-core.

Reading the numbers
  * srv/client CPU µs/req: CPU time of that side over the measured window / good answers — robust
    on a shared machine; req/s and latencies are not. "core" is that CPU / wall time: well below
    100 % on both sides means neither side is the limit (lock-step batching, see the Session note).
  * foreign CPU srv/cli core: the share of the window the pinned core spent on anything else
    (other processes): above a few % the run was disturbed; measure again on an idle machine.
  * overhead: the server's own figure (Result.gateway_overhead_us / x-atp-overhead-us). Session
    and QUIC start the clock when the message arrives, so it includes waiting behind the other
    requests of the same message; typed gRPC and HTTP start it when the handler runs.
  * One Session / QUIC session at high concurrency runs in lock-step: the client coalesces every
    queued request into one message, the server answers the whole batch in one flush; the two
    sides then alternate instead of overlapping. --connections K (K sessions) shows the difference.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HELP = "load generator: open/closed loop against ATP gRPC, Session, QUIC, HTTP (or the bare grpc echo)"

TARGET_NAMES = ("grpc", "session", "quic", "http", "grpc-echo", "session-echo")
SUITES = ("overhead", "grpc-ratio")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = __doc__.split("\n\n", 1)[0] + "\n\n" + __doc__.split("\n\n", 1)[1]
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--target", choices=TARGET_NAMES, help="what to load")
    what.add_argument("--suite", choices=SUITES,
                      help="overhead: every transport (--targets) closed loop at --concurrencies, rounds "
                           "alternating transports, medians; grpc-ratio: ATP typed gRPC vs bare grpc.aio echo "
                           "(--pairs) at --concurrency, alternating rounds")
    p.add_argument("--mode", choices=("closed", "open"), default="closed",
                   help="closed: C workers back to back (max throughput); open: constant --rate arrivals (default closed)")
    p.add_argument("--rate", type=float, help="open loop: arrivals per second")
    p.add_argument("--timer", choices=("thread", "loop"), default="thread",
                   help="open loop: wake for each arrival from a helper thread (~50 µs precision, default) or "
                        "with the event loop's timer (~1 ms granularity on uvloop)")
    p.add_argument("--concurrency", type=int, default=64,
                   help="closed: workers; open: max outstanding requests, arrivals beyond are dropped and counted "
                        "(default 64)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds of load first (default 2)")
    p.add_argument("--stream", action="store_true", help="streaming requests (time to first chunk reported too)")
    p.add_argument("--connections", type=int, default=1,
                   help="spread the workers over K clients (gRPC channels / Session calls / QUIC connections); "
                        "HTTP always pools one connection per concurrent request (default 1)")
    p.add_argument("--quic-streams", type=int, default=1, help="ATP sessions per QUIC connection (default 1)")
    p.add_argument("--server", default="auto", help="auto (start one here) or HOST:PORT of a running server")
    p.add_argument("--server-pid", type=int, help="with --server HOST:PORT: account this process tree's CPU/RSS")
    p.add_argument("--server-core", type=int, default=0, help="core the started server is pinned to (default 0)")
    p.add_argument("--load-core", type=int, default=1, help="core this load generator pins itself to (default 1)")
    p.add_argument("--no-pin", action="store_true", help="pin nothing (e.g. when run under taskset already)")
    p.add_argument("--output-tokens", type=int, default=16, help="tokens per simulated answer (default 16)")
    p.add_argument("--no-audit", action="store_true", help="started ATP server: audit log off (default on)")
    p.add_argument("--model", help="pin a model (default: the router chooses; HTTP sends \"auto\")")
    p.add_argument("--expect", metavar="TEXT", help="count an answer whose text lacks TEXT as BAD_ANSWER")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout / drain limit, s (default 30)")
    p.add_argument("--driver", choices=("python", "wrk"), default="python",
                   help="HTTP only: wrk drives the load instead (closed loop, no overhead header)")
    p.add_argument("--http-client", choices=("lean", "aiohttp"), default="lean",
                   help="HTTP client of the Python driver (default lean: atp_server.adapters.http_client)")
    p.add_argument("--rounds", type=int, default=3, help="suites: rounds (default 3)")
    p.add_argument("--targets", default="grpc,session,quic,http", help="--suite overhead: transports, in order")
    p.add_argument("--concurrencies", default="1,64", help="--suite overhead: closed-loop concurrencies (default 1,64)")
    p.add_argument("--pairs", default="grpc:grpc-echo",
                   help="--suite grpc-ratio: ATP:reference pairs, e.g. grpc:grpc-echo,session:session-echo")
    p.add_argument("--settle", type=float, default=0.5, help="suites: pause between measurements, s (default 0.5)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON ('-' = stdout)")
    p.add_argument("--markdown", action="store_true", help="print tables as markdown")
    p.add_argument("--quiet", action="store_true", help="no per-second progress lines")
    p.add_argument("--probe", action="store_true", help="send one request to --server, exit 0 if it is good")


# ---- process setup -------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pin_self(core: int) -> None:
    """Pin every thread of this process (and so every thread created later) to `core`."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), {core})
        except OSError:
            pass
    os.sched_setaffinity(0, {core})


def cores(args) -> tuple[int | None, int | None]:
    if args.no_pin:
        return None, None
    usable = os.sched_getaffinity(0)
    if args.server_core not in usable or args.load_core not in usable:
        log(f"cores {args.server_core}/{args.load_core} not usable here (usable: {sorted(usable)}); not pinning")
        return None, None
    if args.server_core == args.load_core:
        log("warning: server and load generator share a core; results mix both sides' CPU")
    return args.server_core, args.load_core


def machine() -> dict:
    from bench.peers.run import machine as m
    return m()


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


# ---- one measurement -----------------------------------------------------------------------------

def spec_from(args, target: str, concurrency: int | None = None, label: str = ""):
    from .engine import LoadSpec
    return LoadSpec(target=target, mode=args.mode, concurrency=concurrency or args.concurrency, rate=args.rate,
                    duration=args.duration, warmup=args.warmup, stream=args.stream,
                    connections=args.connections, model=args.model, expect=args.expect, timeout=args.timeout,
                    quic_streams=args.quic_streams, http_client=args.http_client, progress=not args.quiet,
                    timer=args.timer,
                    label=label or target)


def measure(spec, server, args, load_core) -> dict:
    """One measurement against a running server (in this process, on a fresh uvloop loop)."""
    if args.driver == "wrk":
        if spec.target != "http":
            raise ValueError("--driver wrk is for --target http")
        from . import wrk_driver
        return wrk_driver.run(spec, server, load_core)
    import asyncio

    import uvloop

    from . import engine
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(engine.run(spec, server))


def started_server(target: str, args, server_core, tag: str):
    from . import servers
    if args.server == "auto":
        return servers.start(target, core=server_core, output_tokens=args.output_tokens, tag=tag,
                             audit=not args.no_audit)
    return servers.external(args.server, args.server_pid)


def finish_server(server, res: dict | None) -> None:
    from bench.peers import proc as procfs
    pids = list((res or {}).get("server", {}).get("pids") or ([server.pid] if server.pid else []))
    server.stop()
    if res is not None and server.kind != "external":
        res.setdefault("server", {})["stopped"] = server.stopped() and not any(procfs.is_running(p) for p in pids)
        res["server"]["ready_s"] = round(server.ready_s, 3)


def one(target: str, args, server_core, load_core, *, concurrency: int | None = None, tag: str = "run",
        server=None) -> dict:
    """Start (unless given) the server, measure, stop it; errors become a row with "error"."""
    own = server is None
    res = None
    try:
        if own:
            server = started_server(target, args, server_core, tag)
        res = measure(spec_from(args, target, concurrency, label=f"{target} c{concurrency or args.concurrency}"),
                      server, args, load_core)
    except Exception as exc:   # a failed measurement is a row with the reason, never a lost run
        res = {"target": target, "mode": args.mode, "concurrency": concurrency or args.concurrency,
               "error": f"{type(exc).__name__}: {exc}"}
        from bench.peers.common import Unavailable
        if isinstance(exc, Unavailable):
            res["error"] = f"unavailable: {exc}"
    finally:
        if own and server is not None:
            finish_server(server, res)
    return res


def _line(r: dict) -> str:
    if "error" in r:
        return f"FAILED: {r['error'].splitlines()[0][:200]}"
    lat, srv, ov = r["latency_us"], r["server"], r.get("gateway_overhead_us")
    foreign = srv.get("core_foreign_share")
    cpu = (f"srv {srv['cpu_us_per_req']:.0f} µs/req (core {srv['core_util']:.0%}"
           + (f", others {foreign:.0%}" if foreign is not None else "") + ")  " if srv.get("cpu_us_per_req") else "")
    ovs = f"overhead p50 {ov['p50']:.0f} µs  " if ov else ""
    ccpu = r["client"].get("cpu_us_per_req")
    return (f"{r['achieved_rps']:>9,.0f} req/s  p50 {lat['p50'] / 1000:.3f} ms  p99 {lat['p99'] / 1000:.3f} ms  "
            f"{cpu}{ovs}client {ccpu or 0:.0f} µs/req (core {r['client']['core_util']:.0%}"
            + (f", others {r['client']['core_foreign_share']:.0%}" if r["client"].get("core_foreign_share") is not None
               else "") + ")  "
            f"errors {r['error_count']}" + (f" {r['errors']}" if r["errors"] else ""))


# ---- probe ---------------------------------------------------------------------------------------

def do_probe(args) -> int:
    import asyncio

    import uvloop

    from . import servers
    from .drivers import DRIVERS, error_name
    server = servers.external(args.server)

    async def go():
        d = DRIVERS[args.target](server.host, server.port, model=args.model, expect=args.expect,
                                 timeout=min(args.timeout, 10), concurrency=1, stream=args.stream)
        await d.open()
        try:
            await asyncio.wait_for(d.caller(0)(), 10)
        finally:
            await d.close()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(go())
    except Exception as exc:
        print(f"probe failed: {error_name(exc)}: {exc}")
        return 1
    print("probe ok")
    return 0


# ---- main ----------------------------------------------------------------------------------------

def main(args) -> int:
    if args.probe:
        if not args.target or args.server == "auto":
            log("--probe needs --target and --server HOST:PORT")
            return 2
        return do_probe(args)
    if args.mode == "open" and not args.rate:
        log("--mode open needs --rate")
        return 2
    if args.target == "session-echo" and args.stream:
        log("session-echo has no streaming variant")
        return 2
    server_core, load_core = cores(args)
    if load_core is not None:
        pin_self(load_core)
    started = datetime.now(timezone.utc)
    old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    info = {"machine": machine(), "python": sys.version.split()[0], "platform": platform.platform()}
    results: list[dict] = []
    out: dict = {}
    interrupted = False
    try:
        if args.suite == "overhead":
            out = suite_overhead(args, server_core, load_core, results)
        elif args.suite == "grpc-ratio":
            out = suite_ratio(args, server_core, load_core, results)
        else:
            r = one(args.target, args, server_core, load_core)
            results.append(r)
            log(f"{args.target}: {_line(r)}")
    except KeyboardInterrupt:
        interrupted = True
        log("\ninterrupted")
    finally:
        signal.signal(signal.SIGTERM, old_term)

    from . import report
    doc = {"started": started.isoformat(timespec="seconds"),
           "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           **info, "loadavg_after": machine()["loadavg"],
           "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")}
                       | {"server_core": server_core, "load_core": load_core},
           "results": results, **out, "interrupted": interrupted}
    print(f"machine: {info['machine']['nproc']} CPUs, {info['machine']['cpu_model']}, loadavg "
          f"{info['machine']['loadavg']} → {doc['loadavg_after']}; server core {server_core}, load core {load_core}")
    if args.suite == "overhead":
        print(report.overhead_table(out["summary"], args.markdown))
    elif args.suite == "grpc-ratio":
        print(report.ratio_table(out["ratios"], args.markdown))
    else:
        print(report.rows_table(results, args.markdown))
    if args.json:
        text = json.dumps(doc, indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            Path(args.json).write_text(text)
    bad = interrupted or any("error" in r or r.get("error_count") or not r.get("ok")
                             or r.get("server", {}).get("stopped") is False for r in results)
    return 1 if bad else 0


def suite_overhead(args, server_core, load_core, results: list[dict]) -> dict:
    from . import report
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    concs = [int(c) for c in args.concurrencies.split(",") if c.strip()]
    bad = [t for t in targets if t not in TARGET_NAMES]
    if bad:
        raise SystemExit(f"unknown target(s): {', '.join(bad)}")
    log(f"suite overhead: {args.rounds} round(s) × {targets} × concurrency {concs}, "
        f"{args.warmup:g}s warmup + {args.duration:g}s each")
    for rnd in range(1, args.rounds + 1):
        for t in targets:
            server = None
            rows = []
            try:
                server = started_server(t, args, server_core, f"r{rnd}")
                for c in concs:
                    r = one(t, args, server_core, load_core, concurrency=c, tag=f"r{rnd}", server=server)
                    r["round"] = rnd
                    rows.append(r)
                    log(f"[round {rnd}/{args.rounds}] {t:<8} c={c:<4} {_line(r)}")
            except Exception as exc:
                for c in concs[len(rows):]:
                    rows.append({"target": t, "mode": "closed", "concurrency": c, "round": rnd,
                                 "error": f"{type(exc).__name__}: {exc}"})
                    log(f"[round {rnd}/{args.rounds}] {t:<8} c={c:<4} FAILED: {str(exc).splitlines()[0][:200]}")
            finally:
                if server is not None:   # one server per (round, transport): every row gets its stop status
                    last = next((r for r in reversed(rows) if "error" not in r), None)
                    finish_server(server, last)
                    for r in rows:
                        if "error" not in r:
                            r["server"]["stopped"] = last["server"]["stopped"]
                            r["server"]["ready_s"] = last["server"]["ready_s"]
            results.extend(rows)
            time.sleep(args.settle)
    return {"summary": report.overhead_summary(results, targets, concs)}


def suite_ratio(args, server_core, load_core, results: list[dict]) -> dict:
    from . import report
    pairs = []
    for p in args.pairs.split(","):
        a, _, b = p.strip().partition(":")
        if a not in TARGET_NAMES or b not in TARGET_NAMES:
            raise SystemExit(f"bad pair {p!r}: want ATP:REFERENCE, e.g. grpc:grpc-echo")
        pairs.append((a, b))
    log(f"suite grpc-ratio: {args.rounds} round(s) × {pairs} at concurrency {args.concurrency}, "
        f"{args.warmup:g}s warmup + {args.duration:g}s each, server core {server_core}")
    for rnd in range(1, args.rounds + 1):
        for a, b in pairs:
            for t in (a, b):
                r = one(t, args, server_core, load_core, tag=f"r{rnd}")
                r["round"] = rnd
                results.append(r)
                log(f"[round {rnd}/{args.rounds}] {t:<12} {_line(r)}")
                time.sleep(args.settle)
    return {"ratios": report.ratio_rows(results, pairs, args.rounds)}
