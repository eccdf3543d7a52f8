"""Router: masks (capabilities, context, cost, SLO, breaker), tier scoring, reasons, fallbacks."""
import itertools

import pytest

from atp_server.routing.spec import ModelSpec
from atp_server.routing.health import Action, HealthBoard, Outcome, Signal, finished
from atp_server.routing.router import RANKED_CACHE, Router
from atp_server.types import TIERS, AtpError, ChatRequest
from codec.errors import ErrorCode

MODELS = [
    ModelSpec("fast", "p", "fast", 0.1, 0.2, 4096, frozenset({"chat"}), 0.5, 100),
    ModelSpec("mid", "p", "mid", 1.0, 2.0, 32768, frozenset({"chat", "tools"}), 0.75, 400),
    ModelSpec("big", "p", "big", 5.0, 15.0, 131072, frozenset({"chat", "tools", "vision"}), 0.95, 900),
]


def choose(**kw):
    return Router(MODELS).choose(ChatRequest([("user", "hi")], **kw), now=0.0)


@pytest.mark.parametrize("tier,expected", [("fast", "fast"), ("high", "big")])
def test_tier_decides_the_winner(tier, expected):
    d = choose(tier=tier)
    assert d.model == expected
    assert set(d.fallbacks) == {m.id for m in MODELS} - {expected}


def test_capabilities_mask_and_reasons():
    d = choose(capabilities=("vision",))
    assert d.model == "big" and d.fallbacks == ()
    assert any("fast (lacks vision)" in r for r in d.reasons)


def test_context_window_mask():
    d = Router(MODELS).choose(ChatRequest([("user", "x" * 40_000)], tier="fast"), 0.0)
    assert d.model != "fast"


def test_max_cost_mask_and_no_route():
    d = choose(tier="high", max_cost_usd=0.001, max_tokens=100)
    assert d.model in ("fast", "mid")
    with pytest.raises(AtpError) as info:
        choose(max_cost_usd=0.0, max_tokens=100)
    assert info.value.code == ErrorCode.NO_ROUTE and "over max_cost_usd" in info.value.message


def test_latency_slo_mask():
    assert choose(tier="high", latency_slo_ms=500).model == "mid"


def test_pinned_model_and_unknown_model():
    assert choose(model="mid").model == "mid"
    with pytest.raises(AtpError) as info:
        choose(model="ghost")
    assert info.value.code == ErrorCode.UNKNOWN_MODEL


def trip(health, model_id, now):
    """Upstream faults until the model's circuit opens."""
    for _ in range(health.threshold):
        health.report(model_id, finished(Outcome.FAULT, probe=False), now)


def test_open_breaker_removes_a_model_until_cooldown():
    health = HealthBoard(threshold=2, cooldown_s=10)
    router = Router(MODELS, health)
    trip(health, "big", now=100.0)
    assert router.choose(ChatRequest([("user", "x")], tier="high"), 101.0).model != "big"
    assert router.choose(ChatRequest([("user", "x")], tier="high"), 111.0).model == "big"


def test_cached_ranking_is_not_used_while_a_circuit_is_open():
    health = HealthBoard(threshold=1, cooldown_s=10)
    router = Router(MODELS, health)
    req = ChatRequest([("user", "x")], tier="high")
    assert router.choose(req, 0.0).model == "big"          # cached: all circuits closed
    trip(health, "big", now=1.0)
    assert router.choose(req, 2.0).model != "big"          # the cache must not hide the failure
    assert health.report("big", Signal.DISPATCH, 11.0) is Action.PROBE
    health.report("big", finished(Outcome.OK, probe=True), 11.0)
    assert router.choose(req, 12.0).model == "big"


def test_choose_is_a_pure_read():
    health = HealthBoard(threshold=1, cooldown_s=10)
    router = Router(MODELS, health)
    trip(health, "big", now=0.0)
    before = {k: (c.state, c.failures, c.opened_at) for k, c in health.circuits.items()}
    for now in (1.0, 10.0, 100.0, 10_000.0):
        router.choose(ChatRequest([("user", "x")], tier="high"), now)
    assert {k: (c.state, c.failures, c.opened_at) for k, c in health.circuits.items()} == before


# ---- no route: the request's fault (4xx) or the upstreams' health (retryable 503) -------------------

def test_pinned_model_with_open_circuit_is_unavailable_with_retry_after():
    health = HealthBoard(threshold=1, cooldown_s=10)
    router = Router(MODELS, health)
    trip(health, "mid", now=100.0)
    with pytest.raises(AtpError) as info:
        router.choose(ChatRequest([("user", "x")], model="mid"), 103.0)
    err = info.value
    assert err.code == ErrorCode.UNAVAILABLE and err.retryable
    assert err.retry_after_ms == 7000 and "circuit open" in err.message


def test_every_circuit_open_is_unavailable_at_the_earliest_half_open():
    health = HealthBoard(threshold=1, cooldown_s=10)
    router = Router(MODELS, health)
    for now, m in ((0.0, "fast"), (2.0, "mid"), (4.0, "big")):
        trip(health, m, now)
    with pytest.raises(AtpError) as info:
        router.choose(ChatRequest([("user", "x")]), 5.0)
    assert info.value.code == ErrorCode.UNAVAILABLE and info.value.retry_after_ms == 5000


def test_mixed_exclusion_request_and_health_is_unavailable():
    health = HealthBoard(threshold=1, cooldown_s=10)
    router = Router(MODELS, health)
    trip(health, "big", now=0.0)                   # the only vision model is down
    with pytest.raises(AtpError) as info:
        router.choose(ChatRequest([("user", "x")], capabilities=("vision",)), 1.0)
    err = info.value
    assert err.code == ErrorCode.UNAVAILABLE and err.retry_after_ms == 9000
    assert "fast: lacks vision" in err.message and "big: circuit open" in err.message


def test_excluded_by_the_request_alone_stays_no_route():
    health = HealthBoard(threshold=1, cooldown_s=10)
    router = Router(MODELS, health)
    trip(health, "fast", now=0.0)                  # unrelated: fast lacks vision anyway
    for req in (ChatRequest([("user", "x")], capabilities=("vision", "telepathy")),
                ChatRequest([("user", "x")], max_cost_usd=0.0, max_tokens=100),
                ChatRequest([("user", "x")], model="fast", capabilities=("tools",))):
        with pytest.raises(AtpError) as info:
            router.choose(req, 1.0)
        assert info.value.code == ErrorCode.NO_ROUTE and not info.value.retryable, req


# ---- the ranking cache is keyed on normalised, bounded input ----------------------------------------

def test_capability_order_and_duplicates_share_one_cache_entry():
    router = Router(MODELS)
    for caps in (("tools", "chat"), ("chat", "tools"), ("tools", "chat", "tools"), ["chat", "tools"]):
        assert router.choose(ChatRequest([("user", "x")], capabilities=caps), 0.0).model == "mid"
    assert len(router._ranked) == 1


def test_unknown_capabilities_match_no_model_and_are_not_cached():
    router = Router(MODELS)
    for i in range(1000):
        with pytest.raises(AtpError) as info:
            router.choose(ChatRequest([("user", "x")], capabilities=(f"cap-{i}",)), 0.0)
        assert info.value.code == ErrorCode.NO_ROUTE
    assert "cap-999" in info.value.message
    assert len(router._ranked) == 0


def test_ranking_cache_is_bounded_whatever_clients_send():
    names = tuple(f"c{i}" for i in range(12))
    wide = [ModelSpec(f"m{i}", "p", f"m{i}", 1.0 + i, 1.0, 8192, frozenset(("chat",) + names), 0.5, 100)
            for i in range(3)]
    router = Router(wide)
    distinct = 0
    for r in range(1, 5):                       # 793 known capability sets x 3 tiers: 2,379 keys
        for caps in itertools.combinations(names, r):
            for tier in TIERS:
                router.choose(ChatRequest([("user", "x")], tier=tier, capabilities=caps), 0.0)
                distinct += 1
    assert distinct > RANKED_CACHE
    assert len(router._ranked) <= RANKED_CACHE
    # 1,000 distinct raw tuples (repeats, orders) of two known names: one entry.
    router = Router(wide)
    for i in range(1000):
        caps = ("chat",) * (i % 7 + 1) + ("c3",) * (i // 7 + 1)
        caps = caps[::-1] if i % 2 else caps
        assert router.choose(ChatRequest([("user", "x")], capabilities=caps), 0.0).model
    assert len(router._ranked) == 1
