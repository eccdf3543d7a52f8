"""`atp models status` and `atp resources`: what a running server says about its models and its host, as a table or --json.

Both read the server's HTTP REST API (`GET /api/v1/ai/models/status`, `GET
/api/v1/ai/resources/metrics`) with the caller's API key. A server without the REST API (an
older ATP) still answers `models status` from `/v1/models` (health only) and says so.
`atp resources --local` reads this host's /proc directly, no server needed (what the monitor
of a server on this host would see). Fetching is thin; rendering is pure (text and JSON).
"""
import json
import sys
import urllib.error
import urllib.request

STATUS_PATH = "/api/v1/ai/models/status"
RESOURCES_PATH = "/api/v1/ai/resources/metrics"


class HttpFailure(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def get_json(base: str, path: str, api_key: str, timeout: float) -> dict:
    """GET base+path with the API key; HttpFailure with the server's own message on non-200."""
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            err = json.loads(body).get("error") or {}
            message = err.get("message") if isinstance(err, dict) else str(err)
        except (ValueError, AttributeError):
            message = None
        raise HttpFailure(exc.code, message or f"HTTP {exc.code} from {path}") from None


def fetch_models_status(base: str, api_key: str, timeout: float = 5.0) -> dict:
    """{"source": ..., "models": [...]}: the REST status joined with the resources view (local,
    loaded) when the server has one."""
    try:
        models = get_json(base, STATUS_PATH, api_key, timeout)["models"]
        source = STATUS_PATH
    except HttpFailure as exc:
        if exc.status != 404:
            raise
        listing = get_json(base, "/v1/models", api_key, timeout)["data"]
        models = [{"id": m["id"], "provider": m.get("owned_by"),
                   "healthy": (m.get("atp") or {}).get("healthy")} for m in listing]
        source = "/v1/models (this server has no REST API: health only)"
    try:
        res = get_json(base, RESOURCES_PATH, api_key, timeout)
        local = {m["id"]: m for m in res.get("models", [])}
        blocked = set(res.get("blocked", []))
    except HttpFailure:
        local, blocked = {}, set()
    for m in models:
        r = local.get(m["id"], {})
        m.setdefault("local", r.get("local"))
        m.setdefault("loaded", r.get("loaded"))
        m["pressure_blocked"] = m["id"] in blocked
    return {"source": source, "models": models}


def _cell(v, fmt: str = "{}", none: str = "-") -> str:
    return none if v is None else fmt.format(v)


def render_models_status(doc: dict) -> str:
    head = (f"{'MODEL':<24} {'PROVIDER':<12} {'HEALTH':<7} {'BREAKER':<10} {'P50 MS':>8} "
            f"{'P95 MS':>8} {'ERR %':>6} {'INFL':>5} {'LOCAL':<6}{'LOADED':<7}")
    lines = [head]
    for m in doc["models"]:
        health = "ok" if m.get("healthy") else "DOWN" if m.get("healthy") is False else "?"
        err = m.get("error_rate")
        local = m.get("local")
        loaded = m.get("loaded")
        lines.append(
            f"{m['id']:<24} {_cell(m.get('provider')):<12} {health:<7} "
            f"{_cell(m.get('breaker')):<10} {_cell(m.get('latency_p50_ms'), '{:.0f}'):>8} "
            f"{_cell(m.get('latency_p95_ms'), '{:.0f}'):>8} "
            f"{_cell(None if err is None else err * 100, '{:.1f}'):>6} "
            f"{_cell(m.get('in_flight')):>5} {'yes' if local else 'no' if local is False else '-':<6}"
            f"{'yes' if loaded else 'no' if loaded is False else '-':<7}"
            + ("  (masked: memory pressure)" if m.get("pressure_blocked") else ""))
    lines.append(f"source: {doc['source']}")
    return "\n".join(lines)


def local_snapshot(proc_root: str = "/proc") -> dict:
    """What a ResourceMonitor on this host sees now (no server, no model probes)."""
    from .resources import ResourceMonitor, ResourcesConfig
    mon = ResourceMonitor(ResourcesConfig(proc_root=proc_root), lambda: [], lambda: ())
    mon.sample()
    return mon.snapshot()


def render_resources(doc: dict) -> str:
    p, mem = doc["pressure"], doc["memory"]
    state = "HIGH — " + "; ".join(p["reasons"]) if p["high"] else "none"
    lines = [f"memory pressure: {state}"]
    if p.get("since_s") is not None:
        lines[0] += f" (for {p['since_s']:.1f} s)"
    if mem.get("total_mb") is not None:
        lines.append(f"memory: {mem['available_mb']:.0f} MB available of {mem['total_mb']:.0f} MB "
                     f"({mem['available_pct']:.1f}%)")
    cpu = doc.get("cpu") or {}
    if cpu.get("load"):
        lines.append(f"cpu: load {' '.join(f'{x:.2f}' for x in cpu['load'])} (1/5/15 min) on "
                     f"{cpu.get('count') or '?'} cores")
    psi = doc.get("psi")
    lines.append("psi: not available on this kernel (MemAvailable decides)" if psi is None else
                 f"psi: some {p['some_pct']:.1f}% full {p['full_pct']:.1f}% over the last sample "
                 f"(avg10 some {psi['some_avg10']:.2f}% full {psi['full_avg10']:.2f}%)")
    local = [m for m in doc.get("models", []) if m.get("local")]
    if local:
        lines.append(f"{'LOCAL MODEL':<24} {'MEMORY MB':>10} {'LOADED':<7}")
        for m in local:
            loaded = m.get("loaded")
            lines.append(f"{m['id']:<24} {_cell(m.get('memory_mb') or None, '{:.0f}'):>10} "
                         f"{'yes' if loaded else 'no' if loaded is False else '-':<7}")
    lines.append("masked now: " + (", ".join(doc["blocked"]) if doc.get("blocked") else "nothing"))
    for name, s in (doc.get("servers") or {}).items():
        detail = (f"ready={s.get('ready')}" if "ready" in s else f"holds {s.get('held')}") \
            if s.get("reachable") else f"unreachable ({s.get('error')})"
        if "slots" in s:
            detail += f", slots {s['slots_busy']}/{s['slots']} busy"
        lines.append(f"server {name} ({s.get('kind', '?')}): {detail}")
    return "\n".join(lines)


def _base(args) -> str:
    return "http://" + (args.target or "127.0.0.1:8470")


def cmd_models_status(args) -> int:
    from .cli import EXIT_OK
    doc = fetch_models_status(_base(args), args.api_key, args.timeout)
    print(json.dumps(doc) if args.json else render_models_status(doc))
    return EXIT_OK


def cmd_resources(args) -> int:
    from .cli import EXIT_OK
    if args.local:
        doc = local_snapshot(args.proc_root)
    else:
        doc = get_json(_base(args), RESOURCES_PATH, args.api_key, args.timeout)
    print(json.dumps(doc) if args.json else render_resources(doc))
    return EXIT_OK


def failed_checks(checks: dict, targets: dict) -> str:
    """`atp health`'s one line on what failed: which transport, at which address, and how."""
    bad = [f"{name} at {targets.get(name, '?')}: {state}" for name, state in checks.items()
           if state != "SERVING"]
    ok = [name for name, state in checks.items() if state == "SERVING"]
    return ("failed: " + "; ".join(bad) + (f" ({', '.join(ok)} serving)" if ok else ""))


def guarded(fn):
    """HttpFailure/connection errors -> one line on stderr and exit 1 (a request error)."""
    def run(args) -> int:
        from .cli import EXIT_REQUEST
        try:
            return fn(args)
        except HttpFailure as exc:
            print(f"atp: {exc} (HTTP {exc.status})", file=sys.stderr)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            print(f"atp: cannot reach {_base(args)}: {reason}", file=sys.stderr)
        return EXIT_REQUEST
    return run


def add_commands(sub, models_parser, formatter) -> None:
    """Register `atp resources` and the `status` action of `atp models`."""
    models_parser.add_argument("action", nargs="?", choices=("status",),
                               help="status: per model health, breaker, latency, error rate, "
                                    "local/loaded (HTTP REST API; --target is the HTTP address)")
    models_parser.add_argument("--timeout", type=float, default=5.0,
                               help="seconds for each HTTP call of `status` (default 5)")
    r = sub.add_parser("resources", formatter_class=formatter,
                       help="host memory pressure and local model servers",
                       description="What resource-aware routing sees: memory pressure (PSI, "
                                   "MemAvailable), local models and\nwhether they are loaded, and "
                                   "the models masked now (GET /api/v1/ai/resources/metrics).",
                       epilog="examples:\n  atp resources\n  atp resources --target 10.0.0.5:8470 "
                              "--json\n  atp resources --local          # this host's /proc, no "
                              "server")
    r.add_argument("--target", metavar="HOST:PORT", help="the server's HTTP address "
                                                         "(default 127.0.0.1:8470)")
    import os
    from . import config as atp_config
    r.add_argument("--api-key", default=os.environ.get("ATP_API_KEY", atp_config.DEV_API_KEY),
                   help="API key (default: $ATP_API_KEY, else the dev key)")
    r.add_argument("--local", action="store_true", help="read this host's /proc, no server")
    r.add_argument("--proc-root", default="/proc", help=argparse_suppress())
    r.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    r.add_argument("--json", action="store_true", help="print one JSON document")
    r.set_defaults(func=guarded(cmd_resources))


def argparse_suppress():
    import argparse
    return argparse.SUPPRESS
