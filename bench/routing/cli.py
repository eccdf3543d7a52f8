"""`python -m bench routing`: train the learned router on TRAIN, route every TEST prompt, report.

Every TEST prompt goes through the server's own choose() (bench/routing/engine.py) for the tiers
and the top-level point; the 75-point sweeps use `select_batch` on the same predictions (tested to
pick what choose() picks). "best" is the single
model with the highest TEST accuracy; the oracle takes, per query, the best score at the lowest
cost. Nothing is tuned on TEST: the tier defaults come from a validation split of TRAIN.
In the JSON, a cost_weight null is λ = +inf (always the cheapest predicted model); JSON has no inf.
"""
import argparse
import json
import math
import sys

import numpy as np

from atp_server.routing import kernels
from atp_server.routing.features import FeatureConfig
from atp_server.routing.predictor import (LAMBDA_GRID, TIERS, OnlineRouter, Predictor,
                                          load_outcomes, select, select_batch, train)

from . import engine, latency, metrics

HELP = "learned router: accuracy, cost, cost-quality curve and AIQ on routing-outcome files"
MIN_QUALITY_GRID = np.linspace(0.0, 1.0, 41)   # threshold-rule sweep, steps of 0.025
UNUSABLE_COST = 1e300   # a model with no outcome on a row: never chosen (finite: 0·cost stays 0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", required=True, metavar="TRAIN.jsonl", help="training outcomes")
    p.add_argument("--test", required=True, metavar="TEST.jsonl", help="evaluation outcomes")
    p.add_argument("--router", metavar="router.bin", help="use this trained router, skip training")
    p.add_argument("--online", action="store_true",
                   help="also run the online learner from scratch over TEST (learning curve)")
    p.add_argument("--window", type=int, default=500, metavar="N",
                   help="queries per learning-curve window (default 500)")
    p.add_argument("--latency", action="store_true",
                   help="also measure µs per decision (16 models, TEST prompts)")
    p.add_argument("--seed", type=int, default=0, help="split / online sampling seed (default 0)")
    p.add_argument("--epochs", type=int, default=60, help="L-BFGS passes (default 60)")
    p.add_argument("--cost-weight", type=float, metavar="λ",
                   help="trade-off for the top-level point and --online (default: balanced tier)")
    p.add_argument("--json", action="store_true", help="write one JSON object to stdout")


def _masked(pred, test):
    """Per-row predictions with models lacking an outcome made unchoosable."""
    q = np.empty(test.score.shape)
    c = np.empty(test.score.shape)
    for i, prompt in enumerate(test.prompts):
        q[i], c[i] = pred.predict(prompt)
    missing = np.isnan(test.score)
    return np.where(missing, -1.0, q), np.where(missing, UNUSABLE_COST, c)


def _lam(x: float):
    return None if x == math.inf else float(x)


def _jsonable(x):
    """Non-finite floats (λ = inf, chiefly) become null; numpy scalars become Python numbers."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _realised(test, picks):
    rows = np.arange(len(picks))
    return test.score[rows, picks], test.cost[rows, picks]


def evaluate(pred: Predictor, test, cost_weight: float | None = None) -> dict:
    test = test.aligned(pred.models)
    keep = ~np.isnan(test.score).all(axis=1)
    test = test.take(np.flatnonzero(keep))
    if len(test) == 0:
        raise SystemExit("no TEST row has an outcome for any model the router knows")
    names = pred.models
    q, c = _masked(pred, test)
    singles = {}
    for m, name in enumerate(names):
        has = ~np.isnan(test.score[:, m])
        singles[name] = (float(np.mean(test.score[has, m])) if has.any() else 0.0,
                         float(np.mean(test.cost[has, m]) * 1000) if has.any() else math.inf)
    best_name = max(names, key=lambda n: (singles[n][0], -singles[n][1]))
    best = {"accuracy": singles[best_name][0], "usd_per_1k": singles[best_name][1]}
    s0 = np.nan_to_num(test.score, nan=-1.0)
    c0 = np.where(np.isnan(test.cost), UNUSABLE_COST, test.cost)
    ref = pred.cost_ref
    opick = select_batch(s0, c0, cost_weight=0.0, cost_ref=ref)
    o_s, o_c = _realised(test, opick)
    oracle_acc = float(np.mean(o_s))
    fin = [v for v in singles.values() if math.isfinite(v[1])]
    c_lo, c_hi = min(v[1] for v in fin), max(v[1] for v in fin)

    def pt(picks):
        s, cc = _realised(test, picks)
        return metrics.point(s, cc, best, oracle_acc)

    # the server's own choose(), one prompt at a time, for the tiers and the top-level point
    tiers = {}
    for t in TIERS:
        tiers[t] = {"cost_weight": pred.tiers[t], **pt(engine.route_all(pred, test, tier=t))}
    lam = pred.tiers["balanced"] if cost_weight is None else cost_weight
    top = pt(engine.route_all(pred, test, cost_weight=lam))

    curve = [{"cost_weight": _lam(l), **{k: v for k, v in
              pt(select_batch(q, c, cost_weight=l, cost_ref=ref)).items()
              if k in ("accuracy", "usd_per_1k")}} for l in LAMBDA_GRID]
    curve_q = [{"min_quality": float(t), **{k: v for k, v in
                pt(select_batch(q, c, min_quality=t, cost_ref=ref)).items()
                if k in ("accuracy", "usd_per_1k")}} for t in MIN_QUALITY_GRID]
    xy = [(p["usd_per_1k"], p["accuracy"]) for p in curve]
    xyq = [(p["usd_per_1k"], p["accuracy"]) for p in curve_q]
    oracle_curve = [{"cost_weight": _lam(l), **{k: v for k, v in
                     pt(select_batch(s0, c0, cost_weight=l, cost_ref=ref)).items()
                     if k in ("accuracy", "usd_per_1k")}} for l in LAMBDA_GRID]
    zero_pts = [(u, a) for a, u in singles.values() if math.isfinite(u)]
    zero_hull = metrics.nd_hull(zero_pts)
    hull = metrics.nd_hull(xy)
    c95 = metrics.cost_at_quality(xy, 0.95 * best["accuracy"])

    models_out = {}
    for name, (a, u) in singles.items():
        models_out[name] = {**metrics.point(np.array([a]), np.array([u / 1000]), best, oracle_acc),
                            "aiq": metrics.aiq([(u, a)], c_lo, c_hi)}
    out = {
        **top,
        "cost_weight": lam, "tier": "balanced" if cost_weight is None else None,
        "curve": curve,
        "aiq": metrics.aiq(xy, c_lo, c_hi),
        "curve_min_quality": curve_q,
        "aiq_min_quality": metrics.aiq(xyq, c_lo, c_hi),
        "cost_range_usd_per_1k": [c_lo, c_hi],
        "usd_per_1k_at_95pct_of_best": c95,
        "pct_of_best_cost_at_95pct_of_best": 100 * c95 / best["usd_per_1k"] if c95 is not None else None,
        "max_accuracy_on_curve": float(hull[-1, 1]),
        "max_gap_captured_pct": (100 * (hull[-1, 1] - best["accuracy"]) / (oracle_acc - best["accuracy"])
                                 if oracle_acc > best["accuracy"] else 0.0),
        "tiers": tiers,
        "best_model": best_name,
        "models": models_out,
        "zero_router": {"aiq": metrics.aiq(zero_pts, c_lo, c_hi),
                        "curve": [{"usd_per_1k": float(x), "accuracy": float(y)} for x, y in zero_hull]},
        "oracle": {**metrics.point(o_s, o_c, best, oracle_acc), "curve": oracle_curve,
                   "aiq": metrics.aiq([(p["usd_per_1k"], p["accuracy"]) for p in oracle_curve],
                                      c_lo, c_hi)},
        "test_rows": len(test), "dropped_test_rows": int((~keep).sum()),
    }
    return out


def run_online(pred: Predictor, test, window: int, cost_weight: float, seed: int) -> dict:
    """The online learner from scratch over TEST in file order, vs the offline router per window."""
    test = test.aligned(pred.models)
    keep = ~np.isnan(test.score).all(axis=1)
    test = test.take(np.flatnonzero(keep))
    rng = np.random.default_rng(seed)
    online = OnlineRouter(pred.models, pred.cfg, impl=pred.impl)
    missing = np.isnan(test.score)
    n = len(test)
    s_on, c_on, s_off, c_off = (np.empty(n) for _ in range(4))
    for i, prompt in enumerate(test.prompts):
        choice, ctx = online.decide(prompt, rng, cost_weight=cost_weight, cost_ref=pred.cost_ref)
        m = next(j for j in choice.order if not missing[i, j])
        online.update(ctx, m, float(test.score[i, m]), float(test.cost[i, m]))
        s_on[i], c_on[i] = test.score[i, m], test.cost[i, m]
        q, c = pred.predict(prompt)
        q = np.where(missing[i], -1.0, q)
        c = np.where(missing[i], UNUSABLE_COST, c)
        k = select(q, c, cost_weight=cost_weight, cost_ref=pred.cost_ref).best
        s_off[i], c_off[i] = test.score[i, k], test.cost[i, k]
    windows = []
    for a in range(0, n, window):
        b = min(n, a + window)
        windows.append({"queries": [a, b],
                        "accuracy": float(s_on[a:b].mean()), "usd_per_1k": float(c_on[a:b].mean() * 1000),
                        "offline_accuracy": float(s_off[a:b].mean()),
                        "offline_usd_per_1k": float(c_off[a:b].mean() * 1000)})
    return {"cost_weight": cost_weight, "window": window, "accuracy": float(s_on.mean()),
            "usd_per_1k": float(c_on.mean() * 1000), "offline_accuracy": float(s_off.mean()),
            "offline_usd_per_1k": float(c_off.mean() * 1000), "windows": windows}


def _table(res: dict) -> str:
    lines = [f"{'policy':<44} {'accuracy':>8} {'USD/1k':>9} {'% best acc':>10} {'saved %':>8} "
             f"{'gap %':>7} {'AIQ':>7}"]

    def row(name, p, aiq=None):
        aiq_s = f"{aiq:7.4f}" if aiq is not None else " " * 7
        lines.append(f"{name[:44]:<44} {p['accuracy']:8.4f} {p['usd_per_1k']:9.4f} "
                     f"{p['pct_of_best_accuracy']:10.1f} {p['savings_vs_best_pct']:8.1f} "
                     f"{p['gap_captured_pct']:7.1f} {aiq_s}")
    for name, p in res["models"].items():
        row(f"always {name}", p, p["aiq"])
    lines.append(f"{'zero router (hull of single models)':<44} {'':>8} {'':>9} {'':>10} {'':>8} "
                 f"{'':>7} {res['zero_router']['aiq']:7.4f}")
    row("oracle (best score, then cheapest)", res["oracle"], res["oracle"]["aiq"])
    for t, p in res["tiers"].items():
        row(f"learned router, tier {t} (λ={p['cost_weight']:.3g})", p,
            res["aiq"] if t == "balanced" else None)
    c95 = res["pct_of_best_cost_at_95pct_of_best"]
    lines.append("")
    lines.append(f"curve: {len(res['curve'])} λ points; AIQ {res['aiq']:.4f} vs zero router "
                 f"{res['zero_router']['aiq']:.4f} (threshold rule: {res['aiq_min_quality']:.4f}); "
                 f"oracle {res['oracle']['aiq']:.4f}")
    lines.append("cost at 95% of best accuracy: " + (f"{c95:.1f}% of {res['best_model']}'s"
                                                     if c95 is not None else "not reached"))
    lines.append(f"max accuracy on curve {res['max_accuracy_on_curve']:.4f} "
                 f"({res['max_gap_captured_pct']:.1f}% of the best→oracle gap)")
    if "online" in res:
        o = res["online"]
        lines.append("")
        lines.append(f"online (from scratch, λ={o['cost_weight']:.3g}): accuracy {o['accuracy']:.4f}, "
                     f"USD/1k {o['usd_per_1k']:.4f}; offline router on the same queries "
                     f"{o['offline_accuracy']:.4f}, {o['offline_usd_per_1k']:.4f}")
        lines.append(f"{'window':>13} {'online acc':>10} {'USD/1k':>8} {'offline acc':>11} {'USD/1k':>8}")
        for w in o["windows"]:
            lines.append(f"{w['queries'][0]:>6}-{w['queries'][1]:<6} {w['accuracy']:10.4f} "
                         f"{w['usd_per_1k']:8.4f} {w['offline_accuracy']:11.4f} "
                         f"{w['offline_usd_per_1k']:8.4f}")
    for b, o in res.get("online_engine", {}).items():
        lines.append("")
        lines.append(f"server Router from scratch ({b}, λ={o['cost_weight']:.3g}): accuracy "
                     f"{o['accuracy']:.4f}, USD/1k {o['usd_per_1k']:.4f}, Σ expected regret "
                     f"{o['regret_sum']:.1f}")
        lines.append("  windows (accuracy, USD/1k): " + ", ".join(
            f"{w['queries'][0]}-{w['queries'][1]}: {w['accuracy']:.3f} {w['usd_per_1k']:.3f}"
            for w in o["windows"]))
    if "latency" in res:
        lat = res["latency"]
        lines.append("")
        for impl, row in lat.get("choose", {}).items():
            lines.append(f"µs per choose() (16 models, Thompson), {impl}: with trained router "
                         f"{row['with_predictor']['median_us']} median / "
                         f"{row['with_predictor']['p99_us']} p99; priors only "
                         f"{row['priors_only']['median_us']} / {row['priors_only']['p99_us']}")
        for impl in ("numba", "numpy"):
            if impl in lat:
                m = lat[impl]
                lines.append(f"µs per decision, {lat['models']} models, {impl}: features "
                             f"{m['features_us']['median']}, scoring {m['scoring_us']['median']}, "
                             f"selection {m['selection_us']['median']}, whole decide() "
                             f"{m['decision_us']['median']} median / {m['decision_us']['p99']} p99")
    return "\n".join(lines)


def main(args) -> int:
    train_data = load_outcomes(args.train)
    test = load_outcomes(args.test)
    if args.router:
        pred = Predictor.load(args.router)
    else:
        pred = train(train_data, FeatureConfig(), seed=args.seed, epochs=args.epochs)
    res = evaluate(pred, test, args.cost_weight)
    res["train"] = pred.report
    res["kernels"] = kernels.IMPL.name
    if args.online:
        lam = pred.tiers["balanced"] if args.cost_weight is None else args.cost_weight
        res["online"] = run_online(pred, test, args.window, lam, args.seed)
        res["online_engine"] = {
            b: engine.run_online_engine(train_data, test, pred.models, args.window, lam, b, args.seed)
            for b in ("thompson", "linucb")}
    if args.latency:
        rng = np.random.default_rng(args.seed)
        res["latency"] = latency.run(test.prompts, pred.cfg, 16, rng)
        preds = {k.name: latency.random_predictor(16, pred.cfg, rng, k)
                 for k in (kernels.NUMBA, kernels.NUMPY) if k is not None}
        res["latency"]["choose"] = engine.decision_latency(preds, test.prompts[:2000])
    if args.json:
        json.dump(_jsonable(res), sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print(_table(res))
    return 0
