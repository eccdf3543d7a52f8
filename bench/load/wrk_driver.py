"""`--target http --driver wrk`: closed-loop HTTP load from wrk (C, one thread) instead of Python.

Reuses bench/peers/wrk.py's Lua script (every answer checked: 2xx and a marker in the body) with
this benchmark's request body and a marker every ATP chat completion carries. wrk pins itself via
taskset to the load core. wrk cannot report ATP's x-atp-overhead-us header (no per-response
values leave its Lua states), so gateway_overhead_us is None here.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from atp_server.config import DEV_API_KEY

from bench.peers import proc as procfs
from bench.peers import wrk
from bench.peers.common import pinned

from .drivers import PROMPT
from .servers import LOAD_DIR, Server

MARKER = '"object":"chat.completion"'


def _body(model: str | None) -> str:
    return json.dumps({"model": model or "auto", "messages": [{"role": "user", "content": PROMPT}]},
                      separators=(",", ":"))


def _wrk(url: str, body: str, marker: str, *, duration_s: float, connections: int, core: int | None,
         timeout_s: float) -> dict:
    binary = wrk.install()
    (LOAD_DIR / "wrk").mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="load-", suffix=".lua", dir=LOAD_DIR / "wrk")
    os.close(fd)
    script = Path(name)
    script.write_text(wrk.lua_script({"Authorization": f"Bearer {DEV_API_KEY}"}, body, marker))
    dur = max(1, round(duration_s))
    cmd = pinned([binary, "-t", "1", "-c", str(connections), "-d", f"{dur}s", "--timeout", f"{timeout_s:g}s",
                  "-s", str(script), url], core)
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=dur + timeout_s + 30)
    finally:
        script.unlink(missing_ok=True)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith(wrk.RESULT_PREFIX)), None)
    if line is None:
        raise RuntimeError(f"wrk produced no result (exit {r.returncode}): {r.stdout[-500:]} {r.stderr[-500:]}")
    raw = json.loads(line[len(wrk.RESULT_PREFIX):])
    raw["wall_s"] = time.monotonic() - t0
    return raw


def run(spec, server: Server, load_core: int | None) -> dict:
    if spec.mode != "closed" or spec.stream:
        raise ValueError("--driver wrk does closed-loop, non-streaming HTTP only")
    url = f"http://{server.address}/v1/chat/completions"
    body = _body(spec.model)
    if spec.warmup > 0:
        _wrk(url, body, MARKER, duration_s=spec.warmup, connections=spec.concurrency, core=load_core,
             timeout_s=spec.timeout)
    pids = procfs.tree_pids(server.pid) if server.pid else []
    cpu0 = sum(procfs.cpu_seconds(p) for p in pids)
    import resource
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    raw = _wrk(url, body, MARKER, duration_s=spec.duration, connections=spec.concurrency, core=load_core,
               timeout_s=spec.timeout)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = max(0.0, sum(procfs.cpu_seconds(p) for p in pids) - cpu0)
    secs = raw["duration_us"] / 1e6
    e = raw["errors"]
    sock = e["connect"] + e["read"] + e["write"] + e["timeout"]
    errors = {k: v for k, v in (("HTTP_NON_2XX", raw["non2xx"]), ("BAD_ANSWER", raw["bad_bodies"]),
                                ("SOCKET", sock)) if v}
    ok = raw["responses"] - raw["non2xx"] - raw["bad_bodies"]
    pct = {f"p{float(k):g}": v for k, v in raw["latency_us"]["percentiles"].items()}
    srv = {"accounted": bool(pids)}
    if pids:
        after = procfs.sample(pids)
        srv.update(pid=server.pid, pids=list(after.pids), affinity=procfs.affinity(server.pid),
                   cpu_s=round(cpu, 4), cpu_us_per_req=round(cpu * 1e6 / ok, 1) if ok else None,
                   core_util=round(cpu / secs, 3) if secs else None,
                   peak_rss_mb=round(after.hwm_kb / 1024, 1), rss_mb=round(after.rss_kb / 1024, 1))
    ccpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return {
        "target": spec.target, "driver": "wrk", "mode": "closed", "stream": False,
        "concurrency": spec.concurrency, "rate": None, "connections": spec.concurrency, "model": spec.model,
        "duration_s": round(secs, 3), "warmup_s": spec.warmup,
        "requests": raw["requests"], "ok": ok, "errors": errors, "error_count": sum(errors.values()),
        "error_samples": {"first_bad": raw["first_bad"]} if raw["first_bad"] else {},
        "sent": raw["requests"], "dropped": 0,
        "achieved_rps": round(ok / secs, 1) if secs else 0.0, "offered_rps": None,
        "latency_us": {**pct, "min": raw["latency_us"]["min"], "max": raw["latency_us"]["max"],
                       "mean": raw["latency_us"]["mean"], "count": raw["responses"]},
        "gateway_overhead_us": None, "ttft_us": None, "send_lag_us": None, "service_latency_us": None,
        "server": srv,
        "client": {"cpu_s": round(ccpu, 4), "cpu_us_per_req": round(ccpu * 1e6 / ok, 1) if ok else None,
                   "core_util": round(ccpu / secs, 3) if secs else None, "affinity": str(load_core)},
        "stopped_early": None, "histogram": None,
    }
