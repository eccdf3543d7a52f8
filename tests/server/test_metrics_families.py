"""The families issue 11 lists reach /metrics: time to first token, routing decision time, breaker
states, budget remaining (per subject only behind a scrape token), federation peers and routes."""
import asyncio

from prometheus_client.parser import text_string_to_metric_families

from atp_server.app import App
from atp_server.federation.metrics import FederationCollector
from atp_server.types import AtpError, ChatRequest
from tests.helpers.toml_models import BROKEN_MODEL

from .helpers import PRINCIPAL, make_config

BUDGET = '[[limits]]\nname = "daily"\nusd_per_day = 5.0\n'


def samples(app) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(app.metrics.render().decode())
            for s in fam.samples}


def run(app, *requests, stream: bool = False):
    async def main():
        for r in requests:
            try:
                if stream:
                    [_ async for _ in app.pipeline.stream(r, PRINCIPAL, "http")]
                else:
                    await app.pipeline.complete(r, PRINCIPAL, "http")
            except AtpError:
                pass
        await app.stop(0)
    asyncio.run(main())


def test_time_to_first_token_and_decision_time_are_histograms(tmp_path):
    app = App(make_config(tmp_path))
    run(app, ChatRequest([("user", "hi")]), ChatRequest([("user", "again")]), stream=True)
    got = samples(app)
    assert got[("atp_time_to_first_token_seconds_count", (("transport", "http"),))] == 2
    assert got[("atp_time_to_first_token_seconds_sum", (("transport", "http"),))] > 0
    assert got[("atp_routing_decision_seconds_count", ())] == 2
    assert 0 < got[("atp_routing_decision_seconds_sum", ())] < 1


def test_each_models_breaker_state_is_one_gauge_per_state(tmp_path):
    app = App(make_config(tmp_path, extra=BROKEN_MODEL))
    run(app, *[ChatRequest([("user", "x")], model="sim-broken") for _ in range(8)])
    got = samples(app)
    state = {s: got[("atp_breaker_state", (("model", "sim-broken"), ("state", s)))]
             for s in ("closed", "open", "half_open")}
    assert state == {"closed": 0.0, "open": 1.0, "half_open": 0.0}
    assert got[("atp_breaker_state", (("model", "cheap"), ("state", "closed")))] == 1.0


def test_budget_remaining_shows_subjects_only_behind_a_scrape_token(tmp_path):
    def remaining(token: str) -> dict:
        extra = BUDGET + (f'[metrics]\nscrape_token = "{token}"\n' if token else "")
        app = App(make_config(tmp_path / (token or "open"), extra=extra))
        run(app, ChatRequest([("user", "hi")], model="cheap"))
        return {labels: v for (name, labels), v in samples(app).items()
                if name == "atp_budget_remaining_usd"}
    behind = remaining("s" * 20)
    ((labels, usd),) = behind.items()
    assert dict(labels) == {"rule": "daily", "limit": "usd_per_day", "scope": "tenant",
                            "subject": "default"}
    assert 4.99 < usd < 5.0                         # one small request's reservation, spent
    ((labels, usd_open),) = remaining("").items()
    assert dict(labels)["subject"] == "" and usd_open == usd   # the tightest subject, unnamed


def test_federation_families_are_present_before_and_after_start(tmp_path):
    class Node:
        trust = {"B": None, "C": None}

        def status(self, now):
            return {"router_id": "A", "peers": [
                {"router_id": "B", "state": "established"}, {"router_id": "C", "state": "open_sent"}],
                "routes": [{"origin": "A", "best": True, "suppressed": False},
                           {"origin": "B", "best": True, "suppressed": False},
                           {"origin": "C", "best": False, "suppressed": False},
                           {"origin": "C", "best": False, "suppressed": True}]}

    class Link:
        node, clock = Node(), staticmethod(lambda: 0.0)

    class Forwarding:
        remote = {"m": None}

    class AppLike:
        federation, forwarding = None, Forwarding()

    app = AppLike()
    before = {f.name for f in FederationCollector(app).collect()}
    assert before == {"atp_federation_peers", "atp_federation_peer_up", "atp_federation_routes",
                      "atp_federation_remote_models"}
    app.federation = Link()
    got = {(f.name, tuple(s.labels.items())): s.value
           for f in FederationCollector(app).collect() for s in f.samples}
    assert got[("atp_federation_peers", (("state", "established"),))] == 1
    assert got[("atp_federation_peer_up", (("peer", "B"),))] == 1
    assert got[("atp_federation_peer_up", (("peer", "C"),))] == 0
    assert got[("atp_federation_routes", (("standing", "best"),))] == 1      # A's own: not counted
    assert got[("atp_federation_routes", (("standing", "alternate"),))] == 1
    assert got[("atp_federation_routes", (("standing", "suppressed"),))] == 1
    assert got[("atp_federation_remote_models", ())] == 1



def test_per_tenant_series_are_capped_and_the_rest_fold_into_other(tmp_path):
    """[metrics] max_label_values: beyond the cap the tenants with the least spend share one
    `other` series, so the total is kept and the series stay bounded."""
    from atp_server.auth import Principal
    token = "s" * 20
    app = App(make_config(tmp_path, extra=f'[metrics]\nscrape_token = "{token}"\nmax_label_values = 2\n'))

    async def main():
        for i, tenant in enumerate(["a", "b", "c", "d"]):
            for _ in range(4 - i):       # a spends most, d least
                await app.pipeline.complete(ChatRequest([("user", "hi")], model="cheap"),
                                            Principal(tenant, "k", "api_key"), "http")
        await app.stop(0)
    asyncio.run(main())
    spend = {dict(labels)["tenant"]: v for (name, labels), v in samples(app).items()
             if name == "atp_cost_usd_micros_total"}
    assert set(spend) == {"a", "b", "other"}
    by = app.accountant.by_tenant
    assert spend["other"] == by["c"].cost_usd_micros + by["d"].cost_usd_micros


def test_a_bad_label_cap_names_the_key(tmp_path):
    import pytest
    from atp_server.config import ConfigError
    with pytest.raises(ConfigError, match="metrics.max_label_values"):
        make_config(tmp_path, extra="[metrics]\nmax_label_values = 0\n")
