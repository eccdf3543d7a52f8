"""Dispatch: retries with full-jitter backoff, Retry-After, the attempt budget, failover before the
first byte (streams included), cuts after it, and hedging with the loser cancelled and released.

The adapter is scripted per model; `sleep` is injected (backoffs are recorded and return at once,
hedge timers wait on an event the test sets) and the jitter rng is seeded: nothing really sleeps.
"""
import asyncio
import random
from collections import deque
from typing import NamedTuple

import pytest

from atp_server.app import App
from atp_server.dispatch import Caps, DispatchConfig, Plan
from atp_server.routing.health import Signal, State
from atp_server.types import AtpError, ChatRequest, Delta, Done, Finish, Routed, TextDelta
from codec.errors import ErrorCode

from .helpers import PRINCIPAL, make_config


class Sleep:
    """The injected sleep: backoffs are recorded and return at once; a wait of exactly `hedge_s`
    (a hedge timer) blocks until `fire` is set, so the test decides when a hedge starts."""

    def __init__(self, hedge_s: float | None = None):
        self.hedge_s, self.fire = hedge_s, asyncio.Event()
        self.backoffs: list[float] = []

    async def __call__(self, seconds: float) -> None:
        if seconds == self.hedge_s:
            await self.fire.wait()
        else:
            self.backoffs.append(seconds)


class Script:
    """Per model, a queue of what its next calls do (default "ok"): "ok"; an ErrorCode (or a
    (code, retry_after_ms) pair) raised before any token; "hang" (waits on `release`, records a
    cancel); "empty" (ends without a token or Finish); "token-then-error"; "token-then-end"."""

    name = "sim"
    capabilities = frozenset({"chat", "vision"})

    def __init__(self, **plans):
        self.plans = {m: deque(p) for m, p in plans.items()}
        self.calls: list[str] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled: list[str] = []

    async def stream(self, model, request):
        mode = self._next(model.id)
        if mode == "hang":
            await self._hang(model.id)
        elif mode == "empty":
            return
        yield TextDelta(f"{model.id}-1", 1)
        if mode == "token-then-error":
            raise AtpError(ErrorCode.UPSTREAM_ERROR, "died after a token")
        if mode == "token-then-end":
            return
        yield TextDelta(" two", 1)
        yield Finish("stop", 3, 2)

    async def complete(self, model, request):
        mode = self._next(model.id)
        if mode == "hang":
            await self._hang(model.id)
        return f"{model.id} answer", Finish("stop", 3, 2)

    def _next(self, model_id: str):
        self.calls.append(model_id)
        plan = self.plans.get(model_id)
        mode = plan.popleft() if plan else "ok"
        if isinstance(mode, tuple):
            raise AtpError(mode[0], f"scripted {mode[0].name}", retry_after_ms=mode[1])
        if isinstance(mode, ErrorCode):
            raise AtpError(mode, f"scripted {mode.name}")
        return mode

    async def _hang(self, model_id: str):
        self.entered.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(model_id)
            raise

    async def aclose(self):
        return None


def build(tmp_path, adapter: Script, sleep: Sleep | None = None, **dispatch):
    app = App(make_config(tmp_path))
    app.adapters["sim"] = adapter
    app.pipeline.dispatch = DispatchConfig(**dispatch)
    app.pipeline.sleep = sleep or Sleep()
    app.pipeline.rng = random.Random(42)
    return app


async def stream(app, **kw):
    request = ChatRequest([("user", "x")], **kw)
    return [item async for item in app.pipeline.stream(request, PRINCIPAL, "t")]


async def complete(app, **kw):
    return await app.pipeline.complete(ChatRequest([("user", "x")], **kw), PRINCIPAL, "t")


def expected_backoffs(config: DispatchConfig, seed: int, n: int) -> list[float]:
    rng = random.Random(seed)
    return [config.backoff_s(i, rng) for i in range(n)]


# ---- the pure pieces --------------------------------------------------------------------------

def test_full_jitter_stays_within_the_exponential_ceiling_and_the_cap():
    config = DispatchConfig(backoff_base_ms=100, backoff_cap_ms=1000)
    rng = random.Random(7)
    for retry, ceiling_s in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (10, 1.0), (200, 1.0)]:
        draws = [config.backoff_s(retry, rng) for _ in range(2000)]
        assert all(0 <= d < ceiling_s for d in draws)
        # full jitter spreads over the whole interval, not just near its top (equal jitter would)
        assert min(draws) < ceiling_s * 0.05 and max(draws) > ceiling_s * 0.95


def test_jitter_is_deterministic_for_a_seeded_rng():
    config = DispatchConfig()
    assert expected_backoffs(config, 3, 5) == expected_backoffs(config, 3, 5)
    assert expected_backoffs(config, 3, 5) != expected_backoffs(config, 4, 5)


def test_plan_walks_the_chain_then_retries_from_the_top_with_backoff():
    plan = Plan(("a", "b"), 5, DispatchConfig(), random.Random(1))
    steps = [plan.next() for _ in range(6)]
    assert [s[0] for s in steps[:5]] == ["a", "b", "a", "b", "a"] and steps[5] is None
    assert steps[0][1] == steps[1][1] == 0.0          # a fresh model is tried at once
    assert all(s[1] > 0 for s in steps[2:5])


def test_plan_drops_a_refused_model_and_one_asking_to_wait_too_long():
    plan = Plan(("a", "b", "c"), 9, DispatchConfig(max_retry_after_ms=5000), random.Random(1))
    assert [plan.next()[0] for _ in range(3)] == ["a", "b", "c"]
    plan.failed("a", AtpError(ErrorCode.UNAVAILABLE, "circuit open", 3000))
    plan.failed("b", AtpError(ErrorCode.RATE_LIMITED, "slow down", 60_000))
    plan.failed("c", AtpError(ErrorCode.RATE_LIMITED, "slow down", 1500))
    model, wait = plan.next()
    assert model == "c" and wait >= 1.5               # Retry-After is a floor under the jitter


# ---- retries ----------------------------------------------------------------------------------

def test_a_pinned_model_is_retried_with_seeded_backoff_until_it_answers(tmp_path):
    async def main():
        adapter = Script(cheap=[ErrorCode.UPSTREAM_ERROR, ErrorCode.UPSTREAM_TIMEOUT])
        sleep = Sleep()
        app = build(tmp_path, adapter, sleep)
        answer = await complete(app, model="cheap")
        await app.stop(0)
        return answer, adapter.calls, sleep.backoffs
    answer, calls, backoffs = asyncio.run(main())
    assert answer.text == "cheap answer" and calls == ["cheap"] * 3
    assert backoffs == expected_backoffs(DispatchConfig(), 42, 2)
    assert 0 <= backoffs[0] < 0.1 and 0 <= backoffs[1] < 0.2


@pytest.mark.parametrize("code", [ErrorCode.INVALID_REQUEST, ErrorCode.UNKNOWN_MODEL,
                                  ErrorCode.FORBIDDEN])
def test_non_retryable_errors_are_answered_at_once(tmp_path, code):
    async def main():
        adapter = Script(cheap=[code])
        sleep = Sleep()
        app = build(tmp_path, adapter, sleep)
        with pytest.raises(AtpError) as info:
            await stream(app, tier="fast")             # chain: cheap, smart — not tried
        await app.stop(0)
        return info.value, adapter.calls, sleep.backoffs
    err, calls, backoffs = asyncio.run(main())
    assert err.code == code and calls == ["cheap"] and backoffs == []


def test_retry_after_from_the_upstream_is_honoured(tmp_path):
    async def main():
        adapter = Script(cheap=[(ErrorCode.RATE_LIMITED, 1500)])
        sleep = Sleep()
        app = build(tmp_path, adapter, sleep)
        answer = await complete(app, model="cheap")
        await app.stop(0)
        return answer, sleep.backoffs
    answer, backoffs = asyncio.run(main())
    assert answer.text and backoffs == [1.5]


def test_a_retry_after_longer_than_we_wait_goes_back_to_the_client(tmp_path):
    async def main():
        adapter = Script(cheap=[(ErrorCode.RATE_LIMITED, 30_000)])
        sleep = Sleep()
        app = build(tmp_path, adapter, sleep)
        with pytest.raises(AtpError) as info:
            await complete(app, model="cheap")
        await app.stop(0)
        return info.value, adapter.calls, sleep.backoffs
    err, calls, backoffs = asyncio.run(main())
    assert err.code == ErrorCode.RATE_LIMITED and err.retry_after_ms == 30_000 and err.retryable
    assert calls == ["cheap"] and backoffs == []


# ---- the attempt budget ------------------------------------------------------------------------

@pytest.mark.parametrize("budget", [1, 2, 5])
def test_the_configured_budget_bounds_the_upstream_calls(tmp_path, budget):
    async def main():
        adapter = Script(cheap=[ErrorCode.UPSTREAM_ERROR] * 9, smart=[ErrorCode.UPSTREAM_ERROR] * 9)
        app = build(tmp_path, adapter, max_attempts=budget)
        with pytest.raises(AtpError) as info:
            await stream(app, tier="fast")
        await app.stop(0)
        return info.value, adapter.calls
    err, calls = asyncio.run(main())
    assert err.code == ErrorCode.UPSTREAM_ERROR
    assert calls == ["cheap", "smart", "cheap", "smart", "cheap"][:budget]


class AliasDecision(NamedTuple):
    """A RouteDecision as the routing engine may extend it: a per-alias budget appended."""
    provider: str
    model: str
    estimated_cost_usd: float
    estimated_latency_ms: float
    confidence: float
    reasons: tuple = ()
    fallbacks: tuple = ()
    max_attempts: int | None = None


def test_a_decision_carrying_its_own_budget_overrides_the_default(tmp_path):
    async def main():
        adapter = Script(cheap=[ErrorCode.UPSTREAM_ERROR] * 9, smart=[ErrorCode.UPSTREAM_ERROR] * 9)
        app = build(tmp_path, adapter, max_attempts=2)
        route = next(s for s in app.pipeline.chain.stages if s.name == "route")
        route.choose = lambda request, now: AliasDecision("sim", "cheap", 0.0, 1.0, 0.5, (),
                                                          ("smart",), 4)
        with pytest.raises(AtpError):
            await complete(app)
        await app.stop(0)
        return adapter.calls
    assert asyncio.run(main()) == ["cheap", "smart", "cheap", "smart"]


# ---- failover and cuts in streams ----------------------------------------------------------------

@pytest.mark.parametrize("first", ["empty", ErrorCode.UPSTREAM_CUT, ErrorCode.UPSTREAM_TIMEOUT])
def test_a_stream_broken_before_its_first_byte_fails_over(tmp_path, first):
    async def main():
        adapter = Script(cheap=[first])
        app = build(tmp_path, adapter)
        items = await stream(app, tier="fast")
        board = app.router.health.circuits["cheap"].failures
        await app.stop(0)
        return items, adapter.calls, board, app.admission.inflight
    items, calls, cheap_faults, inflight = asyncio.run(main())
    assert calls == ["cheap", "smart"]
    routed = [i.decision.model for i in items if type(i) is Routed]
    assert routed == ["cheap", "smart"]                # the client learns who answers now
    assert [i.text for i in items if type(i) is Delta] == ["smart-1", " two"]
    done = items[-1]
    assert type(done) is Done and done.decision.model == "smart"
    assert any("failed over after cheap:" in r for r in done.decision.reasons)
    assert cheap_faults == 1 and inflight == 0         # the cut counted against cheap only


@pytest.mark.parametrize("mode", ["token-then-error", "token-then-end"])
def test_after_the_first_byte_a_break_is_upstream_cut_never_a_success(tmp_path, mode):
    async def main():
        adapter = Script(cheap=[mode])
        app = build(tmp_path, adapter)
        seen = []
        with pytest.raises(AtpError) as info:
            async for item in app.pipeline.stream(ChatRequest([("user", "x")], tier="fast"),
                                                  PRINCIPAL, "t"):
                seen.append(item)
        await app.stop(0)
        return info.value, seen, adapter.calls
    err, seen, calls = asyncio.run(main())
    assert err.code == ErrorCode.UPSTREAM_CUT and err.retryable
    assert calls == ["cheap"]                          # no other model's text spliced on
    assert [i.text for i in seen if type(i) is Delta] == ["cheap-1"]
    assert not any(type(i) is Done for i in seen)


# ---- hedging ------------------------------------------------------------------------------------

HEDGE_S = 0.25


@pytest.mark.parametrize("call", ["stream", "complete"])
def test_a_hedge_wins_and_the_loser_is_cancelled_and_its_probe_released(tmp_path, call):
    async def main():
        adapter = Script(cheap=["hang"])
        sleep = Sleep(HEDGE_S)
        app = build(tmp_path, adapter, sleep, hedge_after_ms=HEDGE_S * 1000)
        board, clock = app.router.health, app.pipeline.clock
        for _ in range(board.threshold):               # open cheap's circuit, then let it cool
            board.report("cheap", Signal.DISPATCH, clock())
            board.report("cheap", Signal.FAULT, clock())
        board.circuits["cheap"].opened_at -= board.cooldown_s
        task = asyncio.create_task(stream(app, tier="fast") if call == "stream"
                                   else complete(app, tier="fast"))
        await adapter.entered.wait()                   # cheap's call is the probe, and hangs
        probing = board.state("cheap", clock())
        sleep.fire.set()                               # the hedge timer fires: smart starts
        result = await task
        after = (board.state("cheap", clock()), app.admission.inflight, list(adapter.cancelled))
        await app.stop(0)
        return result, probing, after, adapter.calls
    result, probing, after, calls = asyncio.run(main())
    assert probing is State.PROBING and calls == ["cheap", "smart"]
    model = result[-1].decision.model if call == "stream" else result.decision.model
    assert model == "smart"
    # the loser was cancelled, its probe handed back (half-open again, not stuck probing), and
    # the request's admission slot is free
    assert after == (State.HALF_OPEN, 0, ["cheap"])


def test_no_hedge_when_the_first_answers_in_time(tmp_path):
    async def main():
        adapter = Script()
        sleep = Sleep(HEDGE_S)
        app = build(tmp_path, adapter, sleep, hedge_after_ms=HEDGE_S * 1000)
        items = await stream(app, tier="fast")
        await app.stop(0)
        return items, adapter.calls
    items, calls = asyncio.run(main())
    assert calls == ["cheap"] and items[-1].decision.model == "cheap"


def test_hedging_is_only_for_the_configured_tiers(tmp_path):
    async def main():
        adapter = Script(smart=["hang"])
        sleep = Sleep(HEDGE_S)
        app = build(tmp_path, adapter, sleep, hedge_after_ms=HEDGE_S * 1000, hedge_tiers=("fast",))
        task = asyncio.create_task(stream(app, tier="high"))   # high: smart first, no hedge
        await adapter.entered.wait()
        sleep.fire.set()
        for _ in range(20):                            # let any (wrong) hedge start
            await asyncio.sleep(0)
        calls = list(adapter.calls)
        adapter.release.set()
        items = await task
        await app.stop(0)
        return calls, items
    calls, items = asyncio.run(main())
    assert calls == ["smart"] and items[-1].decision.model == "smart"


def test_a_failed_first_attempt_under_hedging_fails_over_at_once(tmp_path):
    async def main():
        adapter = Script(cheap=[ErrorCode.UPSTREAM_ERROR])
        sleep = Sleep(HEDGE_S)                         # the timer never fires in this test
        app = build(tmp_path, adapter, sleep, hedge_after_ms=HEDGE_S * 1000)
        items = await stream(app, tier="fast")
        await app.stop(0)
        return items, adapter.calls
    items, calls = asyncio.run(main())
    assert calls == ["cheap", "smart"] and items[-1].decision.model == "smart"


def test_the_client_leaving_during_a_hedge_cancels_both_attempts(tmp_path):
    async def main():
        adapter = Script(cheap=["hang"], smart=["hang"])
        sleep = Sleep(HEDGE_S)
        app = build(tmp_path, adapter, sleep, hedge_after_ms=HEDGE_S * 1000)
        task = asyncio.create_task(stream(app, tier="fast"))
        await adapter.entered.wait()
        sleep.fire.set()
        while len(adapter.calls) < 2:                  # both out (each step is one loop turn)
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        board = app.router.health
        state = (app.admission.inflight, board.circuits["cheap"].failures,
                 board.circuits["smart"].failures, sorted(adapter.cancelled))
        await app.stop(0)
        return state
    assert asyncio.run(main()) == (0, 0, 0, ["cheap", "smart"])



# ---- per-provider concurrency cap -----------------------------------------------------------------

def test_a_full_concurrency_cap_fails_over_and_never_counts_against_health(tmp_path):
    async def main():
        adapter = Script(cheap=["hang"])
        adapter.max_concurrency = 1                  # both models are on provider "sim"
        app = build(tmp_path, adapter, max_attempts=3)
        app.pipeline.caps = Caps(app.adapters)
        first = asyncio.create_task(stream(app, model="cheap"))
        await adapter.entered.wait()
        with pytest.raises(AtpError) as info:
            await stream(app, tier="fast")            # cheap, smart, cheap: every try finds it full
        calls, caps_held = list(adapter.calls), dict(app.pipeline.caps.inflight)
        adapter.release.set()
        await first
        board = app.router.health
        after = (dict(app.pipeline.caps.inflight), board.all_closed(),
                 {m: c.failures for m, c in board.circuits.items()})
        await app.stop(0)
        return info.value, calls, caps_held, after
    err, calls, caps_held, after = asyncio.run(main())
    assert err.code == ErrorCode.OVERLOADED and err.retryable
    assert calls == ["cheap"] and caps_held == {"sim": 1}   # nothing more was sent upstream
    assert after == ({"sim": 0}, True, {"cheap": 0})      # slot given back; no fault counted


def test_a_cancelled_hedge_gives_its_concurrency_slot_back(tmp_path):
    async def main():
        adapter = Script(cheap=["hang"])
        adapter.max_concurrency = 2
        sleep = Sleep(HEDGE_S)
        app = build(tmp_path, adapter, sleep, hedge_after_ms=HEDGE_S * 1000)
        app.pipeline.caps = Caps(app.adapters)
        task = asyncio.create_task(stream(app, tier="fast"))
        await adapter.entered.wait()
        sleep.fire.set()
        items = await task
        held = dict(app.pipeline.caps.inflight)
        await app.stop(0)
        return items, held
    items, held = asyncio.run(main())
    assert items[-1].decision.model == "smart" and held == {"sim": 0}


# ---- configuration --------------------------------------------------------------------------------

@pytest.mark.parametrize("line,key", [
    ("max_attempts = 0", "routing.max_attempts"), ("max_atempts = 2", "routing.max_atempts"),
    ("hedge_tiers = ['turbo']", "routing.hedge_tiers"), ("backoff_base_ms = -1", "routing.backoff_base_ms"),
    ("hedge_after_ms = 'soon'", "routing.hedge_after_ms"),
])
def test_bad_routing_keys_name_the_key(tmp_path, line, key):
    from atp_server.config import ConfigError
    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, server=f"[routing]\n{line}")
    assert str(info.value).startswith(key + ":")


def test_routing_keys_reach_the_pipeline(tmp_path):
    cfg = make_config(tmp_path, server="[routing]\nmax_attempts = 5\nhedge_after_ms = 300\n"
                                       "hedge_tiers = ['fast', 'balanced']")
    app = App(cfg)
    assert app.pipeline.dispatch == DispatchConfig(max_attempts=5, hedge_after_ms=300.0,
                                                   hedge_tiers=("fast", "balanced"))
    assert app.pipeline.dispatch.hedge_s("balanced") == 0.3 and app.pipeline.dispatch.hedge_s("high") is None
    asyncio.run(app.stop(0))


def test_a_hedge_that_also_answers_is_discarded_not_leaked():
    """Both attempts get their first item in the same loop turn: one wins, the other's result is
    handed to `discard` (which closes its call) instead of being dropped with its call open."""
    from atp_server.dispatch import first_item

    async def main():
        go, started, discarded = asyncio.Event(), [], []
        sleep = Sleep(HEDGE_S)
        sleep.fire.set()                              # every hedge timer fires at once

        async def start(model_id):
            started.append(model_id)
            await go.wait()
            return f"{model_id}-first"

        async def discard(result):
            discarded.append(result)

        task = asyncio.create_task(first_item(("a", "b"), 2, DispatchConfig(), random.Random(1), start,
                                              HEDGE_S, sleep, lambda m, e: None, discard))
        while len(started) < 2:
            await asyncio.sleep(0)
        go.set()
        return await task, discarded
    winner, discarded = asyncio.run(main())
    assert winner == ("a", "a-first") and discarded == ["b-first"]


def test_a_failover_is_logged_once_per_failed_attempt(tmp_path, caplog):
    async def main():
        app = build(tmp_path, Script(cheap=[ErrorCode.UPSTREAM_TIMEOUT]))
        await complete(app, tier="fast", request_id="req-7")
        await app.stop(0)
    with caplog.at_level("INFO", logger="atp.dispatch"):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if r.name == "atp.dispatch"]
    assert len(lines) == 1 and lines[0].startswith("request req-7: cheap failed (UPSTREAM_TIMEOUT")
