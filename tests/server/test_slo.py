"""slo.py: bucketed counters, multiwindow burn rates, alerts with hysteresis, throttling low tiers at admission (injected clock)."""
import asyncio
import logging
import time

import pytest

from atp_server import config as atp_config
from atp_server.admission import Admission
from atp_server.app import App
from atp_server.scheduling import SchedulingConfig
from atp_server.slo import (BUCKET_S, N_BUCKETS, Buckets, SloConfig, SloTracker, burn_rate)
from atp_server.stages.base import RequestContext
from atp_server.types import AtpError, ChatRequest, RouteDecision
from codec.errors import ErrorCode
from tests.server.helpers import PRINCIPAL, make_config

TIERS = SchedulingConfig(tenants={"g": "gold", "s": "silver", "b": "bronze"})


class Clock:
    def __init__(self, now=0.0):
        self.now = now

    def __call__(self):
        return self.now


def ctx(model="m", code=0, elapsed_ms=10.0, routed=True, asked=None):
    c = RequestContext(ChatRequest([("user", "x")], model=asked), PRINCIPAL, "t",
                       time.perf_counter_ns() - int(elapsed_ms * 1e6))
    c.decision = RouteDecision("p", model, 0.0, 0.0, 0.5) if routed else None
    c.code = code
    return c


def feed(tr, clock, minutes, per_min, error_share=0.0, slow_share=0.0, model="m"):
    """`per_min` requests a minute for `minutes`, the given shares failing/slow, evenly spread."""
    err_every = round(1 / error_share) if error_share else 0
    slow_every = round(1 / slow_share) if slow_share else 0
    n = 0
    for _ in range(int(minutes * per_min)):
        n += 1
        clock.now += 60.0 / per_min
        err = bool(err_every) and n % err_every == 0
        slow = bool(slow_every) and n % slow_every == 0
        tr.after(ctx(model, int(ErrorCode.UPSTREAM_ERROR) if err else 0,
                     5000.0 if slow else 10.0), "x")


def test_burn_rate_is_the_bad_share_over_the_budget():
    assert burn_rate(2, 100, 0.999, 20) == pytest.approx(20.0)
    assert burn_rate(1, 1000, 0.999, 20) == pytest.approx(1.0)
    assert burn_rate(5, 10, 0.999, 20) == 0.0          # too few requests to judge
    assert burn_rate(5, 100, 0.0, 20) == 0.0           # no objective


def test_buckets_are_bounded_and_windows_sum_whole_buckets():
    b = Buckets()
    for i in range(N_BUCKETS * 3):                     # 18 h of one request a bucket
        b.add(i * BUCKET_S, i % 2 == 0, False, True)
    assert len(b.total) == N_BUCKETS                   # memory fixed by the longest window
    now = (N_BUCKETS * 3 - 1) * BUCKET_S
    assert b.window(now, 300.0)[0] == 10               # 5 min = 10 buckets of 30 s
    assert b.window(now, 21600.0)[0] == 720
    assert b.window(now + 3600, 300.0)[0] == 0         # an hour later the 5 min window is empty


@pytest.fixture
def events(caplog):
    caplog.set_level(logging.INFO, logger="atp.events")
    return lambda name: [r.fields for r in caplog.records if getattr(r, "fields", {}).get("event") == name]


def test_fast_burn_throttles_bronze_and_silver_and_releases_with_hysteresis(events):
    clock = Clock()
    adm = Admission(4, 4, scheduling=TIERS)
    tr = SloTracker([SloConfig("m", error_objective=0.999)], adm, clock)
    feed(tr, clock, 30, 100, error_share=0.0)          # a clean half hour
    feed(tr, clock, 4, 100, error_share=0.05)          # 5%: 50x over 5 min, but only ~6x over 1 h
    r = tr.routes["m"]
    assert r.burn[("error", 300.0)] > 14.4 and r.burn[("error", 3600.0)] < 14.4
    assert not r.alerts[("error", "fast")] and adm.throttled == frozenset()   # a blip, not a burn
    feed(tr, clock, 30, 100, error_share=0.05)         # sustained: the hour crosses 14.4x too
    assert r.alerts[("error", "fast")] and adm.throttled == {"bronze", "silver"}
    # the slow alert fired first (6x over 30 min and 6 h): bronze, then the fast one added silver
    assert [e["severity"] for e in events("slo.burn")] == ["slow", "fast"]
    assert [e["tiers"] for e in events("slo.throttle")] == [["bronze"], ["bronze", "silver"]]
    # the throttle at admission: bronze and silver refused with a retryable OVERLOADED, gold served
    for tenant in ("b", "s"):
        with pytest.raises(AtpError) as e:
            asyncio.run(adm.acquire(tenant))
        assert e.value.code == ErrorCode.OVERLOADED and e.value.retry_after_ms == 60_000
        assert "throttled to protect an SLO: m error budget burning" in str(e.value)
    asyncio.run(adm.acquire("g"))
    assert adm.inflight == 1
    # errors at 1% over the 5 min window: burn 10, under 14.4 but over the release line (7.2)
    feed(tr, clock, 6, 100, error_share=0.01)
    assert 7.2 <= r.burn[("error", 300.0)] < 14.4 and adm.throttled == {"bronze", "silver"}
    # clean for 6 minutes: the fast alert is released (silver served again); the 30 min window
    # still burns over 6x, so bronze stays shed until that one recovers too
    feed(tr, clock, 6, 100)
    assert not r.alerts[("error", "fast")] and r.alerts[("error", "slow")]
    assert adm.throttled == {"bronze"}
    assert events("slo.recovered")[0]["severity"] == "fast"
    feed(tr, clock, 30, 100)
    assert adm.throttled == frozenset() and events("slo.throttle")[-1]["tiers"] == []


def test_slow_burn_throttles_only_the_first_tier():
    clock = Clock()
    adm = Admission(4, 4, scheduling=TIERS)
    tr = SloTracker([SloConfig("m", error_objective=0.999)], adm, clock)
    feed(tr, clock, 360, 20, error_share=0.008)        # 6 h at 8x: slow, never 14.4x
    r = tr.routes["m"]
    assert r.alerts[("error", "slow")] and not r.alerts[("error", "fast")]
    assert adm.throttled == {"bronze"}


def test_latency_slo_counts_slow_successes_only():
    clock = Clock()
    tr = SloTracker([SloConfig("m", error_objective=0.0, latency_ms=1000, latency_objective=0.99)],
                    None, clock)
    feed(tr, clock, 61, 60, slow_share=0.25)           # 25% slow: 25x on a 1% budget
    r = tr.routes["m"]
    assert r.alerts[("latency", "fast")] and not r.alerts[("error", "fast")]
    assert tr.throttled == {"bronze", "silver"}
    snap = tr.snapshot()
    assert "latency:fast" in snap["routes"]["m"]["alerts"]
    assert snap["routes"]["m"]["burn_rate"]["latency_5m"] == pytest.approx(25.0, rel=0.05)


def test_what_is_counted_and_where():
    clock = Clock()
    tr = SloTracker([SloConfig("fast-alias"), SloConfig("m")], None, clock)
    tr.after(ctx("m", asked="fast-alias"), "ok")                      # both the alias and the model
    tr.after(ctx("m", code=int(ErrorCode.CANCELLED)), "CANCELLED")    # client left: not counted
    tr.after(ctx("m", code=int(ErrorCode.INVALID_REQUEST)), "x")      # counted, not an error
    tr.after(ctx(code=int(ErrorCode.OVERLOADED), routed=False, asked="m"), "x")   # refused first
    tr.after(ctx(code=int(ErrorCode.UNAVAILABLE), routed=False, asked="m"), "x")  # no route: ours
    assert tr.routes["fast-alias"].buckets.window(clock.now, 300.0)[:2] == (1, 0)
    assert tr.routes["m"].buckets.window(clock.now, 300.0)[:2] == (3, 1)


def test_config_and_metrics_through_the_app(tmp_path):
    cfg = make_config(tmp_path, sim_options="failure_rate = 1.0\nlatency_ms = 0",
                      extra='[[slo]]\nroute = "cheap"\nerror_objective = 0.99\nmin_requests = 5\n'
                            '[scheduling.tenants]\ndefault = "bronze"\n')
    assert cfg.slo == (SloConfig("cheap", error_objective=0.99, min_requests=5),)
    app = App(cfg)

    async def main():
        codes = []
        for i in range(12):
            try:
                await app.pipeline.complete(ChatRequest([("user", "x")], model="cheap",
                                                        request_id=f"r{i}"), PRINCIPAL, "t")
            except AtpError as e:
                codes.append(e.code)
            app.slo.next_eval = 0.0     # evaluate after every request (the 1 s pacing aside)
        return codes

    codes = asyncio.run(main())
    assert ErrorCode.OVERLOADED in codes               # the tenant's own bronze tier got throttled
    assert app.admission.throttled == {"bronze", "silver"}
    text = app.metrics.render().decode()
    assert 'atp_slo_alert{route="cheap",severity="fast",sli="error"} 1.0' in text
    assert 'atp_slo_throttled{tier="bronze"} 1.0' in text
    assert app.service.slo.snapshot()["throttled_tiers"] == ["bronze", "silver"]


@pytest.mark.parametrize("extra, message", [
    ('[[slo]]\nroute = "nope"\n', "slo[0].route: must name a model or an alias"),
    ('[[slo]]\nroute = "cheap"\nerror_objective = 1.5\n', "slo[0].error_objective: must be a number in [0, 1)"),
    ('[[slo]]\nroute = "cheap"\nthrottle = ["platinum"]\n', "slo[0].throttle: must list QoS tiers"),
    ('[[slo]]\nroute = "cheap"\nwhatever = 1\n', "slo[0].whatever: unknown key"),
    ('[[slo]]\nroute = "cheap"\n[[slo]]\nroute = "cheap"\n', "slo[1].route: a second [[slo]]"),
    ('[[slo]]\nroute = "cheap"\nerror_objective = 0\n', "slo[0]: sets neither"),
])
def test_config_errors_name_the_key(tmp_path, extra, message):
    with pytest.raises(atp_config.ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)")):
        make_config(tmp_path, extra=extra)


def test_without_slo_the_chain_and_admission_are_unchanged(tmp_path):
    app = App(make_config(tmp_path))
    assert app.slo is None and "slo" not in [s.name for s in app.pipeline.chain.stages]
    assert app.admission.throttled == frozenset()
