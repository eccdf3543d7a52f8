"""Router: masks (capabilities, context, cost, SLO, breaker), tier scoring, reasons, fallbacks."""
import pytest

from atp_server.adapters.base import ModelSpec
from atp_server.routing.health import CLOSED, HALF_OPEN, OPEN, Breaker, HealthBoard
from atp_server.routing.router import Router
from atp_server.types import AtpError, ChatRequest
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


def test_open_breaker_removes_a_model_until_cooldown():
    health = HealthBoard(threshold=2, cooldown_s=10)
    router = Router(MODELS, health)
    for _ in range(2):
        health.record_failure("big", now=100.0)
    assert router.choose(ChatRequest([("user", "x")], tier="high"), 101.0).model != "big"
    assert router.choose(ChatRequest([("user", "x")], tier="high"), 111.0).model == "big"


def test_breaker_table():
    b = Breaker(failure_threshold=2, cooldown_s=5)
    assert b.allows(0) and b.state == CLOSED
    b.on_failure(0)
    b.on_failure(1)
    assert b.state == OPEN and not b.allows(2)
    assert b.allows(6) and b.state == HALF_OPEN
    b.on_dispatch()
    assert not b.allows(6)          # one probe at a time
    b.on_failure(7)
    assert b.state == OPEN
    assert b.allows(12)
    b.on_success()
    assert b.state == CLOSED and b.failures == 0


def test_cached_ranking_is_not_used_while_a_circuit_is_open():
    health = HealthBoard(threshold=1, cooldown_s=10)
    router = Router(MODELS, health)
    req = ChatRequest([("user", "x")], tier="high")
    assert router.choose(req, 0.0).model == "big"          # cached: all circuits closed
    health.record_failure("big", now=1.0)
    assert router.choose(req, 2.0).model != "big"          # the cache must not hide the failure
    health.record_success("big")
    assert router.choose(req, 3.0).model == "big"
