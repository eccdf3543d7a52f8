"""Rate limits, concurrency caps and budgets in the pipeline: refusals, retry-after, alerts, and
budgets that hold under concurrent load (many coroutines in memory; several processes on Redis)."""
import asyncio
import dataclasses
import multiprocessing
import time

import pytest

from atp_server import config
from atp_server.app import App
from atp_server.types import AtpError, ChatRequest, Delta, TextDelta, Finish
from codec.errors import ErrorCode
from tests.state.redis_server import RedisServer

from .limits_helpers import PRINCIPAL, audit_spend, hammer, hammer_process, limits_config


def run(coro):
    return asyncio.run(coro)


def request(model="cheap", text="hi", **kw):
    return ChatRequest([("user", text)], model=model, **kw)


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


class GatedAdapter:
    """Answers only once `gate` is set (or fails when told): holds requests in flight on cue."""

    def __init__(self, fail: bool = False):
        self.gate, self.entered, self.fail = asyncio.Event(), asyncio.Event(), fail

    async def stream(self, model, req):
        self.entered.set()
        await self.gate.wait()
        if self.fail:
            raise AtpError(ErrorCode.UPSTREAM_ERROR, "told to fail")
        yield TextDelta("ok", 1)
        yield Finish("stop", 2, 1)

    async def aclose(self):
        pass


def test_the_limits_stage_sits_after_authn_before_policy(tmp_path):
    app = App(limits_config(tmp_path, '[[limits]]\nname = "t"\nrequests_per_min = 5\n'))
    assert app.pipeline.chain.names == ("observers", "access_log", "audit", "metrics", "account", "validate",
                                        "limits", "policy", "admission", "route", "policy-models")
    no_limits = App(limits_config(tmp_path, ""))
    assert "limits" not in no_limits.pipeline.chain.names


def test_requests_per_minute_refuse_with_retry_after_and_count(tmp_path):
    async def main():
        app = App(limits_config(tmp_path, '[[limits]]\nname = "rpm"\nrequests_per_min = 3\n'))
        events = []
        app.limit_stage.listeners.append(events.append)
        for _ in range(3):
            await app.pipeline.complete(request(), PRINCIPAL, "t")
        with pytest.raises(AtpError) as err:
            await app.pipeline.complete(request(), PRINCIPAL, "t")
        with pytest.raises(AtpError):
            await app.pipeline.complete(request(), PRINCIPAL, "t")
        text = app.metrics.render().decode()
        await app.stop(0)
        return err.value, events, text
    exc, events, text = run(main())
    assert exc.code is ErrorCode.RATE_LIMITED and exc.retryable
    assert 0 < exc.retry_after_ms <= 20_000           # one request per 20 s refills
    assert "limits.rpm" in exc.message and "requests_per_min" in exc.message
    assert [(e.level, e.limit, e.subject) for e in events] == [
        ("soft", "requests_per_min", "default"), ("hard", "requests_per_min", "default")]
    assert 'atp_limit_events_total{level="hard",limit="requests_per_min",rule="rpm"} 2.0' in text


def test_a_rule_with_match_applies_to_that_subject_only(tmp_path):
    async def main():
        app = App(limits_config(tmp_path, '[[limits]]\nname = "dear-only"\nscope = "model"\n'
                                          'match = "dear"\nrequests_per_min = 1\n'))
        await app.pipeline.complete(request("dear"), PRINCIPAL, "t")
        for _ in range(3):
            await app.pipeline.complete(request("cheap"), PRINCIPAL, "t")   # not limited
        with pytest.raises(AtpError) as err:
            await app.pipeline.complete(request("dear"), PRINCIPAL, "t")
        await app.stop(0)
        return err.value
    assert run(main()).code is ErrorCode.RATE_LIMITED


def test_tokens_per_minute_charge_the_bound_and_refund_what_was_not_used(tmp_path):
    async def main():
        # each takes its bound, 1 prompt token + 16 (the model's max output) = 17, and uses
        # 1 + 4: five fit in 40 only because the unused 12 come back each time
        app = App(limits_config(tmp_path, '[[limits]]\nname = "tpm"\ntokens_per_min = 40\n',
                                sim="output_tokens = 4"))
        for _ in range(5):
            await app.pipeline.complete(request(), PRINCIPAL, "t")
        with pytest.raises(AtpError) as too_big:
            await app.pipeline.complete(request(text="x" * 400), PRINCIPAL, "t")
        await app.stop(0)
        return too_big.value
    exc = run(main())
    assert exc.code is ErrorCode.INVALID_REQUEST and "limits.tpm" in exc.message


def test_concurrent_requests_are_capped_and_slots_come_back(tmp_path):
    async def main():
        app = App(limits_config(tmp_path, '[[limits]]\nname = "conc"\nscope = "key"\nconcurrent = 1\n'))
        gated = GatedAdapter()
        app.pipeline.adapters["sim"] = gated
        first = asyncio.create_task(app.pipeline.complete(request(), PRINCIPAL, "t"))
        await gated.entered.wait()
        with pytest.raises(AtpError) as err:
            await app.pipeline.complete(request(), PRINCIPAL, "t")
        gated.gate.set()
        await first
        await app.pipeline.complete(request(), PRINCIPAL, "t")       # the slot came back
        level = await app.stores.counters.level("conc:conc:dev")
        await app.stop(0)
        return err.value, level
    exc, level = run(main())
    assert exc.code is ErrorCode.RATE_LIMITED and exc.retry_after_ms > 0 and level == 0


def test_budget_reserves_the_most_possible_cost_and_settles_the_actual(tmp_path):
    async def main():
        app = App(limits_config(tmp_path, '[[limits]]\nname = "usd"\nusd_per_day = 1.0\n'))
        stage = app.limit_stage
        bound = stage.max_cost_micros(request())
        gated = GatedAdapter()
        app.pipeline.adapters["sim"] = gated
        task = asyncio.create_task(app.pipeline.complete(request(), PRINCIPAL, "t"))
        await gated.entered.wait()
        day = stage._periods(time.time())[0]
        while_running = await app.stores.budgets.usage(f"usd:usd:default:{day}")
        gated.gate.set()
        done = await task
        after = await app.stores.budgets.usage(f"usd:usd:default:{day}")
        await app.stop(0)
        return bound, while_running, after, done.usage.cost_usd_micros
    bound, running, after, cost = run(main())
    # "hi": 2 bytes + 8 + 16 template tokens at $1000/Mtok, 16 out at $2000/Mtok
    assert bound == 26 * 1000 + 16 * 2000
    assert running == (0, bound) and after == (cost, 0) and 0 < cost < bound


def test_a_model_added_to_the_router_later_is_priced_into_every_reservation(tmp_path):
    """Federation rows and admin-added models reach the router through set_models: the budget's
    bound must price them (a route pricier than every local model would otherwise be reserved at
    the local maximum and concurrent requests could overspend) and policy must see them."""
    app = App(limits_config(tmp_path, '[[limits]]\nname = "usd"\nusd_per_day = 1.0\n'))
    dear = app.router.models["dear"]
    remote = dataclasses.replace(dear, id="remote-x", provider="federation", upstream="remote-x",
                                 price_in_per_mtok=9000.0, price_out_per_mtok=90000.0)
    before = app.limit_stage.max_cost_micros(request(model=None))
    app.router.set_models(list(app.router.models.values()) + [remote])
    stage = app.limit_stage
    # "hi": 2 bytes + 8 + 16 template tokens; 16 out (the copied max_output_tokens)
    assert stage.max_cost_micros(request(model="remote-x")) == 26 * 9000 + 16 * 90000
    assert stage.max_cost_micros(request(model=None)) == 26 * 9000 + 16 * 90000 > before
    assert "remote-x" in app.policy.models
    app.router.set_models([m for m in app.router.models.values() if m.id != "remote-x"])
    assert stage.max_cost_micros(request(model=None)) == before
    assert "remote-x" not in app.policy.models


@pytest.mark.parametrize("how", ["error", "cancel"])
def test_an_error_or_a_cancel_releases_the_reservation(tmp_path, how):
    async def main():
        app = App(limits_config(tmp_path, '[[limits]]\nname = "usd"\nusd_per_day = 1.0\n'
                                          'concurrent = 5\n'))
        gated = GatedAdapter(fail=how == "error")
        app.pipeline.adapters["sim"] = gated
        task = asyncio.create_task(app.pipeline.complete(request(), PRINCIPAL, "t"))
        await gated.entered.wait()
        if how == "cancel":
            task.cancel()
        else:
            gated.gate.set()
        with pytest.raises((AtpError, asyncio.CancelledError)):
            await task
        day = app.limit_stage._periods(time.time())[0]
        usage = await app.stores.budgets.usage(f"usd:usd:default:{day}")
        level = await app.stores.counters.level("conc:usd:default")
        await app.stop(0)
        return usage, level
    assert run(main()) == ((0, 0), 0)


def test_over_budget_is_refused_with_budget_exceeded_until_the_period_ends(tmp_path):
    async def main():
        # one request reserves 58000 micros: a $0.1 budget fits one at a time, then runs out
        app = App(limits_config(tmp_path, '[[limits]]\nname = "usd"\nusd_per_day = 0.1\nsoft = 0.3\n'))
        events = []
        app.limit_stage.listeners.append(events.append)
        await app.pipeline.complete(request(), PRINCIPAL, "t")
        await app.pipeline.complete(request(), PRINCIPAL, "t")
        with pytest.raises(AtpError) as err:
            await app.pipeline.complete(request(), PRINCIPAL, "t")
        await app.stop(0)
        return err.value, events
    exc, events = run(main())
    assert exc.code is ErrorCode.BUDGET_EXCEEDED and not exc.retryable
    now = time.time()
    assert abs(exc.retry_after_ms / 1000 - ((now // 86400 + 1) * 86400 - now)) < 5   # midnight UTC
    assert [e.level for e in events] == ["soft", "hard"]


def test_many_coroutines_never_overspend_and_spend_equals_the_audit(tmp_path):
    async def main():
        app = App(limits_config(tmp_path, '[[limits]]\nname = "usd"\nusd_per_day = 2.0\n',
                                sim="latency_ms = 2"))
        outcomes = await hammer(app, 300)
        day = app.limit_stage._periods(time.time())[0]
        usage = await app.stores.budgets.usage(f"usd:usd:default:{day}")
        await app.stop(0)
        return outcomes, usage
    outcomes, (spent, reserved) = run(main())
    audited, ok = audit_spend(tmp_path / "audit.sqlite")
    assert outcomes["BUDGET_EXCEEDED"] > 0 and outcomes["ok"] == ok > 0
    assert reserved == 0 and spent == audited <= 2_000_000


def test_several_processes_on_redis_never_overspend_and_spend_equals_the_audits(tmp_path,
                                                                                 redis_server):
    limits = '[[limits]]\nname = "usd"\nusd_per_day = 2.0\nconcurrent = 40\n'
    state = f'redis_url = "{redis_server.url}"\nprefix = "hammer:"\ntimeout_ms = 10000\n'
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    dirs = [tmp_path / f"w{i}" for i in range(3)]
    procs = [ctx.Process(target=hammer_process, args=(str(d), limits, state, 120, results))
             for d in dirs]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    async def usage():
        from atp_server.state import open_stores
        cfg = limits_config(tmp_path, limits, state=state)
        stores = open_stores(cfg.state)
        day = time.strftime("%Y-%m-%d", time.gmtime())
        result = await stores.budgets.usage(f"usd:usd:default:{day}")
        await stores.close()
        return result
    spent, reserved = run(usage())
    audits = [audit_spend(d / "audit.sqlite") for d in dirs]
    assert sum(o.get("BUDGET_EXCEEDED", 0) for o in outcomes) > 0
    assert sum(o.get("ok", 0) for o in outcomes) == sum(ok for _, ok in audits) > 0
    assert reserved == 0 and spent == sum(cost for cost, _ in audits) <= 2_000_000


def test_redis_down_refuses_budgets_and_lets_rate_limits_through(tmp_path):
    server = RedisServer().start()
    try:
        async def main(limits):
            app = App(limits_config(tmp_path, limits, state=f'redis_url = "{server.url}"\n'
                                                            'timeout_ms = 200\n'))
            await app.pipeline.complete(request(), PRINCIPAL, "t")
            server.stop()
            try:
                await app.pipeline.complete(request(), PRINCIPAL, "t")
                return None
            except AtpError as exc:
                return exc
            finally:
                await app.stop(0)
                server.start()
        refused = run(main('[[limits]]\nname = "usd"\nusd_per_day = 1.0\n'))
        passed = run(main('[[limits]]\nname = "rpm"\nrequests_per_min = 100\n'))
    finally:
        server.stop()
    assert refused.code is ErrorCode.UNAVAILABLE and refused.retryable and passed is None


def test_workers_need_a_shared_store_for_limits():
    base = config.DEFAULT_TOML.replace(config.dev_auth_toml(), config.dev_auth_toml(hmac=False))
    limited = base + '[[limits]]\nname = "t"\nrequests_per_min = 5\n'
    with pytest.raises(config.ConfigError, match=r"--workers 2: .*\[state\] redis_url"):
        config.check_workers(config.loads(limited), 2, "--workers")
    shared = config.loads(limited + '[state]\nredis_url = "redis://127.0.0.1:6379/0"\n')
    config.check_workers(shared, 2, "--workers")
    # HMAC keys too: the nonces are shared as well (tests/server/test_workers_replay.py)
    config.check_workers(config.loads(config.DEFAULT_TOML + '[state]\nredis_url = '
                                      '"redis://127.0.0.1:6379/0"\n'), 2, "--workers")
    with pytest.raises(config.ConfigError, match="nonce"):     # refused without Redis
        config.check_workers(config.loads(config.DEFAULT_TOML), 2, "--workers")


@pytest.mark.parametrize("text, key", [
    ('[[limits]]\nname = "x"\n', "limits[0]: sets no limit"),
    ('[[limits]]\nname = "x"\nscope = "model"\nmatch = "nope"\nconcurrent = 1\n', "limits[0].match"),
    ('[[limits]]\nname = "x"\nconcurrent = 1\n[[limits]]\nname = "x"\nconcurrent = 2\n',
     "limits[1].name"),
    ('[[limits]]\nname = "x"\nusd_per_day = -1\n', "limits[0].usd_per_day"),
    ('[state]\nredis_url = "http://x"\n', "state.redis_url"),
    ('[state]\nlimits_on_error = "maybe"\n', "state.limits_on_error"),
])
def test_bad_limits_and_state_config_names_the_key(text, key):
    with pytest.raises(config.ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        config.loads(config.DEFAULT_TOML + text)


def test_a_streamed_answer_settles_its_cost_like_a_whole_one(tmp_path):
    async def main():
        app = App(limits_config(tmp_path, '[[limits]]\nname = "usd"\nusd_per_month = 1.0\n'))
        done = None
        async for item in app.pipeline.stream(request(), PRINCIPAL, "t"):
            done = item
        month = app.limit_stage._periods(time.time())[2]
        usage = await app.stores.budgets.usage(f"usd:usd:default:{month}")
        await app.stop(0)
        return done.usage.cost_usd_micros, usage
    cost, usage = run(main())
    assert cost > 0 and usage == (cost, 0)


def test_a_request_running_across_midnight_settles_on_the_day_it_reserved(tmp_path):
    async def main():
        app = App(limits_config(tmp_path, '[[limits]]\nname = "usd"\nusd_per_day = 0.1\n'))
        stage = app.limit_stage
        midnight = (time.time() // 86400 + 1) * 86400
        now = [midnight - 1.0]
        stage.wall_clock = lambda: now[0]
        gated = GatedAdapter()
        app.pipeline.adapters["sim"] = gated
        task = asyncio.create_task(app.pipeline.complete(request(), PRINCIPAL, "t"))
        await gated.entered.wait()
        now[0] = midnight + 1.0
        gated.gate.set()
        done = await task
        before, after = stage._periods(midnight - 1.0)[0], stage._periods(midnight + 1.0)[0]
        usages = [await app.stores.budgets.usage(f"usd:usd:default:{d}") for d in (before, after)]
        await app.pipeline.complete(request(), PRINCIPAL, "t")     # the new day's budget is fresh
        fresh = await app.stores.budgets.usage(f"usd:usd:default:{after}")
        await app.stop(0)
        return done.usage.cost_usd_micros, usages, fresh
    cost, (old_day, new_day), fresh = run(main())
    assert old_day == (cost, 0) and new_day == (0, 0) and fresh[0] > 0
