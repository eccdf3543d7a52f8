"""The routing evaluation through the server's own choose(): a model table for a trained router,
every TEST prompt routed by choose(), the online bandit from scratch, and µs per decision.

The table holds the outcome file's models (whatever they are) with zero prices: their cost is the
trained router's prediction, as in the server when router.bin knows the model. A TEST row with no
outcome for the first model of the chain takes the first model of the chain that has one — what
failover down the chain would do. The online run starts knowing nothing (every model's quality
prior 0.5, prices from TRAIN's mean cost per query: prices are public, quality is what is learnt)
and learns from each routed prompt's score, as Feedback would teach it.
"""
import time

import numpy as np

from atp_server.routing import scoring
from atp_server.routing.choose import choose
from atp_server.routing.config import DEFAULT_TIERS, RoutingConfig, TierWeights
from atp_server.routing.health import HealthBoard
from atp_server.routing.router import Router
from atp_server.routing.spec import ModelSpec
from atp_server.routing.table import build_table
from atp_server.types import ChatRequest

# Latency is not in the outcome files: its weight is 0 so only quality and cost decide.
NO_LATENCY = {t: TierWeights(w.cost_weight, 0.0) for t, w in DEFAULT_TIERS.items()}


def engine_table(pred, bandit: str = "greedy"):
    specs = [ModelSpec(m, "eval", m, 0.0, 0.0, 1 << 30, frozenset({"chat"}), 0.5, 1.0)
             for m in pred.models]
    return build_table(specs, HealthBoard(), predictor=pred,
                       policy=RoutingConfig(bandit=bandit, tiers=NO_LATENCY))


def route_all(pred, test, *, impl=None, **objective) -> np.ndarray:
    """Column index (into test's aligned models) chosen by choose() for every TEST row."""
    table = engine_table(pred)
    rng = np.random.default_rng(0)
    missing = np.isnan(test.score)
    col = {m: j for j, m in enumerate(test.models)}
    tier = objective.pop("tier", "balanced")
    picks = np.empty(len(test), dtype=np.int64)
    for i, prompt in enumerate(test.prompts):
        d = choose(ChatRequest([("user", prompt)], tier=tier, **objective), table, 0.0, rng,
                   impl=impl)
        picks[i] = next(col[m] for m in (d.model,) + d.fallbacks if not missing[i, col[m]])
    return picks


def _priced_specs(train, models):
    train = train.aligned(models)
    mean_cost = np.nanmean(train.cost, axis=0)
    return [ModelSpec(m, "eval", m, 0.0, float(c) * 1e6, 1 << 30, frozenset({"chat"}), 0.5, 1.0,
                      max_output_tokens=1) for m, c in zip(models, mean_cost)]


def run_online_engine(train, test, models, window: int, cost_weight: float, bandit: str,
                      seed: int) -> dict:
    """The server's Router from scratch over TEST in file order, learning from every score."""
    test = test.aligned(models)
    keep = ~np.isnan(test.score).all(axis=1)
    test = test.take(np.flatnonzero(keep))
    # the server's default prior strength (20): a weaker prior (Beta(1, 1)) was measured worse —
    # scoring.py's normal approximation of the Beta draw is too thin-tailed below ~10
    # observations, and three unlucky GPT-4 answers out of three shut it out for good
    r = Router(_priced_specs(train, models),
               policy=RoutingConfig(bandit=bandit, tiers=NO_LATENCY, seed=seed, persist=False))
    col = {m: j for j, m in enumerate(models)}
    missing = np.isnan(test.score)
    n = len(test)
    s_on, c_on = np.empty(n), np.empty(n)
    from atp_server.routing.report import Scored, report
    for i, prompt in enumerate(test.prompts):
        d = r.choose(ChatRequest([("user", prompt)], cost_weight=cost_weight), 0.0)
        m = next(x for x in (d.model,) + d.fallbacks if not missing[i, col[x]])
        y = float(test.score[i, col[m]])
        base = None if d.trace.base is None else float(d.trace.base[r.table.index[m]])
        report(r.table, Scored(m, y, d.trace.features, base), 0.0)
        s_on[i], c_on[i] = y, test.cost[i, col[m]]
    windows = [{"queries": [a, min(n, a + window)], "accuracy": float(s_on[a:a + window].mean()),
                "usd_per_1k": float(c_on[a:a + window].mean() * 1000)} for a in range(0, n, window)]
    return {"bandit": bandit, "cost_weight": cost_weight, "accuracy": float(s_on.mean()),
            "usd_per_1k": float(c_on.mean() * 1000), "regret_sum": r.regret, "windows": windows}


def decision_latency(preds: dict, prompts, repeat: int = 1) -> dict:
    """µs per Router.choose() (features + scoring + sampling + chain + reasons), 16 models, with
    the trained router and without it, for each decision-kernel twin; Thompson sampling on."""
    out = {}
    for impl in (scoring.NUMBA, scoring.NUMPY):
        if impl is None:
            continue
        row = {}
        for name, pred in (("with_predictor", preds[impl.name]), ("priors_only", None)):
            specs = [ModelSpec(f"m{i}", "p", f"m{i}", 0.1 * i, 0.3 * i, 1 << 20, frozenset({"chat"}),
                               0.4 + 0.03 * i, 100.0 + 10 * i) for i in range(16)]
            if pred is not None:
                specs = [ModelSpec(m, "p", m, s.price_in_per_mtok, s.price_out_per_mtok, 1 << 20,
                                   s.capabilities, s.quality, s.latency_ms)
                         for m, s in zip(pred.models, specs)]
            r = Router(specs, policy=RoutingConfig(bandit="thompson", seed=0), predictor=pred)
            reqs = [ChatRequest([("user", p)]) for p in prompts]
            table, rng = r.table, r.rng
            for q in reqs[:50]:
                choose(q, table, 0.0, rng, impl=impl)
            ns = []
            for _ in range(repeat):
                for q in reqs:
                    t0 = time.perf_counter_ns()
                    choose(q, table, 0.0, rng, impl=impl)
                    ns.append(time.perf_counter_ns() - t0)
            a = np.asarray(ns) / 1e3
            row[name] = {"median_us": round(float(np.median(a)), 2),
                         "p99_us": round(float(np.percentile(a, 99)), 2)}
        out[impl.name] = row
    return out
