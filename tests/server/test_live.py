"""live.py: the sliding window's numbers, its bounds, and the hook on a real App's access-log stage."""
import asyncio
import dataclasses
import time

import pytest

from atp_server import config as atp_config
from atp_server.live import BOUNDS, RING_S, LiveStats, parse_dashboard, percentile
from atp_server.auth import Principal
from atp_server.types import ChatRequest, RouteDecision, Usage


def config(tmp_path, extra: str = ""):
    cfg = atp_config.loads(atp_config.DEFAULT_TOML + extra)
    return dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, state_dir=str(tmp_path)))


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


class Ctx:
    """The RequestContext fields record() reads."""

    def __init__(self, elapsed_ms=10.0, code=0, outcome="ok", usage=None, model="m1"):
        self.t0 = time.perf_counter_ns() - int(elapsed_ms * 1e6)
        self.code, self.outcome, self.usage = code, outcome, usage
        self.decision = RouteDecision("p", model, 0.0, 0.0, 1.0) if model else None
        self.request = ChatRequest([("user", "hi")], request_id="r1")
        self.principal = Principal("t", "k", "api_key")


def test_rates_percentiles_errors_and_mix_over_the_window():
    clock = Clock()
    live = LiveStats(clock=clock)
    for i in range(100):
        live.record(Ctx(elapsed_ms=1.0 if i < 90 else 500.0, model="m1" if i % 4 else "m2"))
    live.record(Ctx(code=8, outcome="RATE_LIMITED", model=None))
    clock.t += 1
    snap = live.snapshot()
    assert snap["requests"]["total"] == 101 and snap["requests"]["window"] == 101
    assert snap["requests"]["per_s"] == pytest.approx(101 / 1.0)   # uptime 1 s < RATE_S
    assert 1.0 <= snap["latency_ms"]["p50"] <= 1.15
    assert 500 <= snap["latency_ms"]["p95"] <= 500 * 1.15
    assert snap["errors"] == {"total": 1, "window": 1, "by_code": {"RATE_LIMITED": 1}}
    assert snap["routing_mix"] == {"m1": 75, "m2": 25}


def test_old_seconds_leave_the_window_but_stay_in_the_totals():
    clock = Clock()
    live = LiveStats(clock=clock)
    live.record(Ctx(code=3, outcome="UNAVAILABLE"))
    clock.t += RING_S + 5
    live.record(Ctx())
    snap = live.snapshot()
    assert snap["requests"]["window"] == 1 and snap["requests"]["total"] == 2
    assert snap["errors"]["window"] == 0 and snap["errors"]["total"] == 1
    assert snap["errors"]["by_code"] == {}


def test_cost_per_hour_and_savings_against_the_baseline_prices():
    clock = Clock()
    live = LiveStats(baseline=(10.0, 30.0), clock=clock)   # USD per million tokens in, out
    for _ in range(10):
        live.record(Ctx(usage=Usage(1000, 500, 300)))      # 300 micro-USD each
    clock.t += 10
    snap = live.snapshot()
    assert snap["cost"]["total_usd"] == pytest.approx(0.003)
    assert snap["cost"]["per_hour_usd"] == pytest.approx(0.003 * 3600 / 10)
    baseline = 10 * (1000 * 10.0 + 500 * 30.0) / 1e6      # 0.25 USD
    assert snap["savings"]["total_usd"] == pytest.approx(baseline - 0.003)
    assert snap["savings"]["pct"] == pytest.approx(100 * (baseline - 0.003) / baseline, abs=0.01)


def test_no_baseline_model_means_no_savings():
    live = LiveStats(clock=Clock())
    live.record(Ctx(usage=Usage(1000, 500, 300)))
    snap = live.snapshot()
    assert snap["savings"]["total_usd"] == 0 and not snap["savings"]["baseline_model_priced"]


def test_memory_is_bounded_whatever_the_traffic():
    clock = Clock()
    live = LiveStats(clock=clock)
    for second in range(3 * RING_S):
        clock.t = 1000 + second
        live.record(Ctx(elapsed_ms=1e9))                 # beyond the last bucket: the overflow one
        live.add_event("model.failed", {"model": "m1", "n": second})
    assert len(live.ring) == RING_S
    assert all(len(s.hist) == len(BOUNDS) + 1 for s in live.ring)
    assert len(live.events) == 50 and live.events[-1]["n"] == 3 * RING_S - 1
    assert live.snapshot()["events"][0]["n"] == 3 * RING_S - 1     # newest first


def test_percentile_of_an_empty_and_a_single_bucket_histogram():
    assert percentile([], 0, 0.5) == 0.0
    hist = [0] * (len(BOUNDS) + 1)
    hist[10] = 5
    assert percentile(hist, 5, 0.99) == BOUNDS[10]


def test_dashboard_config_errors_name_the_key():
    fail_keys = []

    def fail(key, problem):
        fail_keys.append(key)
        raise atp_config.ConfigError(f"{key}: {problem}")
    with pytest.raises(atp_config.ConfigError, match="dashboard.token: must be at least 16"):
        parse_dashboard({"token": "short"}, fail)
    with pytest.raises(atp_config.ConfigError, match="dashboard.colour"):
        parse_dashboard({"colour": "red"}, fail)
    with pytest.raises(atp_config.ConfigError, match="dashboard.enabled"):
        atp_config.loads(atp_config.DEFAULT_TOML + '[dashboard]\nenabled = "yes"\n')
    assert atp_config.loads(atp_config.DEFAULT_TOML + "[dashboard]\nenabled = true\n").dashboard.enabled


def test_an_app_with_the_dashboard_feeds_live_stats_once_per_request(tmp_path):
    asyncio.run(_feeds_live_stats(tmp_path))


async def _feeds_live_stats(tmp_path):
    from atp_server.app import App
    from atp_server.auth import Principal
    from atp_server.types import ChatRequest
    cfg = config(tmp_path, '[dashboard]\nenabled = true\n[costs]\nbaseline_model = "sim-high"\n')
    app = App(cfg, audit_path=str(tmp_path / "audit.sqlite"))
    principal = Principal("t", "k", "api_key")
    for _ in range(3):
        await app.pipeline.complete(ChatRequest([("user", "hello")], model="sim-fast"), principal, "http")
    snap = app.live.snapshot()
    assert snap["requests"]["total"] == 3
    assert snap["routing_mix"] == {"sim-fast": 3}
    assert snap["cost"]["total_usd"] > 0 and snap["savings"]["total_usd"] > 0
    assert {m["model"] for m in snap["models"]} >= {"sim-fast", "sim-high"}
    assert all(m["breaker"] == "closed" for m in snap["models"])
    assert snap["queue"]["inflight"] == 0
    await app.stop(0)


def test_without_the_dashboard_the_hook_is_absent(tmp_path):
    from atp_server.app import App
    cfg = config(tmp_path)
    app = App(cfg, audit_path=str(tmp_path / "audit.sqlite"))
    assert app.live is None
    assert all(getattr(s, "live", None) is None for s in app.pipeline.chain.stages)
