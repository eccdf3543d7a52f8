"""Tables: one row per measurement, the overhead suite's medians, the gRPC ratio."""
from __future__ import annotations

import statistics


def _ms(us):
    return None if us is None else us / 1000


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _fmt(v, fmt: str) -> str:
    if v is None:
        return "—"
    return fmt.format(v)


def _waits(srv: dict, cl: dict) -> str:
    a, b = srv.get("core_foreign_share"), cl.get("core_foreign_share")
    return f"{_fmt(a, '{:.0%}')} / {_fmt(b, '{:.0%}')}"


def _errors(e: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(e.items())) if e else "0"


ROW_COLUMNS = ["target", "mode", "conc", "offered/s", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms",
               "srv CPU µs/req", "srv core", "overhead p50/p99 µs", "client CPU µs/req", "client core",
               "peak RSS MB", "foreign CPU srv/cli core", "dropped", "errors"]


def row_cells(r: dict) -> list[str]:
    if "error" in r:
        return [r.get("target", "?"), r.get("mode", "?"), str(r.get("concurrency", "")), "", "failed"] + \
               [""] * (len(ROW_COLUMNS) - 6) + [r["error"].splitlines()[0][:80]]
    lat, srv, cl, ov = r["latency_us"], r["server"], r["client"], r.get("gateway_overhead_us")
    target = r["target"] + (" (stream)" if r.get("stream") else "") + (" [wrk]" if r.get("driver") == "wrk" else "")
    return [
        target, r["mode"], str(r["concurrency"]), _fmt(r.get("offered_rps"), "{:,.0f}"),
        _fmt(r["achieved_rps"], "{:,.0f}"),
        _fmt(_ms(lat.get("p50")), "{:.3f}"), _fmt(_ms(lat.get("p90")), "{:.3f}"),
        _fmt(_ms(lat.get("p99")), "{:.3f}"), _fmt(_ms(lat.get("p99.9")), "{:.3f}"),
        _fmt(srv.get("cpu_us_per_req"), "{:,.0f}"), _fmt(srv.get("core_util"), "{:.0%}"),
        (f"{ov['p50']:.0f} / {ov['p99']:.0f}" if ov else "—"),
        _fmt(cl.get("cpu_us_per_req"), "{:,.0f}"), _fmt(cl.get("core_util"), "{:.0%}"),
        _fmt(srv.get("peak_rss_mb"), "{:.0f}"), _waits(srv, cl), str(r.get("dropped", 0)), _errors(r["errors"]),
    ]


def table(head: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |",
                 "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    w = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = lambda r: "  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r))  # noqa: E731
    return "\n".join([fmt(head)] + [fmt(r) for r in rows])


def rows_table(results: list[dict], markdown: bool) -> str:
    return table(ROW_COLUMNS, [row_cells(r) for r in results], markdown)


# ---- --suite overhead ----------------------------------------------------------------------------

OVERHEAD_COLUMNS = ["transport", "conc", "req/s", "p50 ms", "p99 ms", "srv CPU µs/req", "srv core",
                    "overhead p50 µs", "overhead p99 µs", "client CPU µs/req", "client core",
                    "foreign CPU srv/cli core", "errors", "rounds ok"]


def overhead_summary(results: list[dict], targets: list[str], concs: list[int]) -> list[dict]:
    out = []
    for t in targets:
        for c in concs:
            mine = [r for r in results if r.get("target") == t and r.get("concurrency") == c]
            good = [r for r in mine if "error" not in r]
            s = {"target": t, "concurrency": c, "rounds": len(mine),
                 "rounds_ok": sum(1 for r in good if not r["errors"] and r["ok"] > 0)}
            if good:
                ov = [r["gateway_overhead_us"] for r in good if r.get("gateway_overhead_us")]
                s.update(
                    rps=median([r["achieved_rps"] for r in good]),
                    rps_min=min(r["achieved_rps"] for r in good), rps_max=max(r["achieved_rps"] for r in good),
                    p50_us=median([r["latency_us"]["p50"] for r in good]),
                    p99_us=median([r["latency_us"]["p99"] for r in good]),
                    server_cpu_us_per_req=median([r["server"].get("cpu_us_per_req") for r in good]),
                    server_core_util=median([r["server"].get("core_util") for r in good]),
                    overhead_p50_us=median([o["p50"] for o in ov]),
                    overhead_p99_us=median([o["p99"] for o in ov]),
                    client_cpu_us_per_req=median([r["client"].get("cpu_us_per_req") for r in good]),
                    client_core_util=median([r["client"].get("core_util") for r in good]),
                    server_core_foreign=median([r["server"].get("core_foreign_share") for r in good]),
                    client_core_foreign=median([r["client"].get("core_foreign_share") for r in good]),
                    peak_rss_mb=max((r["server"].get("peak_rss_mb") or 0) for r in good),
                    errors=sum(r["error_count"] for r in good), requests=sum(r["requests"] for r in good))
            failed = [r["error"] for r in mine if "error" in r]
            if failed:
                s["error"] = failed[0]
            out.append(s)
    return out


def overhead_table(summary: list[dict], markdown: bool) -> str:
    rows = []
    for s in summary:
        if "rps" not in s:
            rows.append([s["target"], str(s["concurrency"])] + ["failed"] + [""] * (len(OVERHEAD_COLUMNS) - 4)
                        + [f"{s['rounds_ok']}/{s['rounds']}"])
            continue
        rows.append([s["target"], str(s["concurrency"]), _fmt(s["rps"], "{:,.0f}"),
                     _fmt(_ms(s["p50_us"]), "{:.3f}"), _fmt(_ms(s["p99_us"]), "{:.3f}"),
                     _fmt(s["server_cpu_us_per_req"], "{:,.0f}"), _fmt(s["server_core_util"], "{:.0%}"),
                     _fmt(s["overhead_p50_us"], "{:,.0f}"), _fmt(s["overhead_p99_us"], "{:,.0f}"),
                     _fmt(s["client_cpu_us_per_req"], "{:,.0f}"), _fmt(s["client_core_util"], "{:.0%}"),
                     _waits({"core_foreign_share": s["server_core_foreign"]},
                            {"core_foreign_share": s["client_core_foreign"]}),
                     str(s["errors"]), f"{s['rounds_ok']}/{s['rounds']}"])
    return table(OVERHEAD_COLUMNS, rows, markdown)


# ---- --suite grpc-ratio --------------------------------------------------------------------------

RATIO_COLUMNS = ["ATP / reference", "round", "ATP req/s", "ref req/s", "throughput ATP/ref",
                 "ATP srv µs/req", "ref srv µs/req", "CPU efficiency ref/ATP", "ATP srv/client core",
                 "ref srv/client core", "foreign CPU on srv core ATP/ref"]


def ratio_rows(results: list[dict], pairs: list[tuple[str, str]], rounds: int) -> list[dict]:
    out = []
    for a, b in pairs:
        for rnd in range(1, rounds + 1):
            ra = next((r for r in results if r.get("target") == a and r.get("round") == rnd), None)
            rb = next((r for r in results if r.get("target") == b and r.get("round") == rnd), None)
            row = {"pair": f"{a}/{b}", "round": rnd}
            if ra and rb and "error" not in ra and "error" not in rb:
                ca, cb = ra["server"].get("cpu_us_per_req"), rb["server"].get("cpu_us_per_req")
                row.update(atp_rps=ra["achieved_rps"], ref_rps=rb["achieved_rps"],
                           throughput_ratio=round(ra["achieved_rps"] / rb["achieved_rps"], 3) if rb["achieved_rps"] else None,
                           atp_cpu_us=ca, ref_cpu_us=cb,
                           cpu_ratio=round(cb / ca, 3) if ca and cb else None,
                           atp_client_core=ra["client"].get("core_util"), ref_client_core=rb["client"].get("core_util"),
                           atp_server_core=ra["server"].get("core_util"), ref_server_core=rb["server"].get("core_util"),
                           atp_server_foreign=ra["server"].get("core_foreign_share"),
                           ref_server_foreign=rb["server"].get("core_foreign_share"),
                           ok=not ra["errors"] and not rb["errors"])
            else:
                row["error"] = (ra or {}).get("error") or (rb or {}).get("error") or "missing measurement"
            out.append(row)
        good = [r for r in out if r["pair"] == f"{a}/{b}" and "error" not in r]
        if good:
            out.append({"pair": f"{a}/{b}", "round": "median",
                        **{k: median([r[k] for r in good]) for k in
                           ("atp_rps", "ref_rps", "throughput_ratio", "atp_cpu_us", "ref_cpu_us", "cpu_ratio",
                            "atp_client_core", "ref_client_core", "atp_server_core", "ref_server_core",
                            "atp_server_foreign", "ref_server_foreign")},
                        "ok": all(r["ok"] for r in good)})
    return out


def ratio_table(rows: list[dict], markdown: bool) -> str:
    cells = []
    for r in rows:
        if "error" in r:
            cells.append([r["pair"], str(r["round"]), "failed"] + [""] * (len(RATIO_COLUMNS) - 3))
            continue
        cells.append([r["pair"], str(r["round"]), _fmt(r["atp_rps"], "{:,.0f}"), _fmt(r["ref_rps"], "{:,.0f}"),
                      _fmt(r["throughput_ratio"], "{:.1%}"), _fmt(r["atp_cpu_us"], "{:,.0f}"),
                      _fmt(r["ref_cpu_us"], "{:,.0f}"), _fmt(r["cpu_ratio"], "{:.1%}"),
                      f"{_fmt(r['atp_server_core'], '{:.0%}')} / {_fmt(r['atp_client_core'], '{:.0%}')}",
                      f"{_fmt(r['ref_server_core'], '{:.0%}')} / {_fmt(r['ref_client_core'], '{:.0%}')}",
                      f"{_fmt(r['atp_server_foreign'], '{:.0%}')} / {_fmt(r['ref_server_foreign'], '{:.0%}')}"])
    return table(RATIO_COLUMNS, cells, markdown)
