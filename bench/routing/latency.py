"""Microseconds per routing decision, in-process: features, scoring, selection, and the whole decide().

Measured per prompt with perf_counter_ns around each stage (medians and p99 over the prompts),
for each kernel twin available (numba, numpy). The whole decision is timed separately from the
stages (timer overhead ~50 ns a stage is not counted twice).
"""
import time

import numpy as np

from atp_server.routing import kernels
from atp_server.routing.features import DENSE_NAMES, FeatureConfig, prompt_bytes
from atp_server.routing.predictor import Predictor, select


def random_predictor(n_models: int, cfg: FeatureConfig, rng: np.random.Generator,
                     impl=None) -> Predictor:
    """A router of the right shape with random weights: latency does not depend on the values."""
    W = (rng.standard_normal((cfg.dim, n_models)) * 0.1).astype(np.float32)
    platt = np.tile([1.0, 0.0], (n_models, 1))
    cost_W = (rng.standard_normal((len(DENSE_NAMES), n_models)) * 0.1 - 7).astype(np.float32)
    params = {"cost_W": cost_W, "cost_s2": np.full(n_models, 0.1)}
    tiers = {"fast": 0.2, "balanced": 0.1, "high": 0.03}
    return Predictor([f"m{i}" for i in range(n_models)], cfg, W, platt, "dense", params, 1e-3,
                     tiers, {}, impl)


def measure(pred: Predictor, prompts, repeat: int = 1) -> dict:
    """Per stage medians/p99 in µs over `prompts` (each decided `repeat` times)."""
    ns = time.perf_counter_ns
    f = pred._feat
    impl = pred.impl
    raws = [prompt_bytes(p) for p in prompts]
    lam = pred.tiers["balanced"]
    pred.warm()
    t_feat, t_score, t_select, t_total = [], [], [], []
    for _ in range(repeat):
        for raw in raws:
            t0 = ns()
            n = f(raw)
            t1 = ns()
            impl.score(f.idx, f.val, n, f.dense, pred._W_all, pred._z)
            t2 = ns()
            t_feat.append(t1 - t0)
            t_score.append(t2 - t1)
            q, c = pred.predict(raw)
            t3 = ns()
            select(q, c, cost_weight=lam, cost_ref=pred.cost_ref, impl=impl)
            t4 = ns()
            t_select.append(t4 - t3)
            t5 = ns()
            pred.decide(raw)
            t_total.append(ns() - t5)

    def stat(xs):
        a = np.asarray(xs) / 1e3
        return {"median": round(float(np.median(a)), 2), "p99": round(float(np.percentile(a, 99)), 2)}
    return {"features_us": stat(t_feat), "scoring_us": stat(t_score), "selection_us": stat(t_select),
            "decision_us": stat(t_total), "prompts": len(raws) * repeat,
            "median_prompt_bytes": float(np.median([len(r) for r in raws]))}


def run(prompts, cfg: FeatureConfig, n_models: int, rng: np.random.Generator) -> dict:
    out = {"models": n_models, "features": cfg.as_ints()}
    for impl in (kernels.NUMBA, kernels.NUMPY):
        if impl is not None:
            out[impl.name] = measure(random_predictor(n_models, cfg, rng, impl), prompts)
    return out
