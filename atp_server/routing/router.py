"""The router the pipeline holds: the live model table, the RNG and the learning loop around choose().

A thin shell over the pure core: `choose(request, now)` calls routing.choose.choose on the current
table with the router's own RNG; the route stage's `after` calls `finished(ctx, now)`, which turns
how the request ended into report() outcomes; `feedback()` applies an explicit score to the model
that served that (tenant, request id). It also keeps the routing counters /metrics exports (the
expected regret of exploration) and saves/loads the posteriors in the state directory.
"""
import logging
import math
import os
from collections import OrderedDict

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import bandit as bandit_state
from .choose import choose as choose_core
from .config import RoutingConfig
from .health import UPSTREAM_FAULTS, HealthBoard
from .report import Abandoned, Answered, Failed, Scored, Started, report
from .table import TableRef, build_table, rebuild

log = logging.getLogger("atp.routing")

# Decisions remembered for later feedback, keyed by (tenant, request id). Feedback comes seconds to
# minutes after the answer; 16,384 entries cover a minute at ~270 req/s and cost ~3 MB (an entry
# is a key, a model id and the decision's small trace). Older requests' feedback is still logged
# (feedback.py) but no longer teaches the router.
RECENT_DECISIONS = 16_384


def audit_verdicts(audit):
    """An on_verdict callback writing each champion/challenger verdict as an audit row
    (transport "routing", model = the challenger, outcome = promote | rollback | keep)."""
    def write(v) -> None:
        audit.record("", "router", "routing", "", v.challenger, v.action, 0,
                     {"rewards": v.rewards, "challenger_mean": v.challenger_mean,
                      "champion_mean": v.champion_mean, "reason": v.reason})
    return write


def load_predictor(policy: RoutingConfig, key: str = "predictor"):
    """The trained router named by routing.<key> (predictor or challenger; None when unset),
    warmed up so the first request does not pay the compiled kernels' load; a bad file names
    the key and the file."""
    name = getattr(policy, key)
    if not name:
        return None
    from .predictor import Predictor, RouterFileError
    path = os.path.expanduser(name)
    try:
        pred = Predictor.load(path)
    except (OSError, RouterFileError, ValueError) as exc:
        raise ValueError(f"routing.{key}: cannot load {path}: {exc}") from None
    pred.warm()
    return pred


class Draws:
    """The router's RNG for choose(): standard normals drawn a block of decisions at a time (one
    Generator call per decision measured ~1–5 µs, a quarter of the decision budget; a row of a
    pre-drawn block costs ~0.1 µs). The sequence is the Generator's own, so a seed reproduces it."""

    BLOCK = 256     # decisions per draw: 256 × 16 models × 8 B = 32 KB, refilled every 256 requests

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self._block = np.empty((0, 0))
        self._next = 0

    def standard_normal(self, n: int) -> np.ndarray:
        block = self._block
        if self._next >= block.shape[0] or block.shape[1] != n:
            block = self._block = self.rng.standard_normal((self.BLOCK, n))
            self._next = 0
        row = block[self._next]
        self._next += 1
        return row

    def choice(self, *args, **kwargs):
        return self.rng.choice(*args, **kwargs)


class Router:
    def __init__(self, models, health: HealthBoard | None = None, *,
                 policy: RoutingConfig = RoutingConfig(), predictor=None, seed: int | None = None):
        self.health = health or HealthBoard()
        self.policy = policy
        self.predictor = predictor
        models = list(models)
        if not models:
            raise ValueError("the router needs at least one model")
        seed = policy.seed if seed is None else seed
        self.rng = Draws(np.random.default_rng(None if seed < 0 else seed))
        self.ref = TableRef(build_table(models, self.health, predictor=predictor,
                                        aliases=policy.aliases, policy=policy,
                                        bandit=self._bandit(len(models))))
        self.models = {m.id: m for m in models}     # the pipeline's id -> spec lookup
        self.decisions = 0
        self.regret = 0.0                            # Σ expected regret of the picks
        self.feedback_applied = 0
        self._recent: OrderedDict = OrderedDict()
        self.experiment = None          # champion.Experiment while a challenger runs
        self.challenger_table = None
        self.verdicts: list = []        # every ended experiment (champion.Verdict), oldest first
        self.on_verdict = None          # fn(Verdict): the App logs it and writes it to the audit trail
        self.pinned = False             # an operator froze the champion (`atp router pin`)
        self.shadow = False             # the challenger only sees mirrored requests (shadow.py)
        self.on_removed = None          # fn(model ids) after set_models removed them (state/learning.py)
        # fn(id -> spec) after every set_models (admin API, federation rows): what prices or lists
        # the models outside routing follows the table (App: limits, policy, cache)
        self.on_models: list = []

    def _bandit(self, n_models: int):
        if self.policy.bandit != "linucb":
            return None
        from .kernels import N_DENSE
        return bandit_state.LinUCB(n_models, N_DENSE)

    @property
    def table(self):
        return self.ref.table

    def set_models(self, models) -> None:
        """Swap in a table for a changed model set (statistics of kept models carry over)."""
        models = list(models)
        old = self.ref.table
        lin = self._bandit(len(models))
        new = self.ref.swap(models, bandit=lin)
        if lin is not None and isinstance(old.bandit, bandit_state.LinUCB):
            kept = [(new.index[i], old.index[i]) for i in new.ids if i in old.index]
            if kept:
                dst, src = zip(*kept)
                lin.rows(list(src), list(dst), old.bandit)
        self.models = {m.id: m for m in models}
        removed = [i for i in old.ids if i not in new.index]
        if removed and self.on_removed is not None:
            self.on_removed(removed)
        for follow in self.on_models:
            follow(self.models)

    # ---- the decision ---------------------------------------------------------------------------

    def choose(self, request, now: float):
        exp = self.experiment
        if exp is not None and not self.shadow and exp.assign(float(self.rng.rng.random())):
            d = choose_core(request, self.challenger_table, now, self.rng)
            d = d._replace(trace=d.trace._replace(challenger=True))
        else:
            d = choose_core(request, self.ref.table, now, self.rng)
        self.decisions += 1
        self.regret += d.trace.regret
        if log.isEnabledFor(logging.DEBUG):
            log.debug("route %s -> %s (chain %s): %s", request.request_id or "-", d.model,
                      ", ".join(d.fallbacks) or "-", "; ".join(d.reasons))
        return d

    def started(self, decision) -> None:
        report(self.ref.table, Started(decision.model), 0.0)

    def finished(self, ctx, now: float) -> None:
        """Report how a dispatched request ended: failed-over attempts, then the last one.
        Each carries the decision's prompt features, so LinUCB learns from failures too."""
        table, d = self.ref.table, ctx.decision
        if ctx.cache is not None and ctx.cache.entry is not None:
            # answered from the response cache: says nothing about a model; give the slot back
            report(table, Abandoned(ctx.cache.routed), now)
            return
        first = True
        failures = ctx.failures                      # "model: CODE" per failed attempt
        code, last = ctx.code, d.model
        if code and failures and failures[-1].rpartition(": ")[2] == ctx.outcome:
            # dispatch listed the last attempt too (the error raised is the last failure): once,
            # as the end of the request, under the model that made it (not the first choice)
            last = failures[-1].rpartition(": ")[0]
            failures = failures[:-1]
        trace = d.trace if hasattr(d, "trace") else None
        features = trace.features if trace is not None else None
        base = trace.base if features is not None else None
        index = table.index

        def context(model: str) -> dict:
            if base is None or model not in index:
                return {}
            return {"features": features, "base": float(base[index[model]])}
        for failure in failures:
            failed = failure.rpartition(": ")[0]
            report(table, Failed(failed, release=first, **context(failed)), now)
            first = False
        if code == 0 and ctx.finished:
            report(table, Answered(d.model, ctx.upstream_ns / 1e6, ctx.request.latency_slo_ms,
                                   release=first, **context(d.model)), now)
            tenant = ctx.principal.tenant if ctx.principal is not None else ""
            recent = self._recent
            recent[(tenant, ctx.request.request_id)] = (d.model, d.trace)
            while len(recent) > RECENT_DECISIONS:
                recent.popitem(last=False)
        elif code in UPSTREAM_FAULTS:
            report(table, Failed(last, release=first, **context(last)), now)
        else:
            report(table, Abandoned(last, release=first), now)

    def feedback(self, tenant: str, request_id: str, score: float, now: float) -> bool:
        """An explicit score for one answer, under the authenticated tenant that made the request.
        False when the router no longer remembers that request (or it was rated already)."""
        entry = self._recent.pop((tenant, request_id), None)
        if entry is None:
            return False
        model, trace = entry
        base = None
        table = self.ref.table
        if trace is not None and trace.base is not None and model in table.index:
            base = float(trace.base[table.index[model]])
        report(table, Scored(model, score, trace.features if trace else None, base), now)
        self.feedback_applied += 1
        if self.experiment is not None and trace is not None and not self.shadow:
            verdict = self.experiment.observe(trace.challenger, score)
            if verdict is not None:
                self._settle(verdict)
        return True

    # ---- champion / challenger -------------------------------------------------------------------

    def challenge(self, name: str, predictor, share: float, shadow: bool = False) -> None:
        """Start an experiment: a share of decisions made with `predictor` (another router.bin)
        over the same models and the same learned statistics; feedback decides (champion.py).
        shadow: the challenger decides no live request; the shadow mirror (shadow.py) asks it
        about a share of them instead and reports paired scores (shadow_observe)."""
        from .champion import Experiment
        if self.experiment is not None and self.experiment.running:
            raise ValueError(f"an experiment on {self.experiment.challenger} is running")
        exp = Experiment(name, share, pinned=self.pinned)
        t = self.ref.table
        ch = rebuild(t, t.specs, predictor=predictor)
        ch.stats = t.stats              # one set of statistics: both policies learn the same models
        self.experiment, self.challenger_table, self.shadow = exp, ch, shadow
        log.warning("routing: challenger %s %s %.0f%% of decisions", name,
                    "shadows" if shadow else "takes", 100 * share)

    def shadow_choice(self, request, now: float):
        """What the shadow challenger would decide for a request, or None when no shadow
        experiment is running (or it is pinned)."""
        exp = self.experiment
        if not self.shadow or exp is None or not exp.running or exp.pinned:
            return None
        return choose_core(request, self.challenger_table, now, self.rng)

    def shadow_observe(self, champion_score: float, challenger_score: float) -> None:
        """One mirrored request's paired scores: the champion's, then the challenger's (paired
        with it by the test: nothing else feeds a shadow experiment)."""
        exp = self.experiment
        if exp is None or not exp.running:
            return
        exp.observe(False, champion_score)
        verdict = exp.observe(True, challenger_score)
        if verdict is not None:
            self._settle(verdict)

    def operator(self, action: str):
        """promote | rollback | pin | unpin (`atp router ...`); the verdict when one ends the
        experiment. pin freezes the champion: no decision by the challenger and no automatic
        promotion until unpin; it holds with no experiment too (for one started later).
        ValueError says why an action cannot apply."""
        exp = self.experiment
        if action in ("pin", "unpin"):
            self.pinned = action == "pin"
            if exp is not None and exp.running:
                exp.operator(action)
            return None
        if action not in ("promote", "rollback"):
            raise ValueError(f"unknown operator action {action!r}")
        if exp is None:
            raise ValueError("no challenger registered")
        if not exp.running:
            raise ValueError(f"no challenger running: the experiment on {exp.challenger} ended "
                             f"({exp.verdict.action})")
        if action == "promote" and self.pinned:
            raise ValueError("the champion is pinned: `atp router unpin` first")
        verdict = exp.operator(action)
        self._settle(verdict)
        return verdict

    def _settle(self, verdict) -> None:
        if verdict.action == "promote":
            t = self.ref.table
            self.ref.table = new = rebuild(t, t.specs, predictor=self.challenger_table.predictor)
            new.stats = t.stats
            self.predictor = new.predictor
        self.challenger_table = None
        self.verdicts.append(verdict)
        log.warning("routing: challenger %s %s after %d rewards (%.3f vs champion %.3f): %s",
                    verdict.challenger, {"promote": "promoted", "rollback": "rolled back",
                                         "keep": "not better: champion kept"}[verdict.action],
                    verdict.rewards, verdict.challenger_mean, verdict.champion_mean, verdict.reason)
        if self.on_verdict is not None:
            self.on_verdict(verdict)

    # ---- persistence and metrics ------------------------------------------------------------------

    def save(self, path) -> None:
        bandit_state.save(self.ref.table, path)

    def load(self, path) -> int:
        n = bandit_state.load(self.ref.table, path)
        if n:
            log.info("routing: restored posteriors of %d models from %s", n, path)
        return n

    def collector(self):
        return _RoutingCollector(self)


class _RoutingCollector:
    """Routing counters and per-model posteriors for /metrics (labels: configured model ids)."""

    def __init__(self, router: Router):
        self.router = router

    def describe(self):
        return []

    def collect(self):
        r = self.router
        yield CounterMetricFamily("atp_routing_decisions", "Routing decisions made", value=r.decisions)
        yield CounterMetricFamily(
            "atp_routing_regret", "Sum over decisions of the expected utility given up by exploring "
            "(posterior-best minus picked, in quality units)", value=r.regret)
        yield CounterMetricFamily("atp_routing_feedback", "Explicit scores the router learnt from",
                                  value=r.feedback_applied)
        t = r.ref.table
        s = t.stats
        q = GaugeMetricFamily("atp_routing_quality_posterior", "Posterior mean quality (online "
                              "part, over the prior)", labels=["model"])
        lat = GaugeMetricFamily("atp_routing_latency_ewma_ms", "Latency EWMA", labels=["model"])
        n0 = t.policy.prior_strength
        for i, mid in enumerate(t.ids):
            a = n0 * t.prior_quality[i] + s.succ[i]
            q.add_metric([mid], float(a / (n0 + s.succ[i] + s.fail[i])))
            lat.add_metric([mid], float(s.lat_ewma[i]) if math.isfinite(s.lat_ewma[i]) else 0.0)
        yield q
        yield lat
