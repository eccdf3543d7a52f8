"""Smoke of the peer-comparison machinery (bench/peers): nginx + bare proxy + wrk, about a second each.

Needs no big installs (no LiteLLM, no Portkey). nginx and wrk come from Debian: the harness tries
`apt-get install` itself, and the tests skip with the reason when that is impossible. Asserts
correctness only (answers arrive, every body is the upstream's, processes are gone afterwards),
never timing.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux (/proc, taskset)")

from bench.peers import nginx as nginx_mod  # noqa: E402
from bench.peers import proc as procfs  # noqa: E402
from bench.peers import upstream, wrk  # noqa: E402
from bench.peers.base import Ctx, MeasureSpec  # noqa: E402
from bench.peers.common import Unavailable, probe  # noqa: E402
from bench.peers.targets import TARGETS, wrk_measure  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tools():
    try:
        nginx_mod.install()
        wrk.install()
    except Unavailable as e:
        pytest.skip(f"nginx/wrk unavailable and not installable here: {e}")


@pytest.fixture(scope="module")
def upstream_nginx(tools, tmp_path_factory):
    n = nginx_mod.Nginx(directory=tmp_path_factory.mktemp("nginx"))
    n.start()
    try:
        yield n
    finally:
        n.stop()
        assert n.proc.stopped(), "nginx still running after stop()"


def test_nginx_answers_the_fixed_completion(upstream_nginx):
    status, body = probe("127.0.0.1", upstream_nginx.port, "/v1/chat/completions")
    assert status == 200
    assert json.loads(body) == upstream.COMPLETION
    status, body = probe("127.0.0.1", upstream_nginx.port, "/v1/models", body=None)
    assert status == 200 and json.loads(body)["data"][0]["id"] == upstream.MODEL


def test_wrk_direct_counts_good_answers(upstream_nginx):
    r = wrk.run(f"{upstream_nginx.base_url}/chat/completions", duration_s=1, connections=4)
    assert r["requests"] > 0
    assert r["non2xx"] == 0 and r["bad_bodies"] == 0 and r["socket_errors"] == 0
    assert set(r["latency_ms"]) >= {"p50", "p90", "p99", "p99.9"}


def test_wrk_verifier_catches_wrong_answers(upstream_nginx):
    # 200 without the marker: a gateway answering something else fast must not count as a result
    r = wrk.run(f"{upstream_nginx.base_url}/models", duration_s=1, connections=2)
    assert r["requests"] > 0 and r["bad_bodies"] == r["responses"] and r["non2xx"] == 0
    r = wrk.run(f"http://127.0.0.1:{upstream_nginx.port}/nowhere", duration_s=1, connections=2)
    assert r["requests"] > 0 and r["non2xx"] == r["responses"]
    assert r["first_bad"].startswith("404")


def test_bare_proxy_target_passes_the_upstream_through(upstream_nginx):
    ctx = Ctx(upstream_nginx, gateway_core=None, load_core=None, tag="smoke")
    running = TARGETS["bare"].start(ctx)
    try:
        pids = procfs.tree_pids(running.pids[0])
        before = procfs.sample(running.pids)
        r = wrk_measure(running, MeasureSpec(1, 4, None))
        usage = procfs.delta(before, procfs.sample(running.pids))
    finally:
        running.stop()
    assert r["requests"] > 0
    assert r["non2xx"] == 0 and r["bad_bodies"] == 0
    assert usage["cpu_s"] > 0 and usage["peak_rss_mb"] > 0
    assert running.stopped()
    assert not any(procfs.is_running(p) for p in pids)


def test_cli_end_to_end(tools, tmp_path):
    out = tmp_path / "peers.json"
    env = {**os.environ, "ATP_BENCH_PEERS_DIR": str(tmp_path / "work")}
    r = subprocess.run([sys.executable, "-m", "bench", "peers", "--only", "nginx,bare", "--duration", "1",
                        "--warmup", "0", "--rounds", "1", "--settle", "0", "--connections", "4",
                        "--json", str(out), "--markdown"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "| target |" in r.stdout
    result = json.loads(out.read_text())
    assert [s["target"] for s in result["summary"]] == ["nginx", "bare"]
    for row in result["rows"]:
        assert "error" not in row, row
        assert row["requests"] > 0 and row["non2xx"] == 0 and row["bad_bodies"] == 0, row
        assert row["stopped"], row
        assert not any(procfs.is_running(p) for p in row["pids"]), row
    assert not procfs.is_running(result["nginx_pid"])
    assert {"nginx", "wrk", "python"} <= set(result["versions"])


def test_proc_accounting_reads_own_tree():
    s = procfs.sample([os.getpid()])
    assert os.getpid() in s.pids and s.cpu_s > 0 and s.hwm_kb > 0
    assert procfs.affinity(os.getpid()) != "?"
