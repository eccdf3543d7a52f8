"""`atp top`: the dashboard's numbers live in a terminal, over the server's /dashboard/ws (or one JSON snapshot).

It redraws the screen (ANSI home + clear) at each snapshot the server pushes, about once a second.
`--json` prints one snapshot from GET /dashboard/snapshot and exits. The server needs
`[dashboard] enabled = true`; the token (when one guards it) comes from --token or
$ATP_DASHBOARD_TOKEN.
"""
import argparse
import asyncio
import json
import os
import shutil
import sys
import time

_RAW = argparse.RawDescriptionHelpFormatter
# Colours by status, as the dashboard: only when writing to a terminal (NO_COLOR turns them off).
_COLOUR = {"green": "\x1b[32m", "yellow": "\x1b[33m", "red": "\x1b[31m"}
_RESET = "\x1b[0m"
_HOME_CLEAR = "\x1b[H\x1b[2J"


class TopError(Exception):
    pass


def render(s: dict, width: int = 100, colour: bool = False) -> str:
    """One screen of text from a live snapshot (live.LiveStats.snapshot())."""
    def paint(text: str, status: str) -> str:
        return f"{_COLOUR[status]}{text}{_RESET}" if colour and status in _COLOUR else text
    r, lat, err, cost, sav, q = (s["requests"], s["latency_ms"], s["errors"], s["cost"],
                                 s["savings"], s["queue"])
    share = err["window"] / r["window"] if r["window"] else 0.0
    err_status = "red" if share > 0.05 else "yellow" if share > 0.01 else "green"
    lines = [
        f"ATP top — {time.strftime('%H:%M:%S', time.localtime(s['time']))}  uptime {s['uptime_s']:.0f}s  "
        f"window {s['window_s']}s",
        "",
        f"requests/s {r['per_s']:>9.1f}   total {r['total']:>9}   in flight {q.get('inflight', 0):>4}   "
        f"queued {q.get('queued', 0):>4}",
        f"latency ms p50 {lat['p50']:>8.1f}   p95 {lat['p95']:>8.1f}   p99 {lat['p99']:>8.1f}",
        paint(f"errors     {err['window']:>9} (window)   total {err['total']:>9}   "
              + " ".join(f"{k}={v}" for k, v in err["by_code"].items()), err_status),
        f"cost/hour  ${cost['per_hour_usd']:>10.4f}   total ${cost['total_usd']:.6f}   "
        f"saved ${sav['total_usd']:.4f}" + (f" ({sav['pct']:.1f}%)" if sav["baseline_model_priced"] else ""),
        "",
        f"{'MODEL':<24} {'BREAKER':<10} {'IN FLIGHT':>9} {'P50 MS':>8} {'P95 MS':>8} {'ERR%':>6} {'MIX':>6}",
    ]
    mix = s.get("routing_mix", {})
    for m in s["models"]:
        row = (f"{m['model'][:24]:<24} {m['breaker']:<10} {m['inflight']:>9} {m['latency_p50_ms']:>8.1f} "
               f"{m['latency_p95_ms']:>8.1f} {100 * m['error_rate']:>6.1f} {mix.get(m['model'], 0):>6}")
        lines.append(paint(row, m["status"]))
    if s["events"]:
        lines += ["", "RECENT EVENTS"]
        for e in s["events"][:8]:
            detail = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("time", "event"))
            lines.append(f"{time.strftime('%H:%M:%S', time.localtime(e['time']))} {e['event']:<24} {detail}")
    return "\n".join(line[:width] if not colour else line for line in lines)


def _url(target: str) -> str:
    return target if target.startswith(("http://", "https://")) else f"http://{target}"


def _headers(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _snapshot(url: str, token: str, timeout: float) -> dict:
    import aiohttp
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
        async with s.get(url + "/dashboard/snapshot", headers=_headers(token)) as r:
            if r.status == 404:
                raise TopError(f"{url} has no dashboard: set [dashboard] enabled = true")
            if r.status == 401:
                raise TopError(f"{url}/dashboard needs its token: --token or $ATP_DASHBOARD_TOKEN")
            if r.status != 200:
                raise TopError(f"{url}/dashboard/snapshot answered HTTP {r.status}")
            return await r.json()


async def _watch(url: str, token: str, out, colour: bool, count: int) -> None:
    import aiohttp
    async with aiohttp.ClientSession() as s:
        try:
            ws = await s.ws_connect(url + "/dashboard/ws", headers=_headers(token), heartbeat=30)
        except aiohttp.WSServerHandshakeError as exc:
            raise TopError({404: f"{url} has no dashboard: set [dashboard] enabled = true",
                            401: f"{url}/dashboard needs its token: --token or $ATP_DASHBOARD_TOKEN"}
                           .get(exc.status, f"{url}/dashboard/ws: HTTP {exc.status}")) from None
        shown = 0
        async with ws:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                width = shutil.get_terminal_size((100, 40)).columns
                out.write(_HOME_CLEAR + render(json.loads(msg.data), width, colour) + "\n")
                out.flush()
                shown += 1
                if count and shown >= count:
                    return
        raise TopError(f"{url}: the server closed the dashboard feed")


def cmd_top(args) -> int:
    url = _url(args.target)
    token = args.token or os.environ.get("ATP_DASHBOARD_TOKEN", "")
    try:
        if args.json:
            print(json.dumps(asyncio.run(_snapshot(url, token, args.timeout))))
            return 0
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        asyncio.run(_watch(url, token, sys.stdout, colour, args.count))
    except TopError as exc:
        print(f"atp: {exc}", file=sys.stderr)
        return 1
    return 0


def add_commands(sub) -> None:
    t = sub.add_parser("top", formatter_class=_RAW, help="live terminal view of the dashboard's numbers",
                       description="Requests/s, latency percentiles, errors, cost per hour, savings, "
                                   "per-model breaker state and\nrecent events, redrawn about once a "
                                   "second from the server's /dashboard/ws.\nThe server needs "
                                   "[dashboard] enabled = true. Ctrl-C quits.",
                       epilog="examples:\n  atp top\n  atp top --target 10.0.0.5:8470 --token $TOKEN\n"
                              "  atp top --json | jq .requests")
    t.add_argument("--target", default="127.0.0.1:8470", metavar="HOST:PORT",
                   help="the server's HTTP address (default 127.0.0.1:8470)")
    t.add_argument("--token", default="", help="the dashboard token (default $ATP_DASHBOARD_TOKEN)")
    t.add_argument("--json", action="store_true", help="print one snapshot as JSON and exit")
    t.add_argument("--count", type=int, default=0, help="exit after this many screens (default: run until Ctrl-C)")
    t.add_argument("--timeout", type=float, default=5.0, help="seconds for --json (default 5)")
    t.set_defaults(func=cmd_top)
