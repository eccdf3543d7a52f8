"""Routing figures: a policy's accuracy and cost, the cost–quality curve, and RouterBench's AIQ.

AIQ (Hu et al. 2024, "RouterBench: A Benchmark for Multi-LLM Routing System", §4.2: "average
improvement in quality"): sweep the router's trade-off parameter to get (cost, quality) points;
take their non-decreasing convex hull R̃ — the upper concave envelope, cut at its highest point
(mixing two operating points at random realises any point of the segment between them, and more
budget can always be left unspent, so quality never falls as cost rises); then

    AIQ = 1/(c_hi − c_lo) · ∫_{c_lo}^{c_hi} R̃(c) dc

Precisely, here: c is USD per 1k queries; [c_lo, c_hi] is the span of the single models' costs,
the same for every policy compared so that their AIQs compare; R̃ is linear between hull vertices,
flat after the last one, and 0 before the first one (a cost the policy cannot reach earns nothing);
the integral is exact (trapezoids on the breakpoints). The *zero router* is the hull of the single
models' points: what random mixing of fixed models gets without looking at the prompt. When every
model costs the same, AIQ is R̃ at that cost.
"""
import numpy as np


def nd_hull(points) -> np.ndarray:
    """Non-decreasing upper convex hull of (cost, quality) points, sorted by cost."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    p = p[np.isfinite(p).all(axis=1)]
    if len(p) == 0:
        return p
    p = p[np.lexsort((-p[:, 1], p[:, 0]))]   # by cost, best quality first among equal costs
    hull: list = []
    for x, y in p:
        if hull and hull[-1][0] == x:
            continue                         # same cost, lower quality
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) >= 0:   # hull[-1] on/below the chord
                hull.pop()
            else:
                break
        hull.append((x, y))
    h = np.array(hull)
    return h[: int(np.argmax(h[:, 1])) + 1]


def hull_value(h: np.ndarray, c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    v = np.interp(c, h[:, 0], h[:, 1], left=0.0, right=h[-1, 1])
    return np.where(c < h[0, 0], 0.0, v)


def aiq(points, c_lo: float, c_hi: float) -> float:
    h = nd_hull(points)
    if len(h) == 0:
        return 0.0
    if c_hi <= c_lo:
        return float(hull_value(h, np.array([c_lo]))[0])
    xs = np.unique(np.concatenate([[c_lo, c_hi], h[:, 0], np.nextafter(h[:1, 0], -np.inf)]))
    xs = xs[(xs >= c_lo) & (xs <= c_hi)]
    ys = hull_value(h, xs)
    return float(np.trapezoid(ys, xs) / (c_hi - c_lo))


def cost_at_quality(points, quality: float) -> float | None:
    """Least cost at which the hull reaches `quality` (None if it never does)."""
    h = nd_hull(points)
    if len(h) == 0 or h[-1, 1] < quality:
        return None
    if h[0, 1] >= quality:
        return float(h[0, 0])
    return float(np.interp(quality, h[:, 1], h[:, 0]))


def point(score: np.ndarray, cost: np.ndarray, best: dict, oracle_acc: float) -> dict:
    """Figures of one policy from the realised per-query score and cost of its choices."""
    acc = float(np.mean(score)) if len(score) else 0.0
    usd = float(np.mean(cost) * 1000) if len(cost) else 0.0
    gap = oracle_acc - best["accuracy"]
    return {
        "accuracy": acc,
        "usd_per_1k": usd,
        "savings_vs_best_pct": 100.0 * (1.0 - usd / best["usd_per_1k"]) if best["usd_per_1k"] else 0.0,
        "pct_of_best_accuracy": 100.0 * acc / best["accuracy"] if best["accuracy"] else 0.0,
        "regret_vs_oracle": oracle_acc - acc,
        "gap_captured_pct": 100.0 * (acc - best["accuracy"]) / gap if gap > 0 else 0.0,
    }
