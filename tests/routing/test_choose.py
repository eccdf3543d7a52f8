"""choose(): masks, objectives, reasons, confidence, aliases, the predictor, both kernel twins."""
import math
from dataclasses import replace

import numpy as np
import pytest

from atp_server.routing import scoring
from atp_server.routing.choose import choose
from atp_server.routing.config import RoutingConfig
from atp_server.routing.health import HealthBoard, Outcome, finished
from atp_server.routing.report import Scored, report
from atp_server.routing.spec import ModelSpec
from atp_server.routing.table import Alias, build_table
from atp_server.types import AtpError, ChatRequest
from codec.errors import ErrorCode

TWINS = [k for k in (scoring.NUMPY, scoring.NUMBA) if k is not None]
MODELS = [
    ModelSpec("a", "p", "a", 0.1, 0.2, 4096, frozenset({"chat"}), 0.5, 100),
    ModelSpec("b", "p", "b", 1.0, 2.0, 32768, frozenset({"chat", "tools"}), 0.75, 400),
    ModelSpec("c", "p", "c", 5.0, 15.0, 131072, frozenset({"chat", "tools", "vision"}), 0.95, 900),
]
GREEDY = RoutingConfig(bandit="greedy")


@pytest.fixture(params=TWINS, ids=lambda k: k.name)
def twin(request):
    return request.param


def table(models=MODELS, health=None, policy=GREEDY, **kw):
    return build_table(models, health or HealthBoard(), policy=policy, **kw)


def pick(twin, t=None, now=0.0, seed=0, text="hi", **kw):
    return choose(ChatRequest([("user", text)], **kw), t or table(), now,
                  np.random.default_rng(seed), impl=twin)


def trip(health, model_id, now):
    for _ in range(health.threshold):
        health.report(model_id, finished(Outcome.FAULT, probe=False), now)


# ---- masks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("tier,expected", [("fast", "a"), ("high", "c")])
def test_tier_decides_the_winner(twin, tier, expected):
    d = pick(twin, tier=tier)
    assert d.model == expected
    assert set(d.fallbacks) == {"a", "b", "c"} - {expected}
    assert f"objective tier {tier}" in d.reasons[1]


def test_capabilities_mask_and_reasons(twin):
    d = pick(twin, capabilities=("vision",))
    assert d.model == "c" and d.fallbacks == ()
    assert any("a (lacks vision)" in r for r in d.reasons)


def test_unknown_capability_is_no_route(twin):
    with pytest.raises(AtpError) as info:
        pick(twin, capabilities=("telepathy",))
    assert info.value.code == ErrorCode.NO_ROUTE and "lacks telepathy" in info.value.message


def test_context_window_mask(twin):
    d = pick(twin, text="x" * 40_000, tier="fast")     # 10k tokens: a's 4k window is out
    assert d.model == "b" and "a (context 4096 too small)" in d.reasons[-1]


def test_max_cost_mask_and_no_route(twin):
    assert pick(twin, tier="high", max_cost_usd=0.001, max_tokens=100).model in ("a", "b")
    with pytest.raises(AtpError) as info:
        pick(twin, max_cost_usd=0.0, max_tokens=100)
    assert info.value.code == ErrorCode.NO_ROUTE and "over max_cost_usd" in info.value.message


def test_latency_slo_mask_uses_the_p95(twin):
    t = table()
    assert pick(twin, t, tier="high", latency_slo_ms=500).model == "b"
    t.stats.lat_p95[1] = 600.0          # b got slow: nothing fits but a
    assert pick(twin, t, tier="high", latency_slo_ms=500).model == "a"


def test_pinned_and_unknown_model(twin):
    d = pick(twin, model="b")
    assert d.model == "b" and d.reasons[0] == "pinned by request"
    assert d.confidence == pytest.approx(0.75)          # its predicted quality, not a constant
    with pytest.raises(AtpError) as info:
        pick(twin, model="ghost")
    assert info.value.code == ErrorCode.UNKNOWN_MODEL


def test_open_breaker_removes_a_model_until_cooldown(twin):
    health = HealthBoard(threshold=2, cooldown_s=10)
    t = table(health=health)
    trip(health, "c", now=100.0)
    d = pick(twin, t, now=101.0, tier="high")
    assert d.model != "c" and "c (circuit open)" in d.reasons[-1]
    assert pick(twin, t, now=111.0, tier="high").model == "c"


def test_pinned_open_circuit_is_unavailable_with_retry_after(twin):
    health = HealthBoard(threshold=1, cooldown_s=10)
    t = table(health=health)
    trip(health, "b", now=100.0)
    with pytest.raises(AtpError) as info:
        pick(twin, t, now=103.0, model="b")
    assert info.value.code == ErrorCode.UNAVAILABLE and info.value.retry_after_ms == 7000


def test_every_circuit_open_is_unavailable_at_the_earliest_half_open(twin):
    health = HealthBoard(threshold=1, cooldown_s=10)
    t = table(health=health)
    for now, m in ((0.0, "a"), (2.0, "b"), (4.0, "c")):
        trip(health, m, now)
    with pytest.raises(AtpError) as info:
        pick(twin, t, now=5.0)
    assert info.value.code == ErrorCode.UNAVAILABLE and info.value.retry_after_ms == 5000


def test_mixed_exclusion_is_unavailable_request_only_is_no_route(twin):
    health = HealthBoard(threshold=1, cooldown_s=10)
    t = table(health=health)
    trip(health, "c", now=0.0)
    with pytest.raises(AtpError) as info:
        pick(twin, t, now=1.0, capabilities=("vision",))
    err = info.value
    assert err.code == ErrorCode.UNAVAILABLE and err.retry_after_ms == 9000
    assert "a (lacks vision)" in err.message and "c (circuit open)" in err.message
    for kw in ({"max_cost_usd": 0.0, "max_tokens": 100}, {"model": "a", "capabilities": ("tools",)}):
        with pytest.raises(AtpError) as info:
            pick(twin, t, now=1.0, **kw)
        assert info.value.code == ErrorCode.NO_ROUTE, kw


def test_choose_is_a_pure_read(twin):
    health = HealthBoard(threshold=1, cooldown_s=10)
    t = table(health=health, policy=RoutingConfig(bandit="thompson"))
    trip(health, "c", now=0.0)
    before = t.stats.S.copy(), {k: (c.state, c.failures) for k, c in health.circuits.items()}
    for now in (1.0, 10.0, 100.0):
        pick(twin, t, now=now, tier="high")
    assert (t.stats.S == before[0]).all()
    assert {k: (c.state, c.failures) for k, c in health.circuits.items()} == before[1]


# ---- objectives -------------------------------------------------------------------------------

def test_explicit_trade_offs(twin):
    assert pick(twin, cost_weight=0.0).model == "c"            # quality at any price
    assert pick(twin, cost_weight=1e9).model == "a"            # cheapest
    d = pick(twin, min_quality=0.7)
    assert d.model == "b" and "cheapest with quality >= 0.7" in d.reasons[1]
    assert pick(twin, min_quality=0.99).model == "c"           # none reaches it: the best


def test_objective_from_metadata_and_its_errors(twin):
    assert pick(twin, metadata={"cost_weight": "0"}).model == "c"
    assert pick(twin, metadata={"min_quality": "0.7"}).model == "b"
    for bad in ({"cost_weight": "lots"}, {"min_quality": "nan"}, {"min_quality": "2"},
                {"cost_weight": "-1"}, {"cost_weight": "0", "min_quality": "0.5"}):
        with pytest.raises(AtpError) as info:
            pick(twin, metadata=bad)
        assert info.value.code == ErrorCode.INVALID_REQUEST, bad


def test_confidence_is_the_posterior_probability_and_learns(twin):
    t = table()
    d0 = pick(twin, t, tier="high")
    assert d0.model == "c" and d0.confidence == pytest.approx(0.95)
    for _ in range(60):
        report(t, Scored("c", 0.0), 0.0)    # c keeps failing the quality target
    d1 = pick(twin, t, tier="high")
    assert d1.model != "c"
    assert d1.confidence == pytest.approx(0.75) if d1.model == "b" else True


# ---- exploration, regret, twins ---------------------------------------------------------------

def _twin_models(n, rng):
    return [ModelSpec(f"m{i}", "p", f"m{i}", float(rng.uniform(0, 5)), float(rng.uniform(0, 15)),
                      int(rng.choice([4096, 32768])), frozenset({"chat"} | ({"tools"} if i % 3 else set())),
                      float(rng.uniform(0.2, 0.95)), float(rng.uniform(50, 900))) for i in range(n)]


@pytest.mark.skipif(scoring.NUMBA is None, reason="numba not installed: one twin only")
@pytest.mark.parametrize("bandit", ["greedy", "thompson", "ucb"])
def test_twins_decide_identically_for_a_fixed_seed(bandit):
    rng = np.random.default_rng(7)
    models = _twin_models(16, rng)
    t = table(models, policy=RoutingConfig(bandit=bandit))
    t.stats.succ[:] = rng.uniform(0, 30, 16)
    t.stats.fail[:] = rng.uniform(0, 30, 16)
    t.stats.answers[:] = 40
    for i in range(200):
        kw = {"tier": ("fast", "balanced", "high")[i % 3]}
        if i % 5 == 0:
            kw["min_quality"] = float(rng.uniform(0.3, 0.9))
        if i % 7 == 0:
            kw["capabilities"] = ("tools",)
        out = [choose(ChatRequest([("user", "q" * (i % 50 + 1))], **kw), t, 0.0,
                      np.random.default_rng(i), impl=impl) for impl in (scoring.NUMPY, scoring.NUMBA)]
        assert out[0][:7] == out[1][:7], (i, kw)
        assert out[0].trace.regret == out[1].trace.regret


def test_thompson_explores_greedy_does_not(twin):
    twins = [ModelSpec("x", "p", "x", 1.0, 1.0, quality=0.6), ModelSpec("y", "p", "y", 1.0, 1.0, quality=0.55)]
    greedy = table(twins)
    ts = table(twins, policy=RoutingConfig(bandit="thompson"))
    g = {pick(twin, greedy, seed=s).model for s in range(50)}
    picks = [pick(twin, ts, seed=s) for s in range(200)]
    assert g == {"x"}
    assert {d.model for d in picks} == {"x", "y"}
    # picking y gives up 0.05 of posterior-mean quality: that is the regret the pick reports
    regrets = [d.trace.regret if d.model == "y" else -d.trace.regret for d in picks]
    assert all(r == pytest.approx(0.05) for r in regrets if r > 0) and min(regrets) == 0.0
    assert all(pick(twin, greedy, seed=s).trace.regret == 0 for s in range(10))


def test_ucb_prefers_the_less_tried_model(twin):
    twins = [ModelSpec("x", "p", "x", 1.0, 1.0, quality=0.6), ModelSpec("y", "p", "y", 1.0, 1.0, quality=0.6)]
    t = table(twins, policy=RoutingConfig(bandit="ucb"))
    t.stats.succ[0], t.stats.fail[0], t.stats.answers[0] = 60.0, 40.0, 100   # x: mean 0.6, well known
    assert pick(twin, t).model == "y"


# ---- aliases ----------------------------------------------------------------------------------

def aliased(*aliases, health=None):
    return table(health=health, aliases=aliases)


def test_ordered_alias_is_its_chain_minus_the_masked(twin):
    health = HealthBoard(threshold=1, cooldown_s=10)
    t = aliased(Alias("smart", ("c", "b", "a"), max_attempts=2), health=health)
    d = pick(twin, t, model="smart")
    assert (d.model, d.fallbacks, d.max_attempts) == ("c", ("b", "a"), 2)
    assert d.reasons[0].startswith("alias smart (ordered")
    trip(health, "c", 0.0)
    d = pick(twin, t, now=1.0, model="smart", capabilities=("tools",))
    assert (d.model, d.fallbacks) == ("b", ())
    assert "c (circuit open)" in d.reasons[-1] and "a (lacks tools)" in d.reasons[-1]


def test_weighted_alias_draws_the_first_pick_by_weight(twin):
    t = aliased(Alias("mix", ("a", "b"), mode="weighted", weights=(3.0, 1.0)))
    rng = np.random.default_rng(0)
    firsts = [choose(ChatRequest([("user", "hi")], model="mix"), t, 0.0, rng, impl=twin).model
              for _ in range(2000)]
    share = firsts.count("a") / len(firsts)
    assert 0.72 <= share <= 0.78                      # 0.75 ± 3.5 standard errors
    d = choose(ChatRequest([("user", "hi")], model="mix"), t, 0.0, rng, impl=twin)
    assert set((d.model,) + d.fallbacks) == {"a", "b"}


def test_routed_alias_chooses_among_its_members_with_its_objective(twin):
    t = aliased(Alias("good", ("b", "c"), mode="routed", min_quality=0.7))
    d = pick(twin, t, model="good")
    assert d.model == "b" and d.fallbacks == ("c",) and "cheapest with quality >= 0.7" in d.reasons[2]
    t = aliased(Alias("best", ("a", "b"), mode="routed", tier="high"))
    assert pick(twin, t, model="best").model == "b"


# ---- the trained router -----------------------------------------------------------------------

def test_trained_router_supplies_quality_and_cost(trained, synthetic):
    """Any model set: the synthetic file has 12 models with their own names; a table model the
    router was not trained on keeps its prior."""
    names = trained.models
    specs = [ModelSpec(n, "p", n, quality=0.1) for n in names] + [ModelSpec("extra", "p", "x", quality=0.99)]
    t = table(specs, predictor=trained)
    prompt = synthetic[1].prompts[0]
    q, c = trained.predict(prompt)
    for impl in TWINS:
        d = choose(ChatRequest([("user", prompt)], cost_weight=0.0), t, 0.0,
                   np.random.default_rng(0), impl=impl)
        if d.model == "extra":
            assert d.confidence == pytest.approx(0.99)
        else:
            j = names.index(d.model)
            assert d.confidence == pytest.approx(q[j]) and d.estimated_cost_usd == pytest.approx(c[j])
            assert q[j] >= q.max() - 1e-12
        assert "quality from trained router" in d.reasons[1]
    lam = trained.tiers["balanced"]
    d = choose(ChatRequest([("user", prompt)]), t, 0.0, np.random.default_rng(0))
    assert f"cost_weight {lam:g} learned" in d.reasons[1]
    assert not math.isnan(d.confidence)


def test_tier_weights_from_config(twin):
    from atp_server.routing.config import DEFAULT_TIERS, TierWeights
    policy = replace(GREEDY, tiers={**DEFAULT_TIERS, "balanced": TierWeights(0.0, 0.0)})
    assert DEFAULT_TIERS["balanced"].cost_weight is None
    assert pick(twin, table(policy=policy)).model == "c"


def test_a_pinned_model_gets_the_trained_routers_estimate(trained, synthetic):
    names = trained.models
    t = table([ModelSpec(n, "p", n, quality=0.1) for n in names], predictor=trained)
    prompt = synthetic[1].prompts[3]
    q, c = trained.predict(prompt)
    d = choose(ChatRequest([("user", prompt)], model=names[2]), t, 0.0, np.random.default_rng(0))
    assert d.model == names[2] and d.confidence == pytest.approx(q[2])
    assert d.estimated_cost_usd == pytest.approx(c[2])
