"""The stage chain: its order, stages left out when configured off, afters in reverse whatever the end."""
import asyncio
import dataclasses

import pytest

from atp_server.app import App
from atp_server.pipeline import _Scope
from atp_server.stages import RequestContext, Stage, StageChain
from atp_server.types import AtpError, ChatRequest
from codec.errors import ErrorCode

from .helpers import PRINCIPAL, make_config


def run(coro):
    return asyncio.run(coro)


def test_the_chain_order_is_explicit(tmp_path):
    app = App(make_config(tmp_path))
    assert app.pipeline.chain.names == ("observers", "access_log", "audit", "metrics", "account", "validate",
                                        "policy", "admission", "route", "policy-models")
    selection = app.pipeline.chain.selection_befores
    assert len(selection) == 4      # validate, policy, route, policy-models: what Route runs


def test_a_stage_configured_off_is_not_in_the_chain(tmp_path):
    cfg = make_config(tmp_path)
    cfg = dataclasses.replace(cfg, audit=dataclasses.replace(cfg.audit, enabled=False))
    app = App(cfg)
    assert "audit" not in app.pipeline.chain.names and app.pipeline.audit is None


def test_stage_names_must_be_unique():
    with pytest.raises(ValueError, match="unique"):
        StageChain([Stage(), Stage()])


class Recorder(Stage):
    """Logs its calls; refuses in before, or waits there, when told to."""

    def __init__(self, name, log, refuse=False, wait: asyncio.Event | None = None):
        self.name, self.log, self.refuse, self.wait = name, log, refuse, wait
        self.reached = asyncio.Event() if wait is not None else None

    def before(self, ctx):
        self.log.append(f"before {self.name}")
        if self.refuse:
            raise AtpError(ErrorCode.FORBIDDEN, f"{self.name} says no")
        return self._wait() if self.wait is not None else None

    async def _wait(self):
        self.reached.set()
        await self.wait.wait()

    def after(self, ctx, outcome):
        self.log.append(f"after {self.name} {outcome}")


class AfterOnly(Stage):
    name = "after-only"

    def __init__(self, log):
        self.log = log

    def after(self, ctx, outcome):
        self.log.append(f"after {self.name} {outcome} {ctx.code}")


def ctx():
    return RequestContext(ChatRequest([("user", "hi")]), PRINCIPAL, "test", None)


def test_afters_run_in_reverse_order_after_success():
    log = []
    chain = StageChain([AfterOnly(log), Recorder("a", log), Recorder("b", log)])

    async def go():
        async with _Scope(chain, ctx()):
            log.append("dispatch")
    run(go())
    assert log == ["before a", "before b", "dispatch", "after b ok", "after a ok",
                   "after after-only ok 0"]


def test_a_refusing_stage_runs_the_afters_of_the_stages_before_it_only():
    log = []
    chain = StageChain([AfterOnly(log), Recorder("a", log), Recorder("no", log, refuse=True),
                        Recorder("never", log)])

    async def go():
        with pytest.raises(AtpError):
            async with _Scope(chain, ctx()):
                log.append("dispatch")
    run(go())
    assert log == ["before a", "before no", "after a FORBIDDEN",
                   f"after after-only FORBIDDEN {int(ErrorCode.FORBIDDEN)}"]


def test_afters_run_when_the_request_is_cancelled_or_fails():
    for exc, outcome in ((asyncio.CancelledError(), "CANCELLED"), (GeneratorExit(), "CANCELLED"),
                         (RuntimeError("bug"), "INTERNAL")):
        log = []
        chain = StageChain([Recorder("a", log)])

        async def go():
            with pytest.raises(type(exc)):
                async with _Scope(chain, ctx()):
                    raise exc
        run(go())
        assert log == ["before a", f"after a {outcome}"]


def test_cancel_while_a_before_waits_skips_that_stages_after():
    """Cancelled while waiting (e.g. for an admission slot): that stage took nothing, so its
    after must not run (it would release a slot it never had); earlier stages' afters do."""
    log = []

    async def go():
        admit = Recorder("admit", log, wait=asyncio.Event())
        chain = StageChain([Recorder("a", log), admit])
        task = asyncio.ensure_future(_Scope(chain, ctx()).__aenter__())
        await admit.reached.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    run(go())
    assert log == ["before a", "before admit", "after a CANCELLED"]


def test_a_policy_refusal_releases_no_admission_slot(tmp_path):
    async def main():
        app = App(make_config(tmp_path))
        with pytest.raises(AtpError) as err:
            await app.pipeline.complete(ChatRequest([("user", "x")], max_tokens=10 ** 5),
                                        PRINCIPAL, "test")
        await app.stop(0)
        return app, err.value
    app, err = run(main())
    assert err.code == ErrorCode.POLICY_DENIED
    assert app.admission.inflight == 0       # would be -1 had the admission after run
    assert app.metrics.request_counts[("test", "-", "POLICY_DENIED")] == 1


def test_the_account_stage_adds_a_completed_answer_once(tmp_path):
    async def main():
        app = App(make_config(tmp_path, sim_options="output_tokens = 3"))
        c = await app.pipeline.complete(ChatRequest([("user", "hi")], tier="fast"), PRINCIPAL, "test")
        await app.stop(0)
        return app, c
    app, c = run(main())
    totals = app.accountant.by_tenant["default"]
    assert totals.requests == 1 and totals.cost_usd_micros == c.usage.cost_usd_micros


def test_a_stage_method_set_on_the_instance_is_refused():
    """The chain looks at the class: a before/after assigned per instance would be skipped."""
    stage = Stage()
    stage.before = lambda ctx: None
    with pytest.raises(TypeError, match="in the class"):
        StageChain([stage])
