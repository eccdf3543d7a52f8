"""After a failover the bandits learn about every model the request touched: the one that finally
served gets the feedback with the prompt's features, each failed one an error update (LinUCB
included), and no model is reported twice."""
import asyncio

import numpy as np
import pytest

from atp_server.app import App
from atp_server.types import AtpError, ChatRequest
from codec.errors import ErrorCode
from tests.server.helpers import PRINCIPAL, make_config


def failing(app, down: set):
    """Make the simulated provider fail (retryably, before any token) for the models in `down`."""
    sim = app.adapters["sim"]
    complete, stream = sim.complete, sim.stream

    async def fail(model):
        raise AtpError(ErrorCode.UPSTREAM_ERROR, f"{model.id}: down")

    async def new_complete(model, request):
        if model.id in down:
            await fail(model)
        return await complete(model, request)

    def new_stream(model, request):
        if model.id in down:
            async def dead():
                await fail(model)
                yield
            return dead()
        return stream(model, request)
    sim.complete, sim.stream = new_complete, new_stream


async def ask(app, streamed: bool, rid: str = "q1"):
    req = ChatRequest([("user", "hello there, how are you")], tier="high", request_id=rid)
    if streamed:
        return [i async for i in app.pipeline.stream(req, PRINCIPAL, "test")][-1]
    return await app.pipeline.complete(req, PRINCIPAL, "test")


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
def test_linucb_learns_from_both_models_after_a_failover(tmp_path, streamed):
    async def main():
        app = App(make_config(tmp_path, extra='[routing]\nbandit = "linucb"\nseed = 1\n'))
        first = app.router.choose(ChatRequest([("user", "x")], tier="high"), 0.0).model
        other = ({"cheap", "smart"} - {first}).pop()
        failing(app, {first})
        result = await ask(app, streamed)
        t = app.router.table
        lin = t.bandit
        b_after_failure = lin.b.copy()
        A_after_failure = lin.A_inv.copy()
        assert app.router.feedback("default", "q1", 1.0, 0.0)
        await app.stop(0)
        return t, first, other, result, b_after_failure, A_after_failure, lin
    t, first, other, result, b_fail, A_fail, lin = asyncio.run(main())
    assert result.decision.model == other
    f, o = t.index[first], t.index[other]
    dim = lin.b.shape[1]
    # the failed model: an error update (reward 0) with the prompt's features
    assert not np.allclose(A_fail[f], np.eye(dim)) and np.all(b_fail[f][:1] < 0)
    assert np.allclose(b_fail[o], 0.0)               # the served one waits for its score ...
    assert np.all(lin.b[o][:1] > 0)                    # ... and learns from it
    assert t.stats.fail[f] == 1.0 and t.stats.succ[o] == 1.0
    assert t.stats.inflight.sum() == 0


def test_when_every_model_fails_each_is_reported_once(tmp_path):
    async def main():
        app = App(make_config(tmp_path, extra='[routing]\nbandit = "linucb"\nseed = 1\n'
                                              'max_attempts = 2\n'))
        failing(app, {"cheap", "smart"})
        with pytest.raises(AtpError):
            await ask(app, False)
        await app.stop(0)
        return app.router.table
    t = asyncio.run(main())
    assert t.stats.fail.tolist() == [1.0, 1.0] and t.stats.answers.tolist() == [1, 1]
    assert t.stats.inflight.sum() == 0
    assert all(np.all(t.bandit.b[i][:1] < 0) for i in range(2))


def test_a_late_answer_is_an_error_update_for_linucb(tmp_path):
    from atp_server.routing.report import Answered, report
    from atp_server.routing.router import Router
    from atp_server.routing.config import RoutingConfig
    from atp_server.routing.spec import ModelSpec
    r = Router([ModelSpec("a", "p", "a"), ModelSpec("b", "p", "b")],
               policy=RoutingConfig(bandit="linucb", seed=1))
    d = r.choose(ChatRequest([("user", "hi")]), 0.0)
    row = r.table.index[d.model]
    report(r.table, Answered(d.model, 500.0, 100.0, features=d.trace.features,
                             base=float(d.trace.base[row])), 0.0)
    assert r.table.bandit.b[row][0] < 0 and r.table.stats.fail[row] == 1.0
    report(r.table, Answered(d.model, 50.0, 100.0, features=d.trace.features,
                             base=float(d.trace.base[row])), 0.0)
    assert r.table.stats.fail[row] == 1.0                 # in time: no quality signal yet
