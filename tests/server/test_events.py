"""events.py: the bus, log events under their event names, edge-triggered thresholds, and the
publish points in policy, limits and the router's champion/challenger verdicts."""
import asyncio
import dataclasses

import pytest

from atp_server import config as atp_config
from atp_server import events
from atp_server.app import App
from atp_server.logs import event as log_event
from atp_server.routing.champion import Verdict
from atp_server.stages.limits import LimitEvent
from atp_server.types import AtpError, ChatRequest
from codec.errors import ErrorCode

from .helpers import make_config
from .test_policy import holder, who


@pytest.fixture
def seen():
    got = []
    unsubscribe = events.BUS.subscribe(lambda name, fields: got.append((name, fields)))
    yield got
    unsubscribe()


def test_no_subscriber_means_publish_does_nothing():
    assert events.BUS.subscribers == []
    events.publish("model.failed", model="m")        # nothing to call, nothing raised


def test_log_events_are_published_under_their_event_names(seen):
    log_event("failover", request_id="r1", tenant="t", failed="m1", code="UNAVAILABLE")
    log_event("circuit", model="m1", state="open", was="closed")
    log_event("circuit", model="m1", state="half_open", was="open")    # not an opened/closed edge
    log_event("circuit", model="m1", state="closed", was="probing")
    log_event("drain", grace_s=5)
    assert seen == [("model.failed", {"model": "m1", "code": "UNAVAILABLE", "request_id": "r1", "tenant": "t"}),
                    ("breaker.opened", {"model": "m1", "was": "closed"}),
                    ("breaker.closed", {"model": "m1", "was": "probing"}),
                    ("drain", {"grace_s": 5})]


def test_a_failing_subscriber_does_not_stop_the_others(seen):
    def broken(name, fields):
        raise RuntimeError("bug")
    unsubscribe = events.BUS.subscribe(broken)
    try:
        events.publish("model.failed", model="m")
    finally:
        unsubscribe()
    assert seen == [("model.failed", {"model": "m"})]


def test_thresholds_fire_once_per_crossing(seen):
    values = {"p": 0.5, "c": 1.0}
    t = events.Thresholds(events.EventsConfig(cost_per_hour_usd=10.0, pressure=0.9),
                          lambda: values["p"], lambda: values["c"])
    t.check()
    values.update(p=0.95, c=12.0)
    t.check()
    t.check()                           # still high: no second event
    values.update(p=0.1, c=1.0)
    t.check()
    values.update(p=1.0)
    t.check()
    assert [n for n, _ in seen] == ["resource.pressure_high", "cost.threshold_exceeded", "resource.pressure_high"]
    assert seen[1][1] == {"cost_per_hour_usd": 12.0, "threshold": 10.0}
    # two things raise resource.pressure_high: admission here, host memory in resources.py
    assert seen[0][1] == {"source": "admission", "admission_pressure": 0.95, "threshold": 0.9}


def test_events_config_errors_name_the_key():
    with pytest.raises(atp_config.ConfigError, match="events.pressure"):
        atp_config.loads(atp_config.DEFAULT_TOML + "[events]\npressure = 1.5\n")
    with pytest.raises(atp_config.ConfigError, match="events.colour"):
        atp_config.loads(atp_config.DEFAULT_TOML + "[events]\ncolour = 1\n")


def test_policy_denial_is_published(seen, tmp_path):
    models = list(make_config(tmp_path).models)
    h = holder(models, '[[rules]]\nid = "no-acme"\neffect = "deny"\nwhen.tenant = ["acme"]\n')
    with pytest.raises(AtpError) as err:
        h.enforce(h.decide(who(), ChatRequest([("user", "hi")]), "http"), "req-7")
    assert err.value.code == ErrorCode.POLICY_DENIED
    assert seen[0][0] == "policy.denied" and seen[0][1]["rule"] == "no-acme" and seen[0][1]["request_id"] == "req-7"


def test_money_limits_publish_budget_and_cost_events(seen):
    events._limit_event(LimitEvent("daily", "usd_per_day", "tenant", "acme", "hard", 5.0, 5.0))
    events._limit_event(LimitEvent("daily", "usd_per_day", "tenant", "acme", "soft", 4.1, 5.0))
    events._limit_event(LimitEvent("rpm", "requests_per_min", "tenant", "acme", "hard", 60, 60))   # not money
    assert [n for n, _ in seen] == ["budget.exhausted", "cost.threshold_exceeded"]
    assert seen[0][1]["subject"] == "acme" and seen[0][1]["allowed_usd"] == 5.0


def test_router_verdicts_are_published_and_the_earlier_callback_still_runs(tmp_path):
    cfg = make_config(tmp_path)
    cfg = dataclasses.replace(cfg, dashboard=dataclasses.replace(cfg.dashboard, enabled=True))
    app = App(cfg, audit_path=str(tmp_path / "audit.sqlite"))
    earlier = []
    app.router.on_verdict = earlier.append
    wiring = events.install(app)

    async def go():
        await wiring.start()
        try:
            app.router.on_verdict(Verdict("promote", "challenger-x", 200, 0.8, 0.7, "SPRT"))
            app.router.on_verdict(Verdict("rollback", "challenger-y", 150, 0.5, 0.7, "SPRT"))
            app.router.on_verdict(Verdict("keep", "challenger-z", 150, 0.7, 0.7, "SPRT"))
            log_event("failover", request_id="r", tenant="t", failed="m", code="UNAVAILABLE")
        finally:
            await wiring.stop()
    asyncio.run(go())
    assert [v.action for v in earlier] == ["promote", "rollback", "keep"]
    names = [e["event"] for e in app.live.events]
    assert names == ["router.promoted", "router.rolled_back", "model.failed"]
    assert events.BUS.subscribers == []          # stop() unsubscribed
