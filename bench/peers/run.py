"""`python -m bench peers`: every gateway side by side in front of one nginx, rounds alternating A B C A B C.

nginx (the fake upstream) and the load generator share the load core; each gateway runs alone,
pinned to the gateway core, and is stopped before the next one starts. Every response is checked
(2xx and the upstream's marker in the body): a gateway answering errors fast is not a result.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import signal
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from . import nginx as nginx_mod
from . import proc as procfs
from . import wrk
from .base import Ctx, MeasureSpec
from .common import LOGS, WORK, Unavailable, log, run_text
from .targets import TARGETS, wrk_measure

HELP = "peer comparison: nginx direct, bare proxy, ATP, LiteLLM, Portkey in front of one nginx"


def add_arguments(p) -> None:
    names = ",".join(TARGETS)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per target per round (default 10)")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds of load after start (default 3)")
    p.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: it shares one core with nginx)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each runs every target once (default 3)")
    p.add_argument("--only", default=names, help=f"comma-separated targets, in run order (default {names})")
    p.add_argument("--gateway-core", type=int, default=0, help="core the gateway under test is pinned to (default 0)")
    p.add_argument("--workers", type=int, default=1,
                   help="gateway worker processes for targets that have them (atp-*: --workers, litellm: "
                        "--num_workers); >1 spreads gateway, wrk and nginx over all cores unpinned")
    p.add_argument("--load-core", type=int, default=1, help="core for nginx and the load generator (default 1)")
    p.add_argument("--settle", type=float, default=1.0, help="pause between targets, seconds (default 1)")
    p.add_argument("--baseline", metavar="REF",
                   help="also run every selected atp-* target from a checkout of git REF (e.g. HEAD~3), "
                        "alternating with the current tree in each round: a same-run before/after")
    p.add_argument("--json", metavar="PATH", help="write every round and the summary as JSON")
    p.add_argument("--markdown", action="store_true", help="print the summary as a markdown table")
    p.add_argument("--install-only", action="store_true",
                   help="install what the selected targets need (nginx, wrk, LiteLLM venv, Portkey node_modules) and exit")


# ---- environment ---------------------------------------------------------------------------------

def machine() -> dict:
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = open("/proc/loadavg").read().split()[:3]
    except OSError:
        load = []
    return {"nproc": os.cpu_count(), "usable_cpus": sorted(os.sched_getaffinity(0)), "cpu_model": model,
            "kernel": platform.release(), "loadavg": " ".join(load), "hostname": platform.node()}


def versions(targets: list) -> dict:
    v = {"python": sys.version.split()[0], "node": run_text(["node", "--version"]) or "not installed",
         "nginx": nginx_mod.version(), "wrk": wrk.version()}
    for t in targets:
        if t.version is not None and t.name not in v:
            try:
                v[t.name] = t.version()
            except Exception as e:  # a version probe never stops a run
                v[t.name] = f"? ({e})"
    return v


def install(targets: list) -> dict[str, str]:
    """Install the common tools and every selected target's own; returns {name: reason} of failures."""
    failed = {}
    for name, fn in (("nginx", nginx_mod.install), ("wrk", wrk.install)):
        try:
            fn()
        except Unavailable as e:
            failed[name] = str(e)
    for t in targets:
        if t.install is not None and t.name not in failed:
            try:
                t.install()
            except Unavailable as e:
                failed[t.name] = str(e)
    return failed


# ---- one measurement -----------------------------------------------------------------------------

def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure_target(target, ctx: Ctx, args, round_no: int) -> dict:
    """Start, warm up, measure, stop one target; the row for this round (raises Unavailable on start failure)."""
    measure = target.measure or wrk_measure
    t0 = time.monotonic()
    running = target.start(ctx)
    row = {"target": target.name, "round": round_no, "ready_s": round(running.ready_s or time.monotonic() - t0, 2)}
    try:
        row["gateway_affinity"] = ",".join(procfs.affinity(p) for p in running.pids)
        if args.warmup > 0:
            warm = measure(running, MeasureSpec(args.warmup, args.connections, ctx.load_core,
                                                ctx.log(f"{target.name}-warmup-wrk"), args.threads))
            row["warmup"] = {k: warm[k] for k in ("requests", "non2xx", "bad_bodies", "socket_errors")}
        before, nginx_before = procfs.sample(running.pids), procfs.sample([ctx.nginx.proc.pid])
        load_cpu0, wall0 = _children_cpu(), time.monotonic()
        res = measure(running, MeasureSpec(args.duration, args.connections, ctx.load_core,
                                           ctx.log(f"{target.name}-wrk"), args.threads))
        wall = time.monotonic() - wall0
        load_cpu = _children_cpu() - load_cpu0   # the load generator (reaped child)
        after, nginx_after = procfs.sample(running.pids), procfs.sample([ctx.nginx.proc.pid])
        alive = all(procfs.is_running(p) for p in running.pids)
    finally:
        running.stop()
    row.update(res)
    usage = procfs.delta(before, after)
    nginx_cpu = procfs.delta(nginx_before, nginx_after)["cpu_s"]
    secs = res.get("duration_s") or wall
    row.update(
        gateway_cpu_s=round(usage["cpu_s"], 3),
        cpu_ms_per_req=round(usage["cpu_s"] * 1000 / res["requests"], 4) if res["requests"] else None,
        gateway_core_util=round(usage["cpu_s"] / secs, 3) if secs else None,
        peak_rss_mb=usage["peak_rss_mb"], processes=usage["processes"],
        # nginx + load generator share the load core: near 1.0 means the load side, not the gateway, limits
        load_core_util=round((nginx_cpu + load_cpu) / secs, 3) if secs else None,
        upstream_cpu_ms_per_req=round(nginx_cpu * 1000 / res["requests"], 4) if res["requests"] else None,
        survived=alive, pids=sorted(set(before.pids) | set(after.pids)),
    )
    row["stopped"] = running.stopped() and not any(procfs.is_running(p) for p in row["pids"]
                                                   if not target.is_floor)
    # A result only if every answer was the upstream's completion and nothing timed out or broke.
    row["ok"] = bool(res["requests"] > 0 and res["non2xx"] == 0 and res["bad_bodies"] == 0
                     and res["socket_errors"] == 0 and alive)
    return row


def _brief(error: str) -> str:
    """First line of an error, plus its last line (the log tail's last word) when there is more."""
    lines = [ln for ln in error.splitlines() if ln.strip()]
    return lines[0][:250] + (f" … {lines[-1].strip()[:200]}" if len(lines) > 1 else "")


def _progress(row: dict) -> str:
    if "error" in row:
        return f"FAILED: {_brief(row['error'])}"
    lat = row["latency_ms"]
    verdict = "ok" if row["ok"] else (f"NOT OK: non-2xx {row['non2xx']}, bad bodies {row['bad_bodies']}, "
                                      f"socket errors {row['socket_errors']}"
                                      + ("" if row["survived"] else ", gateway died")
                                      + (f", e.g. {row['first_bad'][:120]!r}" if row.get("first_bad") else ""))
    cpu = f"{row['cpu_ms_per_req']:.3f}" if row["cpu_ms_per_req"] is not None else "-"
    return (f"{row['rps']:>9.1f} req/s  p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms  "
            f"cpu {cpu} ms/req  rss {row['peak_rss_mb']:.0f} MB  "
            f"cores gw {row['gateway_core_util']:.2f} load {row['load_core_util']:.2f}  "
            f"sockerr {row['socket_errors']}  {verdict}")


# ---- summary -------------------------------------------------------------------------------------

def _median(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 4) if xs else None


def summarize(rows: list[dict], targets: list) -> list[dict]:
    out = []
    floor = next((t.name for t in targets if t.is_floor), None)
    floor_p50 = _median([r["latency_ms"]["p50"] for r in rows if r["target"] == floor and "error" not in r])
    for t in targets:
        mine = [r for r in rows if r["target"] == t.name]
        good = [r for r in mine if "error" not in r]
        s = {"target": t.name, "label": t.label, "rounds": len(mine), "rounds_measured": len(good),
             "rounds_ok": sum(1 for r in good if r["ok"])}
        if good:
            p50 = _median([r["latency_ms"]["p50"] for r in good])
            s.update(
                rps=_median([r["rps"] for r in good]),
                rps_min=min(r["rps"] for r in good), rps_max=max(r["rps"] for r in good),
                p50_ms=p50, p99_ms=_median([r["latency_ms"]["p99"] for r in good]),
                p999_ms=_median([r["latency_ms"]["p99.9"] for r in good]),
                overhead_p50_ms=(round(p50 - floor_p50, 3) if floor_p50 is not None and t.name != floor else
                                 (0.0 if t.name == floor else None)),
                cpu_ms_per_req=_median([r["cpu_ms_per_req"] for r in good]),
                # what one fully busy core would serve at this CPU cost: robust to a shared machine
                rps_per_core=_median([1000 / r["cpu_ms_per_req"] if r["cpu_ms_per_req"] else None for r in good]),
                peak_rss_mb=max(r["peak_rss_mb"] for r in good),
                gateway_core_util=_median([r["gateway_core_util"] for r in good]),
                load_core_util=_median([r["load_core_util"] for r in good]),
                requests=sum(r["requests"] for r in good),
                non2xx=sum(r["non2xx"] for r in good), bad_bodies=sum(r["bad_bodies"] for r in good),
                socket_errors=sum(r["socket_errors"] for r in good),
                ready_s=_median([r["ready_s"] for r in good]),
            )
        errors = [r["error"] for r in mine if "error" in r]
        if errors:
            s["error"] = errors[0]
        out.append(s)
    return out


COLUMNS = [("target", "target", "{}"), ("req/s (median)", "rps", "{:,.0f}"), ("p50 ms", "p50_ms", "{:.2f}"),
           ("p99 ms", "p99_ms", "{:.2f}"), ("+p50 vs direct ms", "overhead_p50_ms", "{:+.2f}"),
           ("gw CPU ms/req", "cpu_ms_per_req", "{:.3f}"), ("req/s per gw core", "rps_per_core", "{:,.0f}"),
           ("gw core busy", "gateway_core_util", "{:.0%}"), ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
           ("non-2xx", "non2xx", "{:,}"), ("bad bodies", "bad_bodies", "{:,}"),
           ("socket errors", "socket_errors", "{:,}"), ("load core", "load_core_util", "{:.0%}"),
           ("rounds ok", "rounds_ok", "{}")]


def _cells(s: dict) -> list[str]:
    cells = []
    for _, key, fmt in COLUMNS:
        v = s.get(key)
        if key == "rounds_ok":
            cells.append(f"{s['rounds_ok']}/{s['rounds']}")
        elif v is None:
            cells.append("—" if "error" not in s or key == "target" else "failed")
        else:
            cells.append(fmt.format(v))
    cells[0] = s["target"]
    return cells


def table(summary: list[dict], markdown: bool) -> str:
    head = [c[0] for c in COLUMNS]
    rows = [_cells(s) for s in summary]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        fmt = lambda r: "  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r))
        lines = [fmt(head)] + [fmt(r) for r in rows]
    for s in summary:
        if "error" in s:
            lines.append(f"{'* ' if not markdown else '- '}{s['target']}: {_brief(s['error'])}")
    return "\n".join(lines)


# ---- main ----------------------------------------------------------------------------------------

def _on_sigterm(signum, frame):
    raise KeyboardInterrupt  # unwinds through every finally: gateways and nginx get stopped


def main(args) -> int:
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        print(f"unknown target(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    targets = [TARGETS[n] for n in dict.fromkeys(names)]
    WORK.mkdir(parents=True, exist_ok=True)
    if args.baseline:
        from .atp import baseline_targets
        try:
            before = {t.name.split("@")[0]: t for t in baseline_targets(args.baseline)}
        except Unavailable as e:
            print(e, file=sys.stderr)
            return 2
        # Each baseline target runs right before its current-tree twin in every round.
        targets = [x for t in targets for x in ((before[t.name], t) if t.name in before else (t,))]

    needs = dict.fromkeys(["nginx", "wrk", *(t.name for t in targets if t.install)])
    log(f"installing/checking: {', '.join(needs)}")
    failed = install(targets)
    for name, why in failed.items():
        log(f"  unavailable: {name}: {why}")
    info = {"machine": machine(), "versions": versions(targets)}
    log("machine: " + ", ".join(f"{k}={v}" for k, v in info["machine"].items()))
    log("versions: " + ", ".join(f"{k}={v}" for k, v in info["versions"].items()))
    if args.install_only:
        return 1 if failed else 0
    if "nginx" in failed or "wrk" in failed:
        log("cannot run without nginx and wrk")
        return 1

    ncpu = len(os.sched_getaffinity(0))
    gw_core, load_core = args.gateway_core, args.load_core
    usable = os.sched_getaffinity(0)
    if args.workers > 1:
        # Several workers need several cores: nobody is pinned, the kernel shares all of them.
        log(f"{args.workers} gateway workers: gateway, wrk and nginx share all {ncpu} cores (unpinned)")
        gw_core = load_core = None
    elif gw_core not in usable or load_core not in usable:
        log(f"cores {gw_core}/{load_core} not usable here (usable: {sorted(usable)}); not pinning")
        gw_core = load_core = None
    elif gw_core == load_core or ncpu < 2:
        log("warning: gateway and load share a core; results mix both sides' CPU")

    started = datetime.now(timezone.utc)
    rows: list[dict] = []
    old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    upstream = nginx_mod.Nginx(core=load_core)
    interrupted = False
    tty = sys.stderr.isatty()
    try:
        upstream.start()
        log(f"nginx on 127.0.0.1:{upstream.port} pinned to core {load_core} (pid {upstream.proc.pid}); "
            f"gateways on core {gw_core}; {args.rounds} round(s) × {len(targets)} target(s) × "
            f"({args.warmup:g}s warmup + {args.duration:g}s) at {args.connections} connections")
        for rnd in range(1, args.rounds + 1):
            for i, t in enumerate(targets, 1):
                prefix = f"[round {rnd}/{args.rounds} · {i}/{len(targets)}] {t.name:<9}"
                if t.name in failed:
                    rows.append({"target": t.name, "round": rnd, "error": f"unavailable: {failed[t.name]}"})
                    log(f"{prefix} skipped (unavailable)")
                    continue
                if tty:
                    print(f"{prefix} starting…", end="", file=sys.stderr, flush=True)
                ctx = Ctx(upstream, gw_core, load_core, tag=f"r{rnd}", workers=args.workers)
                try:
                    row = measure_target(t, ctx, args, rnd)
                except (Unavailable, RuntimeError, OSError) as e:
                    row = {"target": t.name, "round": rnd, "error": f"{type(e).__name__}: {e}"}
                rows.append(row)
                print(("\r" if tty else "") + prefix + " " + _progress(row), file=sys.stderr, flush=True)
                if not upstream.proc.alive():
                    raise RuntimeError(f"nginx died; see {upstream.proc.log_path}")
                time.sleep(args.settle)
    except KeyboardInterrupt:
        interrupted = True
        log("\ninterrupted: stopping everything")
    finally:
        upstream.stop()
        signal.signal(signal.SIGTERM, old_term)

    summary = summarize(rows, targets)
    result = {
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **info,
        "loadavg_after": machine()["loadavg"],
        "settings": {k: getattr(args, k) for k in ("duration", "warmup", "connections", "threads", "rounds")}
                    | {"targets": [t.name for t in targets], "gateway_core": gw_core, "load_core": load_core},
        "rows": rows,
        "summary": summary,
        "interrupted": interrupted,
        "nginx_pid": upstream.proc.pid if upstream.proc else None,
    }
    (WORK / "results").mkdir(parents=True, exist_ok=True)
    last = WORK / "results" / f"peers-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    for path in filter(None, (last, args.json)):
        Path(path).write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(f"machine: {info['machine']['nproc']} CPUs, {info['machine']['cpu_model']}, kernel "
          f"{info['machine']['kernel']}, loadavg {info['machine']['loadavg']} → {result['loadavg_after']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print(f"settings: {args.rounds} round(s), {args.warmup:g}s warmup + {args.duration:g}s, {args.connections} "
          f"connections, gateway core {gw_core}, load core {load_core} (nginx + wrk)")
    print()
    print(table(summary, args.markdown))
    print(f"\nJSON: {args.json or last}; logs: {LOGS}")
    leaked = [p for r in rows for p in r.get("pids", ()) if procfs.is_running(p)]
    if leaked:  # a gateway that outlived its stop() would skew every later measurement
        log(f"warning: processes still running after stop: {leaked}")
    bad = interrupted or bool(leaked) or any(s["rounds_ok"] < s["rounds"] for s in summary)
    return 1 if bad else 0
