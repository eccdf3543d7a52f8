"""Shadow mode: mirror a share of requests to a challenger routing policy, off the client's path.

With `[routing] challenger_shadow = true` the challenger (champion.py) never decides a live request.
Instead the `shadow` stage — the first of the chain, so its `after` runs last, once the client's
answer is produced and recorded — samples `challenger_share` of the requests that were answered or
failed upstream and hands each to the mirror, which returns at once. A background task then asks
the challenger's table which model it would have chosen and, when that is another model, calls it
with the same (already redacted) request and throws the answer away. What it cost and how it
scored go to metrics, to the audit log (transport `shadow`, never counted as a tenant's spend) and,
paired with the champion's score on the same request, to the sequential test, which can promote or
roll back the challenger from shadow data alone.

The score is the implicit signal report.py uses for every answer: 1 when the model answered
within the request's latency SLO (any time without one), 0 for an upstream fault or a late answer.
Same request, same moment: each pair is an exact paired comparison. When the challenger would
choose the very model that served, the outcome is known without a call (a tie: no evidence, no
spend), counted as `same_model`.

Bounded: at most `shadow_max_inflight` shadow calls at once; beyond that a mirror is dropped and
counted, so a hung shadow provider costs the clients nothing but those slots; each call also
gives up after `shadow_timeout_s`. Shadow calls do not touch the breakers, AIMD windows or
provider caps of live traffic. `close()` (server shutdown) cancels the calls still running.
"""
import asyncio
import logging
import random
import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .routing.health import UPSTREAM_FAULTS
from .stages.base import RequestContext, Stage
from .types import AtpError

log = logging.getLogger("atp.shadow")

# How a mirror ended: the metric's label values (fixed here, never from a request).
RESULTS = ("answered", "failed", "timeout", "same_model", "no_model", "dropped", "cancelled")


def implicit_score(answered: bool, latency_ms: float, slo_ms: float | None) -> float:
    """The reward an answer earns without explicit feedback (report.py's implicit signal)."""
    return 1.0 if answered and (slo_ms is None or latency_ms <= slo_ms) else 0.0


class ShadowMirror:
    def __init__(self, router, adapters: dict, accountant, audit=None, *, max_inflight: int = 4,
                 timeout_s: float = 30.0, clock=time.monotonic):
        self.router, self.adapters, self.accountant, self.audit = router, adapters, accountant, audit
        self.max_inflight = max_inflight
        self.timeout_s = timeout_s
        self.clock = clock
        self.tasks: set[asyncio.Task] = set()
        self.counts = dict.fromkeys(RESULTS, 0)
        self.cost_micros = 0                 # what the shadow calls cost
        self.champion_cost_micros = 0        # what the champion cost on the same requests
        self.scores = {"champion": 0.0, "challenger": 0.0}
        self.on_done = None                  # fn(record dict) after each mirror (tests, harness)

    def submit(self, ctx: RequestContext) -> bool:
        """Mirror one finished request in the background; False when dropped (full)."""
        if len(self.tasks) >= self.max_inflight:
            self.counts["dropped"] += 1
            return False
        usage = ctx.usage
        champion = {"model": ctx.decision.model, "cost_micros": usage.cost_usd_micros if usage else 0,
                    "score": implicit_score(ctx.code == 0 and ctx.finished, ctx.upstream_ns / 1e6,
                                            ctx.request.latency_slo_ms)}
        allowed = None
        if ctx.policy is not None and ctx.policy.models is not None and not ctx.policy.dry_run:
            allowed = ctx.policy.models
        task = asyncio.ensure_future(self._mirror(ctx.request, ctx.principal, champion, allowed))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    async def _mirror(self, request, principal, champion: dict, allowed) -> None:
        rec = {"champion_model": champion["model"], "champion_cost_micros": champion["cost_micros"],
               "champion_score": champion["score"], "shadow": True}
        try:
            d = self.router.shadow_choice(request, self.clock())
            if d is None:
                return                       # the experiment ended or is pinned meanwhile
            rec["challenger"] = self.router.experiment.challenger
            chain = [m for m in (d.model,) + d.fallbacks if allowed is None or m in allowed]
            if not chain:
                self._end(rec, "no_model", request, principal, None)
                return
            model_id = chain[0]
            if model_id == champion["model"]:
                rec.update(cost_micros=champion["cost_micros"], score=champion["score"])
                self._end(rec, "same_model", request, principal, model_id)
                return
            model = self.router.models[model_id]
            t0 = self.clock()
            try:
                async with asyncio.timeout(self.timeout_s):
                    text, finish, tokens = await self._call(model, request)
            except TimeoutError:
                rec.update(score=0.0, cost_micros=0)
                self._end(rec, "timeout", request, principal, model_id)
                return
            except AtpError as exc:
                rec.update(score=0.0, cost_micros=0, error=exc.name)
                self._end(rec, "failed", request, principal, model_id)
                return
            usage = self.accountant.usage(model, request, finish, tokens)
            rec.update(score=implicit_score(True, (self.clock() - t0) * 1000, request.latency_slo_ms),
                       cost_micros=usage.cost_usd_micros, **{"in": usage.input_tokens,
                                                            "out": usage.output_tokens})
            self._end(rec, "answered", request, principal, model_id)
        except asyncio.CancelledError:
            self.counts["cancelled"] += 1
            raise
        except Exception:                    # a bug here must never reach a client: log it
            log.exception("shadow mirror of %s failed", request.request_id)

    async def _call(self, model, request):
        adapter = self.adapters[model.provider]
        if hasattr(adapter, "complete"):
            text, finish = await adapter.complete(model, request)
            return text, finish, finish.output_tokens or 0
        from .pipeline import _drain     # the pipeline's own stream-to-answer collector
        return await _drain(adapter, model, request)

    def _end(self, rec: dict, result: str, request, principal, model_id) -> None:
        self.counts[result] += 1
        if "score" in rec:
            self.cost_micros += rec["cost_micros"]
            self.champion_cost_micros += rec["champion_cost_micros"]
            self.scores["champion"] += rec["champion_score"]
            self.scores["challenger"] += rec["score"]
            self.router.shadow_observe(rec["champion_score"], rec["score"])
        if self.audit is not None:
            self.audit.record(principal.tenant, principal.name, "shadow", request.request_id,
                              model_id or "", result, 0, rec)
        if self.on_done is not None:
            self.on_done({**rec, "result": result, "model": model_id})

    async def close(self) -> None:
        """Cancel the shadow calls still running and wait for them (server shutdown)."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def collector(self):
        return _ShadowCollector(self)


class _ShadowCollector:
    def __init__(self, mirror: ShadowMirror):
        self.mirror = mirror

    def describe(self):
        return []

    def collect(self):
        m = self.mirror
        c = CounterMetricFamily("atp_shadow_mirrors", "Requests mirrored to the shadow challenger, "
                                "by how the mirror ended", labels=["result"])
        for result in RESULTS:
            c.add_metric([result], m.counts[result])
        yield c
        yield CounterMetricFamily("atp_shadow_cost_usd", "What the shadow calls cost",
                                  value=m.cost_micros / 1e6)
        yield CounterMetricFamily("atp_shadow_champion_cost_usd", "What the champion cost on "
                                  "the mirrored requests", value=m.champion_cost_micros / 1e6)
        s = CounterMetricFamily("atp_shadow_score", "Sum of the implicit scores on mirrored "
                                "requests", labels=["policy"])
        for policy, total in m.scores.items():
            s.add_metric([policy], total)
        yield s
        yield GaugeMetricFamily("atp_shadow_inflight", "Shadow calls running", value=len(m.tasks))


class ShadowStage(Stage):
    """After-only, first in the chain (its `after` runs last): sample a finished request for the
    shadow mirror. Not in the chain unless a shadow challenger is configured."""

    name = "shadow"

    def __init__(self, mirror: ShadowMirror, share: float, rng: random.Random | None = None):
        self.submit = mirror.submit
        self.share = share
        self.random = (rng or random.Random()).random

    def after(self, ctx: RequestContext, outcome: str) -> None:
        # not sampled: a comparison and a draw (0.8 µs per call measured with the call itself,
        # loaded 2-core machine); absent from the chain when no shadow challenger is configured
        if ctx.decision is None or self.random() >= self.share or ctx.decision.provider == "cache":
            return                          # (a response-cache hit called no model to compare)
        if ctx.code == 0 and ctx.finished or ctx.code in UPSTREAM_FAULTS:
            self.submit(ctx)
