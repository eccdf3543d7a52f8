"""`atp top` against a live server: --json prints one snapshot; the live view, run under tmux, shows
numbers that change as traffic arrives (read back with capture-pane)."""
import json
import os
import re
import subprocess
import sys
import time
import uuid

import pytest
import requests

from atp_server import config as atp_config
from atp_server.cli_top import render

from .transport.conftest import ServerHarness, server_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "clients")]), "NO_COLOR": "1"}
TOKEN = "dashboard-token-0123456789"
AUTH = {"Authorization": f"Bearer {atp_config.DEV_API_KEY}"}


@pytest.fixture
def server(tmp_path):
    extra = f'\n[dashboard]\nenabled = true\ntoken = "{TOKEN}"\n'
    harness = ServerHarness(server_config(tmp_path, extra), str(tmp_path / "audit.sqlite"))
    harness.start(grpc=False, quic=False)
    yield harness
    harness.stop()
    harness.close()


def _chat(port: int, n: int) -> None:
    with requests.Session() as s:
        for _ in range(n):
            r = s.post(f"http://127.0.0.1:{port}/v1/chat/completions", headers=AUTH, timeout=30,
                       json={"model": "sim-fast", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200


def _atp(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atp_server", *args], env=ENV, capture_output=True,
                          text=True, timeout=60, **kw)


def test_json_prints_one_snapshot(server):
    port = server.ports.http
    _chat(port, 2)
    out = _atp("top", "--target", f"127.0.0.1:{port}", "--token", TOKEN, "--json")
    assert out.returncode == 0, out.stderr
    snap = json.loads(out.stdout)
    assert snap["requests"]["total"] == 2 and snap["routing_mix"] == {"sim-fast": 2}


def test_a_wrong_token_and_a_server_without_dashboard_are_clear_errors(server, tmp_path):
    out = _atp("top", "--target", f"127.0.0.1:{server.ports.http}", "--token", "wrong-token-xxxxxxxx", "--json")
    assert out.returncode == 1 and "needs its token" in out.stderr
    out = _atp("top", "--target", f"127.0.0.1:{server.ports.http}", "--count", "1")
    assert out.returncode == 1 and "needs its token" in out.stderr


def test_render_shows_each_model_and_colours_only_when_asked():
    snap = {"time": 0, "uptime_s": 5, "window_s": 60,
            "requests": {"total": 7, "window": 7, "per_s": 1.4},
            "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0},
            "errors": {"total": 1, "window": 1, "by_code": {"UNAVAILABLE": 1}},
            "cost": {"total_usd": 0.001, "window_usd": 0.001, "per_hour_usd": 0.72},
            "savings": {"baseline_model_priced": False, "total_usd": 0, "window_usd": 0, "pct": 0},
            "routing_mix": {"m1": 6}, "queue": {"inflight": 0, "queued": 0, "pressure": 0},
            "models": [{"model": "m1", "provider": "p", "breaker": "open", "status": "red", "inflight": 0,
                        "answers": 6, "latency_p50_ms": 1, "latency_p95_ms": 2, "error_rate": 0.5}],
            "events": [{"time": 0, "event": "breaker.opened", "model": "m1"}]}
    plain = render(snap)
    assert "total         7" in plain and "UNAVAILABLE=1" in plain and "breaker.opened" in plain
    assert re.search(r"^m1\s+open\s+0", plain, re.M) and "\x1b[" not in plain
    assert "\x1b[31m" in render(snap, colour=True)


def _screen(sock: str) -> str:
    return subprocess.run(["tmux", "-L", sock, "capture-pane", "-p", "-t", "top"], capture_output=True,
                          text=True, check=True).stdout


def _wait_screen(sock: str, pattern: str, timeout: float = 20.0) -> re.Match:
    """Poll the pane until `pattern` appears (tmux offers no event for 'the screen shows X')."""
    deadline = time.monotonic() + timeout
    while True:
        found = re.search(pattern, screen := _screen(sock))
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} never appeared; the screen:\n{screen}")
        time.sleep(0.1)


def test_top_under_tmux_shows_numbers_that_change(server):
    port = server.ports.http
    sock = f"atp-top-{uuid.uuid4().hex[:8]}"
    command = (f"env PYTHONPATH={ENV['PYTHONPATH']} NO_COLOR=1 {sys.executable} -m atp_server top "
               f"--target 127.0.0.1:{port} --token {TOKEN}")
    subprocess.run(["tmux", "-L", sock, "new-session", "-d", "-s", "top", "-x", "120", "-y", "40", command],
                   check=True)
    try:
        first = _wait_screen(sock, r"requests/s\s+[\d.]+\s+total\s+(\d+)")
        assert first.group(1) == "0"
        assert re.search(r"^sim-fast\s+closed", _screen(sock), re.M)
        _chat(port, 4)
        _wait_screen(sock, r"requests/s\s+[\d.]+\s+total\s+4\b")
        assert re.search(r"^sim-fast\s+closed\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+4\s*$", _screen(sock), re.M)
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)
