"""The pipeline in memory: routing, streaming, failover, mid-stream cuts, admission, accounting, audit."""
import asyncio

import pytest

from atp_server.app import App
from atp_server.types import AtpError, ChatRequest, Delta, Done, Routed
from codec.errors import ErrorCode

from .helpers import PRINCIPAL, make_config


def run(coro):
    return asyncio.run(coro)


async def collect(app, request):
    items = []
    async for item in app.pipeline.stream(request, PRINCIPAL, "test"):
        items.append(item)
    return items


def test_stream_yields_route_then_deltas_then_done(tmp_path):
    async def main():
        app = App(make_config(tmp_path, sim_options="output_tokens = 5"))
        items = await collect(app, ChatRequest([("user", "hello")], tier="high"))
        await app.stop(0)
        return app, items
    app, items = run(main())
    assert type(items[0]) is Routed and items[0].decision.model == "smart"
    deltas = [i for i in items if type(i) is Delta]
    assert [d.index for d in deltas] == [0, 1, 2, 3, 4]
    done = items[-1]
    assert type(done) is Done and done.usage.output_tokens == 5
    assert done.usage.cost_usd_micros == round(done.usage.input_tokens * 3.0 + 5 * 15.0)
    assert app.accountant.by_tenant["default"].requests == 1
    assert app.accountant.by_model["smart"].output_tokens == 5
    assert app.admission.inflight == 0


def test_same_request_gives_the_same_answer(tmp_path):
    async def main():
        app = App(make_config(tmp_path, sim_options="seed = 7"))
        a = await app.pipeline.complete(ChatRequest([("user", "x")], model="cheap", request_id="r"), PRINCIPAL, "t")
        b = await app.pipeline.complete(ChatRequest([("user", "x")], model="cheap", request_id="r"), PRINCIPAL, "t")
        await app.stop(0)
        return a, b
    a, b = run(main())
    assert a.text == b.text and a.text


def test_unknown_model_and_invalid_request_are_refused_before_dispatch(tmp_path):
    async def main():
        app = App(make_config(tmp_path))
        errors = []
        for req in (ChatRequest([("user", "x")], model="nope"), ChatRequest([]),
                    ChatRequest([("user", "x")], tier="turbo")):
            with pytest.raises(AtpError) as info:
                await collect(app, req)
            errors.append(info.value.code)
        calls = app.adapters["sim"].calls
        await app.stop(0)
        return errors, calls
    errors, calls = run(main())
    assert errors == [ErrorCode.UNKNOWN_MODEL, ErrorCode.INVALID_REQUEST, ErrorCode.INVALID_REQUEST]
    assert calls == 0


def test_failover_down_the_chain_on_failure_before_first_token(tmp_path):
    async def main():
        cfg = make_config(tmp_path, sim_options="failure_rate = 1.0")
        app = App(cfg)
        with pytest.raises(AtpError) as info:
            await collect(app, ChatRequest([("user", "x")], tier="fast"))
        calls = app.adapters["sim"].calls
        await app.stop(0)
        return info.value, calls
    err, calls = run(main())
    assert err.code == ErrorCode.UPSTREAM_ERROR and err.retryable
    # cheap, then smart (the whole chain), then cheap again after a backoff: the default budget of 3
    assert calls == 3


def test_mid_stream_cut_is_an_error_not_a_short_success(tmp_path):
    async def main():
        app = App(make_config(tmp_path, sim_options="cut_rate = 1.0\noutput_tokens = 8"))
        seen = []
        with pytest.raises(AtpError) as info:
            async for item in app.pipeline.stream(ChatRequest([("user", "x")]), PRINCIPAL, "t"):
                seen.append(item)
        await app.stop(0)
        return info.value, seen
    err, seen = run(main())
    assert err.code == ErrorCode.UPSTREAM_CUT
    assert sum(type(i) is Delta for i in seen) == 4
    assert not any(type(i) is Done for i in seen)


def test_admission_rejects_when_queue_is_full_and_slots_come_back(tmp_path):
    async def main():
        app = App(make_config(tmp_path, sim_options="latency_ms = 50",
                              server="max_inflight = 1\nmax_queue = 1"))
        first = asyncio.create_task(collect(app, ChatRequest([("user", "a")])))
        second = asyncio.create_task(collect(app, ChatRequest([("user", "b")])))
        while app.admission.queued < 1:      # wait until the second one queues behind the first
            await asyncio.sleep(0)
        with pytest.raises(AtpError) as info:
            await collect(app, ChatRequest([("user", "c")]))
        results = await asyncio.gather(first, second)
        state = (app.admission.inflight, app.admission.queued)
        await app.stop(0)
        return info.value, results, state
    err, results, state = run(main())
    assert err.code == ErrorCode.OVERLOADED and err.retryable and err.retry_after_ms > 0
    assert all(type(r[-1]) is Done for r in results)
    assert state == (0, 0)


def test_closing_the_stream_early_cancels_and_is_audited(tmp_path):
    async def main():
        app = App(make_config(tmp_path, sim_options="tokens_per_s = 100\noutput_tokens = 50"))
        gen = app.pipeline.stream(ChatRequest([("user", "x")], request_id="gone"), PRINCIPAL, "t")
        async for item in gen:
            if type(item) is Delta:
                break
        await gen.aclose()
        app.audit.flush()
        rows = app.audit._db.execute("SELECT outcome, code FROM audit WHERE request_id='gone'").fetchall()
        inflight = app.admission.inflight
        await app.stop(0)
        return rows, inflight
    rows, inflight = run(main())
    assert rows == [("CANCELLED", int(ErrorCode.CANCELLED))]
    assert inflight == 0


def test_every_request_is_audited_with_outcome(tmp_path):
    async def main():
        app = App(make_config(tmp_path))
        await app.pipeline.complete(ChatRequest([("user", "x")], request_id="ok1"), PRINCIPAL, "t")
        with pytest.raises(AtpError):
            await app.pipeline.complete(ChatRequest([("user", "x")], model="nope", request_id="bad1"), PRINCIPAL, "t")
        app.audit.flush()
        rows = dict(app.audit._db.execute("SELECT request_id, outcome FROM audit").fetchall())
        await app.stop(0)
        return rows
    assert run(main()) == {"ok1": "ok", "bad1": "UNKNOWN_MODEL"}


def test_route_only_does_not_dispatch(tmp_path):
    async def main():
        app = App(make_config(tmp_path))
        decision = app.pipeline.route(ChatRequest([("user", "x")], capabilities=("vision",)), PRINCIPAL)
        calls = app.adapters["sim"].calls
        await app.stop(0)
        return decision, calls
    decision, calls = run(main())
    assert decision.model == "smart" and calls == 0
    assert any("cheap (lacks vision)" in r for r in decision.reasons)
