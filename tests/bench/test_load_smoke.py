"""Smoke of the load generator (`python -m bench load`, bench/load) and the bare gRPC echo.

Every transport for about a second against a server the command starts itself: asserts
correctness only (requests done, no errors, the JSON carries its keys, the server is gone
afterwards), never timing.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux (/proc, taskset)")

from bench.load.hist import Histogram  # noqa: E402
from bench.peers import proc as procfs  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
KEYS = {"target", "mode", "concurrency", "duration_s", "requests", "ok", "errors", "error_count",
        "achieved_rps", "latency_us", "gateway_overhead_us", "server", "client", "histogram"}


def run_load(tmp_path, *args, timeout=120):
    out = tmp_path / "load.json"
    env = {**os.environ, "ATP_BENCH_LOAD_DIR": str(tmp_path / "work")}
    r = subprocess.run([sys.executable, "-m", "bench", "load", *args, "--duration", "1", "--warmup", "0.3",
                        "--quiet", "--json", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.exists(), r.stdout + r.stderr
    return r, json.loads(out.read_text())


def check_result(res: dict, *, overhead: bool = True) -> None:
    assert "error" not in res, res.get("error")
    assert KEYS <= set(res), KEYS - set(res)
    assert res["ok"] > 0 and res["requests"] == res["ok"], res
    assert res["errors"] == {} and res["error_count"] == 0, res["error_samples"]
    assert res["latency_us"]["count"] == res["ok"]
    assert {"p50", "p90", "p99", "p99.9"} <= set(res["latency_us"])
    assert (res["gateway_overhead_us"] is not None) == overhead
    srv = res["server"]
    assert srv["accounted"] and srv["cpu_s"] > 0 and srv["peak_rss_mb"] > 0
    assert srv["stopped"] is True
    assert not any(procfs.is_running(p) for p in srv["pids"])


@pytest.mark.parametrize("target", ["grpc", "session", "quic", "http"])
def test_closed_loop_each_transport(tmp_path, target):
    r, doc = run_load(tmp_path, "--target", target, "--concurrency", "4", "--markdown")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "| target |" in r.stdout
    [res] = doc["results"]
    check_result(res)
    assert res["target"] == target and res["mode"] == "closed"


def test_open_loop_and_streaming(tmp_path):
    r, doc = run_load(tmp_path, "--target", "grpc", "--mode", "open", "--rate", "200", "--concurrency", "64",
                      "--stream", "--output-tokens", "4")
    assert r.returncode == 0, r.stdout + r.stderr
    [res] = doc["results"]
    check_result(res)
    # Every scheduled arrival is either sent or counted as dropped (the in-flight cap was full):
    # how many drop depends on how fast the machine is, so only the accounting is asserted.
    assert res["offered_rps"] == 200
    assert res["sent"] + res["dropped"] == 200          # 200 rps over the 1 s measured window
    assert res["sent"] == res["requests"]
    assert res["send_lag_us"]["count"] == res["ok"] and res["ttft_us"]["count"] == res["ok"]


@pytest.mark.parametrize("target", ["grpc-echo", "session-echo"])
def test_bare_grpc_echo(tmp_path, target):
    r, doc = run_load(tmp_path, "--target", target, "--concurrency", "4", "--connections", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    [res] = doc["results"]
    check_result(res, overhead=False)


def test_suite_grpc_ratio_runs(tmp_path):
    r, doc = run_load(tmp_path, "--suite", "grpc-ratio", "--rounds", "1", "--concurrency", "4", "--settle", "0",
                      timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [x["target"] for x in doc["results"]] == ["grpc", "grpc-echo"]
    for res in doc["results"]:
        check_result(res, overhead=res["target"] == "grpc")
    median = doc["ratios"][-1]
    assert median["round"] == "median" and median["throughput_ratio"] > 0 and median["cpu_ratio"] > 0


def test_probe_reports_failure_without_server(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bench", "load", "--target", "http", "--server", "127.0.0.1:1",
                        "--probe"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "probe failed" in r.stdout


def test_histogram_percentiles():
    h = Histogram()
    for v in range(1, 10001):
        h.record(v)
    s = h.summary()
    assert s["count"] == 10000 and s["min"] == 1 and s["max"] == 10000
    for p, exact in ((50, 5000), (90, 9000), (99, 9900), (99.9, 9990)):
        assert abs(s[f"p{p:g}"] - exact) / exact < 0.01, (p, s)
    small = Histogram()
    for v in (3, 3, 7):
        small.record(v)
    assert small.percentile(50) == 3 and small.percentile(100) == 7
    assert Histogram.from_json(h.to_json()).n == h.n


def test_peers_atp_grpc_target(tmp_path):
    """bench/peers' atp-grpc target: ATP typed gRPC -> nginx, measured by this load client."""
    from bench.peers import nginx as nginx_mod
    from bench.peers.base import Ctx, MeasureSpec
    from bench.peers.common import Unavailable
    from bench.peers.targets import TARGETS
    try:
        nginx_mod.install()
    except Unavailable as e:
        pytest.skip(f"nginx unavailable here: {e}")
    n = nginx_mod.Nginx(directory=tmp_path / "nginx")
    n.start()
    try:
        running = TARGETS["atp-grpc"].start(Ctx(n, gateway_core=None, load_core=None, tag="smoke",
                                                log_dir=tmp_path / "logs"))
        try:
            pids = procfs.tree_pids(running.pids[0])
            r = TARGETS["atp-grpc"].measure(running, MeasureSpec(1, 4, None))
        finally:
            running.stop()
    finally:
        n.stop()
    assert r["requests"] > 0 and r["rps"] > 0
    assert r["non2xx"] == 0 and r["bad_bodies"] == 0 and r["socket_errors"] == 0, r
    assert {"p50", "p90", "p99", "p99.9"} <= set(r["latency_ms"])
    assert running.stopped() and not any(procfs.is_running(p) for p in pids)
