"""Shadow mode (atp_server/shadow.py): the challenger routing policy sees mirrored requests after the
client's answer; the client always gets the champion's answer; the shadow's cost and score are
recorded (metrics, audit, the sequential test); a hung shadow provider holds only its bounded slots."""
import asyncio
import sqlite3

import orjson
import pytest

from atp_server.adapters.simulated import SimulatedAdapter
from atp_server.app import App
from atp_server.routing.predictor import Predictor
from atp_server.types import AtpError, ChatRequest
from codec.errors import ErrorCode
from tests.server.helpers import PRINCIPAL, make_config

from .test_control import _models_toml

PROMPT = "what is the derivative of x squared"


def _inverted(pred):
    """The same router with its quality logits negated: it prefers the worst model."""
    return Predictor(pred.models, pred.cfg, -pred.W, pred.platt, pred.cost_kind, pred.cost_params,
                     pred.cost_ref, pred.tiers)


class Shadowed(SimulatedAdapter):
    """The simulated provider, except for the models in `broken`: those hang (until cancelled)
    or fail, as `mode` says; the live path never routes to them in these tests."""

    def __init__(self, broken, mode):
        super().__init__("sim")
        self.broken, self.mode = set(broken), mode
        self.hung = 0
        self.hung_three = asyncio.Event()       # set when the third call hangs (tests wait on it)

    async def _broken(self, model):
        if self.mode == "hang":
            self.hung += 1
            if self.hung >= 3:
                self.hung_three.set()
            await asyncio.Event().wait()        # never set: only a cancel ends it
        raise AtpError(ErrorCode.UPSTREAM_ERROR, f"{model.id}: down")

    async def complete(self, model, request):
        if model.id in self.broken:
            await self._broken(model)
        return await super().complete(model, request)


def make_app(tmp_path, trained, **routing):
    trained.save(str(tmp_path / "v1.bin"))
    _inverted(trained).save(str(tmp_path / "v2.bin"))
    extra = "".join(f"{k} = {v}\n" for k, v in routing.items())
    cfg = make_config(tmp_path, models=_models_toml(trained.models), extra=f"""
[routing]
bandit = "greedy"
seed = 1
predictor = "{tmp_path / 'v1.bin'}"
challenger = "{tmp_path / 'v2.bin'}"
challenger_share = 0.5
challenger_shadow = true
{extra}""")
    app = App(cfg)
    stage = app.pipeline.chain.stages[0]
    assert stage.name == "shadow"
    stage.random = lambda: 0.0                  # sample every request (share is a draw < 0.5)
    return app


def request(i: int) -> ChatRequest:
    return ChatRequest([("user", PROMPT)], request_id=f"r{i}", cost_weight=0.0)


def picks(app):
    """(champion's model, challenger's model) for PROMPT: greedy, so the same every time."""
    champion = app.router.choose(request(0), 0.0).model
    shadow = app.router.shadow_choice(request(0), 0.0).model
    assert champion != shadow
    return champion, shadow


def audit_rows(app, transport):
    app.audit.flush()
    rows = sqlite3.connect(app.audit.path).execute(
        "select model, outcome, record from audit where transport = ?", (transport,)).fetchall()
    return [(m, o, orjson.loads(r)) for m, o, r in rows]


def test_the_client_gets_the_champions_answer_and_the_shadow_call_is_recorded(tmp_path, trained):
    async def main():
        app = make_app(tmp_path, trained)
        champion, shadow = picks(app)
        done, results = [], []
        for i in range(1, 4):
            finished = asyncio.Event()
            app.shadow.on_done = lambda rec, f=finished: (done.append(rec), f.set())
            results.append(await app.pipeline.complete(request(i), PRINCIPAL, "test"))
            await finished.wait()
        await app.stop(0)
        return app, champion, shadow, results, done
    app, champion, shadow, results, done = asyncio.run(main())
    assert [r.decision.model for r in results] == [champion] * 3       # never the shadow's
    assert not any(r.decision.trace.challenger for r in results)
    assert [d["model"] for d in done] == [shadow] * 3 and app.shadow.counts["answered"] == 3
    assert all(d["cost_micros"] > 0 and d["score"] == 1.0 for d in done)
    assert app.shadow.cost_micros == sum(d["cost_micros"] for d in done)
    assert app.shadow.champion_cost_micros == sum(r.usage.cost_usd_micros for r in results)
    rows = audit_rows(app, "shadow")
    assert [(m, o) for m, o, _ in rows] == [(shadow, "answered")] * 3
    assert all(r["shadow"] and r["champion_model"] == champion and r["cost_micros"] > 0
               for _, _, r in rows)
    # a tenant is billed for its own answers only
    assert app.accountant.by_model.get(shadow) is None or app.accountant.by_model[shadow].requests == 0
    from atp_server import costs
    rep = costs.report(sqlite3.connect(app.audit.path), "model")
    assert shadow not in {line.group for line in rep.lines}
    assert rep.total.cost_micros == sum(r.usage.cost_usd_micros for r in results)


def test_shadow_metrics_are_exported(tmp_path, trained):
    async def main():
        app = make_app(tmp_path, trained)
        finished = asyncio.Event()
        app.shadow.on_done = lambda rec: finished.set()
        await app.pipeline.complete(request(1), PRINCIPAL, "test")
        await finished.wait()
        from prometheus_client import generate_latest
        text = generate_latest(app.metrics.registry).decode()
        await app.stop(0)
        return text
    text = asyncio.run(main())
    assert 'atp_shadow_mirrors_total{result="answered"} 1.0' in text
    assert 'atp_shadow_score_total{policy="challenger"} 1.0' in text
    value = float(text.split("\natp_shadow_cost_usd_total ")[1].split()[0])
    assert value > 0


def test_a_hung_shadow_provider_never_slows_the_clients(tmp_path, trained):
    async def main():
        app = make_app(tmp_path, trained, shadow_max_inflight=3)
        champion, shadow = picks(app)
        adapter = app.adapters["sim"] = app.shadow.adapters["sim"] = Shadowed({shadow}, "hang")
        results = [await app.pipeline.complete(request(i), PRINCIPAL, "test") for i in range(1, 21)]
        await adapter.hung_three.wait()         # the three admitted shadow calls reached it
        held = len(app.shadow.tasks)
        await app.stop(0)                       # shutdown cancels the hung shadow calls
        return app, champion, results, held
    app, champion, results, held = asyncio.run(main())
    assert [r.decision.model for r in results] == [champion] * 20     # every client answered
    assert held == 3 and app.shadow.counts["dropped"] == 17
    assert app.shadow.counts["cancelled"] == 3 and not app.shadow.tasks
    assert app.admission.inflight == 0


def test_the_sequential_test_decides_from_shadow_data(tmp_path, trained):
    async def main():
        app = make_app(tmp_path, trained)
        champion, shadow = picks(app)
        app.adapters["sim"] = app.shadow.adapters["sim"] = Shadowed({shadow}, "fail")
        for i in range(1, 200):
            finished = asyncio.Event()
            app.shadow.on_done = lambda rec, f=finished: f.set()
            await app.pipeline.complete(request(i), PRINCIPAL, "test")
            await finished.wait()
            if not app.router.experiment.running:
                break
        await app.stop(0)
        return app, i
    app, n = asyncio.run(main())
    v = app.router.verdicts[-1]
    assert v.action == "rollback" and "worse" in v.reason
    assert 30 < n < 60 and app.shadow.counts["failed"] == n      # ~39 one-sided pairs at ε = 5%
    assert app.router.shadow_choice(request(0), 0.0) is None         # ended: nothing mirrored
    rows = audit_rows(app, "routing")
    assert [(o) for _, o, _ in rows] == ["rollback"]


def test_pinned_shadow_mirrors_nothing(tmp_path, trained):
    app = make_app(tmp_path, trained)
    app.router.operator("pin")
    assert app.router.shadow_choice(request(0), 0.0) is None
    app.router.operator("unpin")
    assert app.router.shadow_choice(request(0), 0.0) is not None


def test_without_shadow_there_is_no_stage(tmp_path):
    app = App(make_config(tmp_path))
    assert "shadow" not in app.pipeline.chain.names and app.shadow is None


@pytest.mark.parametrize("key,value", [("challenger_shadow", '"yes"'), ("shadow_max_inflight", "0"),
                                       ("shadow_timeout_s", "-1")])
def test_bad_shadow_settings_name_the_key(tmp_path, key, value):
    from atp_server.config import ConfigError
    with pytest.raises(ConfigError, match=f"routing.{key}"):
        make_config(tmp_path, extra=f"[routing]\n{key} = {value}\n")
