"""How the router's defaults were chosen: configurations compared on splits of TRAIN only (never TEST).

    python -m bench.routing.tune --train TRAIN.jsonl [--seeds 12345 777 4242]

Each seed splits TRAIN 75/25; the router trains on the 75% (with its own internal holdout) and is
scored on the 25%: the cost, as a share of the best single model's, at which the curve's hull
reaches 95% of that model's accuracy (lower is better), the AIQ, and the balanced tier's point.
"""
import argparse
import time

import numpy as np

from atp_server.routing.features import FeatureConfig
from atp_server.routing.predictor import LAMBDA_GRID, batch_inputs, load_outcomes, select_batch, split_rows, train

from . import metrics

CONFIGS = {   # name -> (FeatureConfig kwargs, train kwargs)
    "default (char 4 + words + bigrams, shared, refit)": ({}, {}),
    "no refit": ({}, {"refit": False}),
    "independent heads (l2 3e-3)": ({}, {"shared_l2": None, "l2": 3e-3, "refit": False}),
    "words + bigrams only": ({"char_lo": 0, "char_hi": 0}, {"refit": False}),
    "char 3..5 + words + bigrams": ({"char_lo": 3, "char_hi": 5}, {"refit": False}),
    "bits 18": ({"bits": 18}, {"refit": False}),
    "deltas l2 3e-2": ({}, {"l2": 3e-2, "refit": False}),
    "shared l2 3e-3": ({}, {"shared_l2": 3e-3, "refit": False}),
    # ablation: the same cost predictions, but every prompt gets each model's mean quality
    "quality-blind (mean quality per model, predicted cost)": ({}, {"refit": False, "blind": True}),
}


def score_split(data, fit, val, fkw, tkw) -> dict:
    A, B = data.take(fit), data.take(val)
    cfg = FeatureConfig(**fkw)
    tkw = dict(tkw)
    blind = tkw.pop("blind", False)
    t = time.perf_counter()
    pred = train(A, cfg, **tkw)
    secs = time.perf_counter() - t
    X, raw_len, dense = batch_inputs(B.prompts, cfg)
    q, c = pred.predict_batch(X, raw_len, dense)
    if blind:
        q = np.broadcast_to(np.nanmean(A.score, axis=0), q.shape).copy()
    s, co = np.nan_to_num(B.score), np.nan_to_num(B.cost)
    rows = np.arange(len(B))
    b = int(np.argmax(s.mean(axis=0)))
    acc_b, usd_b = s[:, b].mean(), co[:, b].mean() * 1000
    pts = []
    for lam in LAMBDA_GRID:
        k = select_batch(q, c, cost_weight=lam, cost_ref=pred.cost_ref)
        pts.append((co[rows, k].mean() * 1000, s[rows, k].mean()))
    singles = [co[:, m].mean() * 1000 for m in range(s.shape[1])]
    k = select_batch(q, c, cost_weight=pred.tiers["balanced"], cost_ref=pred.cost_ref)
    c95 = metrics.cost_at_quality(pts, 0.95 * acc_b)
    return {"c95": c95 / usd_b if c95 is not None else np.nan,
            "aiq": metrics.aiq(pts, min(singles), max(singles)),
            "bal_acc": s[rows, k].mean() / acc_b, "bal_cost": co[rows, k].mean() * 1000 / usd_b,
            "train_s": secs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[12345, 777, 4242])
    p.add_argument("--only", nargs="*", help="configuration names to run (default all)")
    args = p.parse_args(argv)
    data = load_outcomes(args.train)
    print("| configuration | cost at 95% of best (per split) | mean | AIQ | balanced: % best acc, "
          "% best cost | train s |")
    print("|---|---|---|---|---|---|")
    for name, (fkw, tkw) in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        res = [score_split(data, *split_rows(len(data), 0.25, np.random.default_rng(seed)), fkw, tkw)
               for seed in args.seeds]
        per = " / ".join(f"{100 * r['c95']:.1f}%" for r in res)
        mean = lambda k: float(np.mean([r[k] for r in res]))  # noqa: E731
        print(f"| {name} | {per} | {100 * mean('c95'):.1f}% | {mean('aiq'):.4f} | "
              f"{100 * mean('bal_acc'):.1f}%, {100 * mean('bal_cost'):.1f}% | {mean('train_s'):.1f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
