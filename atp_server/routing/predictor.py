"""The learned router: per-model quality and cost predictors trained offline, one validated file.

Quality: one L2-regularised logistic regression per model on the hashed prompt features (soft
labels, so fractional scores work), fitted by full-batch L-BFGS — a convex problem, so the result
does not depend on a seed, only on the data and the split — then Platt-calibrated per model on a
validation split (the router's confidence is a probability, so it must be one).
Cost: per model, either a line in prompt length ("length"), or log cost regressed on the dense
block ("dense") or on every feature ("hashed"); all three are measured on the validation split and
the best is kept. Tier defaults (fast/balanced/high) are chosen on that validation split too.

Also here: the pure selection policy (`select`, and `select_batch` for evaluation sweeps) and the
online learner (`OnlineRouter`). Pure: no clock, no RNG inside (the split takes a seed, the
online learner an RNG).
"""
import io
import json
import math
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from . import kernels
from .features import DENSE_NAMES, Csr, FeatureConfig, Featurizer, featurize_many, prompt_bytes

FORMAT = "atp-router"
VERSION = 1
COST_KINDS = ("length", "dense", "hashed")
TIERS = ("fast", "balanced", "high")
# Ridge penalty of the log-cost regressions: 17 dense columns against thousands of rows are well
# determined, so the penalty only has to keep the solve defined when a column is constant or
# collinear (a flag never set in the data); 1e-4 is small next to the features' unit scale.
COST_L2 = 1e-4
# Tier targets: share of the best single model's validation accuracy each tier keeps for the least
# money. 95% is the operating point the routing literature reports (RouteLLM: "95% of GPT-4
# quality"); high keeps 99%, fast accepts 90%.
TIER_TARGETS = {"fast": 0.90, "balanced": 0.95, "high": 0.99}
# The trade-off grid: λ in units of "quality per cost_ref"; geometric because useful λ spans
# decades (from 'quality at any price' to 'cheapest'), 0 and +inf close the curve at both ends.
LAMBDA_GRID = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 73), [np.inf]])


class RouterFileError(ValueError):
    """router.bin is missing, corrupt, of another format or version, or inconsistent."""


class DataError(ValueError):
    """A routing-outcome file line is malformed (the message names the line)."""


# ---- outcome data ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Outcomes:
    """Queries and what every model scored/cost on each (NaN where a model has no outcome)."""
    prompts: list
    models: tuple
    score: np.ndarray   # float64 [N, M] in [0, 1]
    cost: np.ndarray    # float64 [N, M] USD

    def __len__(self):
        return len(self.prompts)

    def take(self, rows) -> "Outcomes":
        rows = np.asarray(rows, dtype=np.int64)
        return Outcomes([self.prompts[i] for i in rows], self.models, self.score[rows],
                        self.cost[rows])

    def aligned(self, models) -> "Outcomes":
        """The same rows with columns in `models` order (missing models become NaN)."""
        col = {m: j for j, m in enumerate(self.models)}
        score = np.full((len(self), len(models)), np.nan)
        cost = np.full((len(self), len(models)), np.nan)
        for k, m in enumerate(models):
            if m in col:
                score[:, k] = self.score[:, col[m]]
                cost[:, k] = self.cost[:, col[m]]
        return Outcomes(self.prompts, tuple(models), score, cost)


def parse_outcomes(lines, source: str = "<data>") -> Outcomes:
    """Parse JSON lines {"prompt", "outcomes": {model: {"score", "cost_usd"}}} (other keys ignored)."""
    prompts, rows = [], []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            prompt, outcomes = obj["prompt"], obj["outcomes"]
            if not isinstance(prompt, str) or not isinstance(outcomes, dict) or not outcomes:
                raise TypeError("prompt must be a string and outcomes a non-empty object")
            row = {}
            for m, o in outcomes.items():
                s, c = float(o["score"]), float(o["cost_usd"])
                if not (0.0 <= s <= 1.0) or not (c >= 0.0 and math.isfinite(c)):
                    raise ValueError(f"model {m!r}: score must be in [0, 1] and cost_usd >= 0")
                row[m] = (s, c)
        except (ValueError, TypeError, KeyError) as exc:
            raise DataError(f"{source}:{no}: {type(exc).__name__}: {exc}") from None
        prompts.append(prompt)
        rows.append(row)
    if not rows:
        raise DataError(f"{source}: no rows")
    models = tuple(sorted({m for r in rows for m in r}))
    col = {m: j for j, m in enumerate(models)}
    score = np.full((len(rows), len(models)), np.nan)
    cost = np.full((len(rows), len(models)), np.nan)
    for i, r in enumerate(rows):
        for m, (s, c) in r.items():
            score[i, col[m]] = s
            cost[i, col[m]] = c
    return Outcomes(prompts, models, score, cost)


def load_outcomes(path) -> Outcomes:
    with open(path, encoding="utf-8") as f:
        return parse_outcomes(f, str(path))


def split_rows(n: int, holdout: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, holdout rows), both sorted; the RNG is passed in (pure)."""
    perm = rng.permutation(n)
    k = int(round(n * holdout))
    return np.sort(perm[k:]), np.sort(perm[:k])


# ---- optimisation ---------------------------------------------------------------------------------------

def _dot(a, b) -> float:
    # einsum's own loop, not BLAS: a threaded OpenBLAS ddot was measured 100× slower (16 ms vs
    # 0.13 ms for 131k doubles) on this 2-core shared box, and L-BFGS does ~4·history dots a step
    return float(np.einsum("i,i->", a, b))


def lbfgs(fun, x0: np.ndarray, max_evals: int, history: int = 8, gtol: float = 1e-7):
    """Minimise a smooth convex fun(x) -> (f, grad) by L-BFGS with Armijo backtracking.

    Nocedal & Wright, Numerical Optimization, alg. 7.4/7.5; history 8 is in their recommended 3..20.
    Returns (x, f, evaluations). Stops when the gradient's max-norm is under gtol or after
    max_evals function evaluations (each is one pass over the data).
    """
    x = x0.copy()
    f, g = fun(x)
    evals = 1
    mem: list = []
    while evals < max_evals and np.max(np.abs(g)) > gtol:
        q = g.copy()
        alphas = []
        for s, y, rho in reversed(mem):
            a = rho * _dot(s, q)
            q -= a * y
            alphas.append(a)
        if mem:
            s, y, _ = mem[-1]
            q *= _dot(s, y) / _dot(y, y)
        else:
            q /= max(1.0, math.sqrt(_dot(g, g)))      # first step: unit length, not unit gradient
        for (s, y, rho), a in zip(mem, reversed(alphas)):
            q += s * (a - rho * _dot(y, q))
        d = -q
        gd = _dot(g, d)
        if gd >= 0:   # lost descent (numerical): restart from steepest descent
            mem.clear()
            d, gd = -g, -_dot(g, g)
        t = 1.0
        while True:
            xn = x + t * d
            fn, gn = fun(xn)
            evals += 1
            if fn <= f + 1e-4 * t * gd or evals >= max_evals:   # Armijo c1 = 1e-4 (N&W §3.1)
                break
            t *= 0.5
        if not fn <= f:
            break
        s, y = xn - x, gn - g
        sy = _dot(s, y)
        if sy > 1e-12 * max(1.0, _dot(y, y)):   # keep only curvature pairs that keep H positive
            mem.append((s, y, 1.0 / sy))
            if len(mem) > history:
                mem.pop(0)
        converged = f - fn <= 1e-10 * max(1.0, abs(f))
        x, f, g = xn, fn, gn
        if converged:
            break
    return x, f, evals


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))   # overflow-free logistic


def fit_heads(X: Csr, Y: np.ndarray, mask: np.ndarray, alpha: float, loss: str, max_evals: int,
              impl=None, shared_alpha: float | None = None) -> np.ndarray:
    """Fit H linear heads on CSR X by L-BFGS; loss "logistic" (Y in [0,1]) or "squared".

    Objective per head: mean over its rows (mask) of the loss + alpha/2 ||w||², the bias row
    excepted. With shared_alpha, head h's weights are w0 + d_h: a shared part (penalty
    shared_alpha) that learns what makes a prompt hard for every model, and per-model deltas
    (penalty alpha) that learn who is better where — routing depends only on the deltas, which
    independent heads would learn as differences of two noisy estimates (multi-task L2, Evgeniou
    & Pontil 2004). Returns the effective W float64 [dim, H].
    """
    impl = impl or kernels.IMPL
    n_rows, H = Y.shape
    dim = X.dim
    bias_row = dim - len(DENSE_NAMES)            # DENSE_NAMES[0] is the bias
    S = 0 if shared_alpha is None else 1         # extra shared column first
    cols = H + S
    reg = np.full((dim, cols), alpha)
    reg[bias_row, S:] = 0.0                      # per-model intercepts are not shrunk
    if S:
        reg[:, 0] = shared_alpha
    Yz = np.where(mask, Y, 0.0)
    inv_n = 1.0 / np.maximum(mask.sum(axis=0), 1)
    wmask = mask * inv_n
    Zall = np.empty((n_rows, cols))
    Gall = np.empty((n_rows, cols))
    grad = np.empty((dim, cols))

    def fun(wflat):
        P = wflat.reshape(dim, cols)
        impl.csr_matmul(X.indptr, X.idx, X.val, P, Zall)
        Z = Zall[:, S:] + Zall[:, :1] if S else Zall
        if loss == "logistic":
            f = float((wmask * (np.logaddexp(0.0, Z) - Yz * Z)).sum())
            G = wmask * (_sigmoid(Z) - Yz)
        else:
            r = Z - Yz
            f = float(0.5 * (wmask * r * r).sum())
            G = wmask * r
        Gall[:, S:] = G
        if S:
            Gall[:, 0] = G.sum(axis=1)
        impl.csr_tmatmul(X.indptr, X.idx, X.val, Gall, grad)
        RP = reg * P
        f += 0.5 * float((RP * P).sum())
        return f, (grad + RP).ravel()

    x0 = np.zeros((dim, cols))
    if loss == "squared":
        x0[bias_row, S:] = (Yz * wmask).sum(axis=0)   # start at the mean target
    w, _, _ = lbfgs(fun, x0.ravel(), max_evals)
    P = w.reshape(dim, cols)
    return P[:, S:] + P[:, :1] if S else P


def fit_platt(z: np.ndarray, y: np.ndarray, iters: int = 50) -> tuple[float, float]:
    """Platt scaling p = σ(a·z + b) by Newton on the validation log-loss (Platt 1999).

    A ridge of 1e-3 toward (a, b) = (1, 0) keeps it defined when z is constant or separable.
    """
    a, b = 1.0, 0.0
    ridge = 1e-3
    n = max(len(z), 1)
    for _ in range(iters):
        p = _sigmoid(a * z + b)
        r = p - y
        ga = (r * z).sum() / n + ridge * (a - 1.0)
        gb = r.sum() / n + ridge * b
        w = p * (1.0 - p)
        haa = (w * z * z).sum() / n + ridge
        hab = (w * z).sum() / n
        hbb = w.sum() / n + ridge
        det = haa * hbb - hab * hab
        if det <= 0:
            break
        da = (hbb * ga - hab * gb) / det
        db = (haa * gb - hab * ga) / det
        a, b = a - da, b - db
        if abs(da) + abs(db) < 1e-10:
            break
    return float(a), float(b)


def log_loss(p, y):
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


# ---- selection policy (pure) -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Choice:
    """An ordered failover chain (model indices) and why; reasons are rendered only on demand."""
    order: tuple
    quality: np.ndarray     # predicted quality per model (probability of meeting the target)
    cost: np.ndarray        # expected cost per model, USD
    rule: str               # "cost_weight" or "min_quality"
    param: float

    @property
    def best(self) -> int:
        return self.order[0]

    @property
    def confidence(self) -> float:
        return float(self.quality[self.order[0]])

    def chain(self, names) -> tuple:
        return tuple(names[i] for i in self.order)

    def reasons(self, names, cost_ref: float = 1.0) -> tuple:
        b = self.order[0]
        head = (f"predicted quality {self.quality[b]:.3f}, expected cost ${self.cost[b]:.6f} "
                f"for {names[b]}")
        if self.rule == "cost_weight":
            u = self.quality - (self.param / cost_ref) * self.cost if self.param != np.inf \
                else -self.cost
            why = (f"max quality - {self.param:g}·cost/{cost_ref:.3g} USD over {len(self.order)} "
                   f"candidates (utility {u[b]:.3f}; runner-up {names[self.order[1]]} "
                   f"{u[self.order[1]]:.3f})" if len(self.order) > 1 else "only candidate")
        else:
            ok = int((self.quality >= self.param).sum())
            why = (f"cheapest of {ok} models with predicted quality >= {self.param:g}" if ok else
                   f"no model predicted >= {self.param:g}: highest predicted quality")
        return (why, head)


def select(quality: np.ndarray, cost: np.ndarray, *, cost_weight: float | None = None,
           min_quality: float | None = None, cost_ref: float = 1.0, impl=None) -> Choice:
    """Order candidate models for one request.

    cost_weight λ: maximise quality − λ·cost/cost_ref (cost_ref: the mean per-query cost of the
    priciest model on the training data, so λ = 1 means "a certain success is worth one average
    query on the priciest model"); λ = 0 is max quality, λ = inf is cheapest. Ties go to the cheaper
    model, then to the lower index (deterministic).
    min_quality q: the cheapest model with predicted quality ≥ q first (cheapest-first among those),
    then the rest by decreasing quality; if none reaches q, highest quality first.
    """
    if (cost_weight is None) == (min_quality is None):
        raise ValueError("give exactly one of cost_weight or min_quality")
    impl = impl or kernels.IMPL
    quality = np.ascontiguousarray(quality, dtype=np.float64)
    cost = np.ascontiguousarray(cost, dtype=np.float64)
    order = np.empty(quality.shape[0], dtype=np.int64)
    if cost_weight is not None:
        if cost_weight == np.inf:
            impl.order(quality, cost, 1, 0.0, order)
        else:
            impl.order(quality, cost, 0, cost_weight / cost_ref, order)
        return Choice(tuple(order.tolist()), quality, cost, "cost_weight", float(cost_weight))
    impl.order(quality, cost, 2, float(min_quality), order)
    return Choice(tuple(order.tolist()), quality, cost, "min_quality", float(min_quality))


def select_batch(quality: np.ndarray, cost: np.ndarray, *, cost_weight: float | None = None,
                 min_quality: float | None = None, cost_ref: float = 1.0) -> np.ndarray:
    """The first choice of `select` for every row of [N, M] arrays (same rule, same ties)."""
    n = quality.shape[0]
    if (cost_weight is None) == (min_quality is None):
        raise ValueError("give exactly one of cost_weight or min_quality")
    if cost_weight is not None:
        if cost_weight == np.inf:
            key1, key2 = cost, -quality
        else:
            key1, key2 = -(quality - (cost_weight / cost_ref) * cost), cost
    else:
        ok = quality >= min_quality
        anyok = ok.any(axis=1, keepdims=True)
        key1 = np.where(anyok, np.where(ok, cost, np.inf), -quality)
        key2 = np.where(anyok, -quality, 0.0)
    # lexicographic argmin over (key1, key2, index): minimum of key1, then of key2 among ties
    k1min = key1.min(axis=1, keepdims=True)
    tie = key1 == k1min
    k2 = np.where(tie, key2, np.inf)
    k2min = k2.min(axis=1, keepdims=True)
    return np.argmax(tie & (k2 == k2min), axis=1) if n else np.zeros(0, np.int64)


# ---- cost models -----------------------------------------------------------------------------------------

def _fit_cost(kind: str, X: Csr, raw_len: np.ndarray, dense: np.ndarray, C: np.ndarray,
              mask: np.ndarray, alpha: float, max_evals: int, impl) -> dict:
    """Fit one cost model kind; returns its parameters (arrays only: they go into router.bin)."""
    M = C.shape[1]
    if kind == "length":
        # per model least squares cost = a + b·bytes, a, b >= 0 (a: the answer's typical cost)
        coef = np.zeros((2, M))
        for m in range(M):
            r = mask[:, m]
            A = np.stack([np.ones(r.sum()), raw_len[r]], axis=1)
            sol = np.linalg.lstsq(A, C[r, m], rcond=None)[0] if r.any() else np.zeros(2)
            if sol[1] < 0 or sol[0] < 0:  # refit the one-parameter model that stays non-negative
                sol = np.array([0.0, C[r, m].sum() / max(raw_len[r].sum(), 1.0)])
            coef[:, m] = sol
        return {"cost_coef": coef}
    logc = np.log(np.maximum(C, 1e-12))
    if kind == "dense":
        W = np.zeros((dense.shape[1], M))
        for m in range(M):
            r = mask[:, m]
            A = dense[r]
            reg = alpha * r.sum() * np.eye(A.shape[1])
            reg[0, 0] = 0.0                     # no shrinkage of the intercept
            W[:, m] = np.linalg.solve(A.T @ A + reg + 1e-9 * np.eye(A.shape[1]), A.T @ logc[r, m])
        resid = np.where(mask, logc - dense @ W, 0.0)
    else:
        W = fit_heads(X, logc, mask, alpha, "squared", max_evals, impl)
        Z = np.empty((X.n_rows, M))
        impl.csr_matmul(X.indptr, X.idx, X.val, W, Z)
        resid = np.where(mask, logc - Z, 0.0)
    # E[c] = exp(mu + s²/2) for log-normal residuals: the mean, not the median, is what is spent
    s2 = (resid ** 2).sum(axis=0) / np.maximum(mask.sum(axis=0), 1)
    return {"cost_W": W.astype(np.float32), "cost_s2": s2}


def _predict_cost_batch(kind, params, X: Csr, raw_len, dense, impl) -> np.ndarray:
    if kind == "length":
        coef = params["cost_coef"]
        return coef[0][None, :] + raw_len[:, None] * coef[1][None, :]
    W = params["cost_W"].astype(np.float64)
    if kind == "dense":
        Z = dense @ W
    else:
        Z = np.empty((X.n_rows, W.shape[1]))
        impl.csr_matmul(X.indptr, X.idx, X.val, W, Z)
    return np.exp(Z + 0.5 * params["cost_s2"][None, :])


def cost_errors(pred: np.ndarray, C: np.ndarray, mask: np.ndarray) -> dict:
    """Relative absolute error Σ|ĉ − c| / Σc (money-weighted) and mean |log ĉ − log c|, per model."""
    absdiff = np.where(mask, np.abs(pred - C), 0.0).sum(axis=0)
    tot = np.where(mask, C, 0.0).sum(axis=0)
    logerr = np.where(mask, np.abs(np.log(np.maximum(pred, 1e-12))
                                   - np.log(np.maximum(C, 1e-12))), 0.0).sum(axis=0)
    n = np.maximum(mask.sum(axis=0), 1)
    return {"rel_abs_err": (absdiff / np.maximum(tot, 1e-300)).tolist(),
            "mean_abs_log_err": (logerr / n).tolist(),
            "total_rel_abs_err": float(absdiff.sum() / max(tot.sum(), 1e-300))}


# ---- the trained router -------------------------------------------------------------------------------------

class Predictor:
    """Loaded router.bin: predicts (quality, cost) per model for a prompt and orders the models."""

    def __init__(self, models, cfg: FeatureConfig, W, platt, cost_kind: str, cost_params: dict,
                 cost_ref: float, tiers: dict, report: dict | None = None, impl=None):
        self.models = tuple(models)
        self.cfg = cfg
        M = len(self.models)
        self.W = np.ascontiguousarray(W, dtype=np.float32)
        self.platt = np.asarray(platt, dtype=np.float64).reshape(M, 2)
        if cost_kind not in COST_KINDS:
            raise ValueError(f"cost kind must be one of {COST_KINDS}")
        self.cost_kind = cost_kind
        self.cost_params = cost_params
        self.cost_ref = float(cost_ref)
        self.tiers = {t: float(v) for t, v in tiers.items()}
        self.report = report or {}
        self.impl = impl or kernels.IMPL
        self._feat = Featurizer(cfg, self.impl)
        # hashed cost heads ride along in the same gather as the quality heads
        if cost_kind == "hashed":
            self._W_all = np.ascontiguousarray(
                np.concatenate([self.W, cost_params["cost_W"].astype(np.float32)], axis=1))
        else:
            self._W_all = self.W
        self._z = np.empty(self._W_all.shape[1])
        self._a, self._b = self.platt[:, 0].copy(), self.platt[:, 1].copy()
        zeros, dummy = np.zeros(M), np.zeros((1, M))
        self._cost_mode = COST_KINDS.index(cost_kind)
        if cost_kind == "length":
            coef = np.asarray(cost_params["cost_coef"], dtype=np.float64)
            self._c0, self._c1 = coef[0].copy(), coef[1].copy()
            self._cW, self._half_s2 = dummy, zeros
        else:
            self._c0, self._c1 = zeros, zeros
            self._cW = np.ascontiguousarray(cost_params["cost_W"], dtype=np.float64)
            self._half_s2 = 0.5 * np.asarray(cost_params["cost_s2"], dtype=np.float64)

    def warm(self) -> None:
        """Run one decision so the compiled kernels are loaded (numba `cache=True`: ~0.2–0.4 s from
        the on-disk cache, 1–2 s cold) at start-up rather than on the first request."""
        self.decide("warm up")

    def with_impl(self, impl) -> "Predictor":
        return Predictor(self.models, self.cfg, self.W, self.platt, self.cost_kind,
                         self.cost_params, self.cost_ref, self.tiers, self.report, impl)

    def predict(self, prompt: str | bytes) -> tuple[np.ndarray, np.ndarray]:
        """(quality[M] calibrated probabilities, expected cost[M] USD) for one prompt."""
        raw = prompt if isinstance(prompt, bytes) else prompt_bytes(prompt)
        f = self._feat
        n = f(raw)
        M = len(self.models)
        q, c = np.empty(M), np.empty(M)
        self.impl.predict(f.idx, f.val, n, f.dense, self._W_all, self._a, self._b,
                          self._cost_mode, self._c0, self._c1, self._cW, self._half_s2, len(raw),
                          self._z, q, c)
        return q, c

    def decide(self, prompt: str | bytes, *, tier: str | None = None,
               cost_weight: float | None = None, min_quality: float | None = None) -> Choice:
        """Predict and select: a tier's default trade-off, or an explicit λ or quality floor."""
        q, c = self.predict(prompt)
        if cost_weight is None and min_quality is None:
            cost_weight = self.tiers[tier or "balanced"]
        return select(q, c, cost_weight=cost_weight, min_quality=min_quality,
                      cost_ref=self.cost_ref, impl=self.impl)

    def predict_batch(self, X: Csr, raw_len: np.ndarray, dense: np.ndarray):
        """(quality, cost) [N, M] for a featurised batch (training, evaluation sweeps)."""
        M = len(self.models)
        Z = np.empty((X.n_rows, M))
        self.impl.csr_matmul(X.indptr, X.idx, X.val, self.W.astype(np.float64), Z)
        q = _sigmoid(self._a * Z + self._b)
        return q, _predict_cost_batch(self.cost_kind, self.cost_params, X, raw_len, dense, self.impl)

    # ---- file ----

    def save(self, path) -> None:
        arrays = {
            "format": np.array(FORMAT), "version": np.array(VERSION, dtype=np.int64),
            "models": np.array(self.models, dtype=np.str_),
            "feature_config": np.array(self.cfg.as_ints(), dtype=np.int64),
            "dense_names": np.array(DENSE_NAMES, dtype=np.str_),
            "W": self.W, "platt": self.platt,
            "cost_kind": np.array(self.cost_kind), "cost_ref": np.array(self.cost_ref),
            "tier_names": np.array(list(self.tiers), dtype=np.str_),
            "tier_values": np.array(list(self.tiers.values()), dtype=np.float64),
            "report": np.array(json.dumps(self.report)),
        }
        for k, v in self.cost_params.items():
            arrays[k] = v
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path, impl=None) -> "Predictor":
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except OSError as exc:
            raise RouterFileError(f"{path}: cannot read router file: {exc.strerror}") from None
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, zlib.error, ValueError, TypeError, OSError, EOFError,
                KeyError) as exc:
            raise RouterFileError(f"{path}: not a valid router file (corrupt or truncated: "
                                  f"{exc})") from None
        def need(key):
            if key not in d:
                raise RouterFileError(f"{path}: router file lacks {key!r}")
            return d[key]
        if str(need("format")) != FORMAT:
            raise RouterFileError(f"{path}: not an {FORMAT} file (format {str(d['format'])!r})")
        if int(need("version")) != VERSION:
            raise RouterFileError(f"{path}: router file version {int(d['version'])}, this ATP "
                                  f"reads version {VERSION}: retrain with `atp router train`")
        try:
            cfg = FeatureConfig.from_ints(need("feature_config"))
        except (ValueError, IndexError) as exc:
            raise RouterFileError(f"{path}: bad feature_config: {exc}") from None
        if tuple(need("dense_names").tolist()) != DENSE_NAMES:
            raise RouterFileError(f"{path}: trained with other dense features: retrain")
        models = tuple(need("models").tolist())
        M = len(models)
        W, platt = need("W"), need("platt")
        kind = str(need("cost_kind"))
        if kind not in COST_KINDS:
            raise RouterFileError(f"{path}: unknown cost kind {kind!r}")
        params = {k: need(k) for k in (("cost_coef",) if kind == "length" else ("cost_W", "cost_s2"))}
        shapes = {"W": (W.shape, (cfg.dim, M)), "platt": (platt.shape, (M, 2))}
        if kind == "length":
            shapes["cost_coef"] = (params["cost_coef"].shape, (2, M))
        else:
            rows = len(DENSE_NAMES) if kind == "dense" else cfg.dim
            shapes["cost_W"] = (params["cost_W"].shape, (rows, M))
            shapes["cost_s2"] = (params["cost_s2"].shape, (M,))
        for k, (got, want) in shapes.items():
            if tuple(got) != want:
                raise RouterFileError(f"{path}: {k} has shape {tuple(got)}, expected {want}")
        for k in ("W", "platt", *params):
            arr = W if k == "W" else platt if k == "platt" else params[k]
            if not np.isfinite(arr).all():
                raise RouterFileError(f"{path}: {k} holds non-finite values")
        if M == 0 or len(set(models)) != M:
            raise RouterFileError(f"{path}: model names missing or repeated")
        tiers = dict(zip(need("tier_names").tolist(), need("tier_values").tolist()))
        try:
            report = json.loads(str(need("report")))
        except ValueError:
            raise RouterFileError(f"{path}: report is not JSON") from None
        return cls(models, cfg, W, platt, kind, params, float(need("cost_ref")), tiers, report, impl)


# ---- training ---------------------------------------------------------------------------------------------

def batch_inputs(prompts, cfg: FeatureConfig, impl=None):
    """(CSR features, raw byte lengths, dense block [N, n_dense]) for many prompts."""
    X = featurize_many(prompts, cfg, impl)
    raw_len = np.array([len(prompt_bytes(p)) for p in prompts], dtype=np.float64)
    nd = len(DENSE_NAMES)
    ends = X.indptr[1:]
    dense = X.val[(ends[:, None] - nd + np.arange(nd)[None, :])].astype(np.float64) \
        if len(prompts) else np.zeros((0, nd))
    return X, raw_len, dense


def tier_lambdas(q, c, score, cost, cost_ref, targets=TIER_TARGETS, grid=LAMBDA_GRID) -> dict:
    """Per tier, the largest λ on the grid whose routed accuracy on these (validation) rows stays
    at ≥ target × the best single model's accuracy with one paired standard error to spare (so the
    target holds out of sample about 84% of the time instead of half of it)."""
    s = np.nan_to_num(score, nan=0.0)
    means = s.mean(axis=0)
    best = int(np.argmax(means))
    out = {}
    picks = {lam: select_batch(q, c, cost_weight=lam, cost_ref=cost_ref) for lam in grid}
    rows = np.arange(len(s))
    for tier, frac in targets.items():
        chosen = 0.0
        for lam in grid:
            d = s[rows, picks[lam]] - frac * s[:, best]
            se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else 0.0
            if d.mean() - se >= 0:
                chosen = float(lam)
        out[tier] = chosen
    return out


def train(data: Outcomes, cfg: FeatureConfig = FeatureConfig(), *, seed: int = 0,
          epochs: int = 60, l2: float = 1e-2, shared_l2: float | None = 1e-3,
          holdout: float = 0.25, cost_kind: str | None = None, refit: bool = True,
          impl=None) -> Predictor:
    """Train on `data`: fit on (1 − holdout) of the rows, calibrate / pick the cost model / choose
    tier defaults on the holdout, then (refit) refit the quality heads on all rows.

    Defaults measured on three 75/25 splits of the RouteLLM *training* file (`python -m
    bench.routing.tune`, RESULTS.md "Routing evaluation"): epochs 60 (the L-BFGS budget in passes
    over the data); l2 = 1e-2 on the per-model deltas (3e-2 measured worse) and shared_l2 = 1e-3
    on the shared part — on two models this measured the same as independent heads with l2 3e-3
    (39.3% vs 39.8% of the best model's cost at 95% of its accuracy, within noise); it is kept for
    the many-model case, where one shared "difficulty" part is learnt from every model's outcomes
    instead of once per model. refit measured 39.8% → 38.9%, better on each split, for twice the
    training time.
    """
    impl = impl or kernels.IMPL
    rng = np.random.default_rng(seed)
    fit_rows, val_rows = split_rows(len(data), holdout, rng)
    if len(val_rows) == 0 or len(fit_rows) == 0:
        raise DataError(f"need at least 2 rows to train (got {len(data)})")
    X, raw_len, dense = batch_inputs(data.prompts, cfg, impl)
    mask = ~np.isnan(data.score)
    Y = np.nan_to_num(data.score)
    C = np.nan_to_num(data.cost)
    Xf, Xv = X.take(fit_rows), X.take(val_rows)
    W = fit_heads(Xf, Y[fit_rows], mask[fit_rows], l2, "logistic", epochs, impl, shared_l2)
    M = len(data.models)
    Zv = np.empty((len(val_rows), M))
    impl.csr_matmul(Xv.indptr, Xv.idx, Xv.val, W, Zv)
    Zf = np.empty((len(fit_rows), M))
    impl.csr_matmul(Xf.indptr, Xf.idx, Xf.val, W, Zf)
    platt = np.array([fit_platt(Zv[mask[val_rows, m], m], Y[val_rows][mask[val_rows, m], m])
                      for m in range(M)])
    qv = _sigmoid(platt[:, 0] * Zv + platt[:, 1])
    qf = _sigmoid(platt[:, 0] * Zf + platt[:, 1])

    costs, errs = {}, {}
    # "hashed" doubles training time and was measured worse than "dense" on the RouteLLM split
    # (RESULTS.md); it is tried when asked for ("all" or "hashed")
    kinds = {None: ("length", "dense"), "all": COST_KINDS}.get(cost_kind, (cost_kind,))
    for kind in kinds:
        p = _fit_cost(kind, Xf, raw_len[fit_rows], dense[fit_rows], C[fit_rows], mask[fit_rows],
                      COST_L2, epochs, impl)
        pred = _predict_cost_batch(kind, p, Xv, raw_len[val_rows], dense[val_rows], impl)
        costs[kind] = (p, pred)
        errs[kind] = cost_errors(pred, C[val_rows], mask[val_rows])
    kind = min(kinds, key=lambda k: errs[k]["total_rel_abs_err"])
    cost_params, cv = costs[kind]

    mean_cost = np.where(mask, C, 0.0).sum(axis=0) / np.maximum(mask.sum(axis=0), 1)
    cost_ref = float(mean_cost.max()) or 1.0
    sv = np.where(mask[val_rows], Y[val_rows], np.nan)
    tiers = tier_lambdas(qv, cv, sv, C[val_rows], cost_ref)

    def quality_report(q, rows):
        mk = mask[rows]
        y = Y[rows]
        return {"log_loss": float(np.mean([log_loss(q[mk[:, m], m], y[mk[:, m], m])
                                           for m in range(M)])),
                "accuracy": float(np.mean([((q[mk[:, m], m] >= 0.5) == (y[mk[:, m], m] >= 0.5))
                                           .mean() for m in range(M)]))}
    report = {"rows": len(data), "fit_rows": int(len(fit_rows)), "holdout_rows": int(len(val_rows)),
              "models": list(data.models), "seed": seed, "epochs": epochs, "l2": l2,
              "features": cfg.as_ints(), "nnz_per_row": float(X.idx.shape[0] / max(len(data), 1)),
              "train": quality_report(qf, fit_rows), "holdout": quality_report(qv, val_rows),
              "holdout_uncalibrated_log_loss": float(np.mean(
                  [log_loss(_sigmoid(Zv[mask[val_rows, m], m]), Y[val_rows][mask[val_rows, m], m])
                   for m in range(M)])),
              "cost_kind": kind, "cost_errors_holdout": errs, "cost_ref_usd": cost_ref,
              "tiers": tiers, "refit": refit}
    if refit:
        W = fit_heads(X, Y, mask, l2, "logistic", epochs, impl, shared_l2)
    return Predictor(data.models, cfg, W.astype(np.float32), platt, kind, cost_params, cost_ref,
                     tiers, report, impl)


# ---- online learning from feedback ----------------------------------------------------------------------

class OnlineRouter:
    """Starts knowing nothing and learns from the outcome of each routed request.

    Quality: Bayesian logistic regression on the same hashed features with a diagonal Gaussian
    posterior (Chapelle & Li 2011, "An empirical evaluation of Thompson sampling", alg. 3), with the
    offline model's structure: model m's weights are w0 + d_m, a shared part (what makes a prompt
    hard for everyone) and a per-model delta (who is better where), the delta's prior tighter by the
    same factor as the offline penalties (l2 1e-2 vs 1e-3: 10×). Thompson sampling: the router draws
    each model's logit from the posterior and routes on the draws, so uncertain models get tried in
    proportion to their chance of being the right choice. With a diagonal posterior and known
    features the draw is exact and cheap: x·w0 ~ N(x·μ0, Σ x_j² v0_j) once (shared by all models)
    plus x·d_m ~ N(x·μ_m, Σ x_j² v_mj) per model — one normal per model, not one per weight.
    Update after feedback (score y of the model that served): the exact MAP of one observation under
    the Gaussian prior lies on μ + t·V·x (V the prior variances of both blocks); a scalar Newton
    solve gives t, then each weight's precision gains p(1−p)·x_j² (Laplace). Only the model that
    served learns about its delta (bandit feedback); every observation teaches the shared part.
    Cost: per model a running mean of USD per prompt byte; a model never tried is assumed free, so
    it is tried early (optimism in the face of uncertainty).
    Pure: the RNG is passed to `decide`.
    """

    def __init__(self, models, cfg: FeatureConfig = FeatureConfig(), *, shared_var: float = 1.0,
                 delta_var: float = 0.1, impl=None):
        # prior variance 1 for the shared part: each feature family's vector has unit norm
        # (features.py), so the prior logit spread is ~N(0, 1) per family — uninformative but sane
        self.models = tuple(models)
        self.cfg = cfg
        self.impl = impl or kernels.IMPL
        M = len(self.models)
        self.mu0 = np.zeros(cfg.dim)
        self.var0 = np.full(cfg.dim, shared_var)
        self.mu = np.zeros((cfg.dim, M))
        self.var = np.full((cfg.dim, M), delta_var)
        self.rate_sum = np.zeros(M)      # Σ cost / bytes per model
        self.rate_n = np.zeros(M)
        self._feat = Featurizer(cfg, self.impl)

    def decide(self, prompt: str | bytes, rng: np.random.Generator, *, cost_weight: float,
               cost_ref: float):
        """(Choice on sampled qualities, context for `update`)."""
        raw = prompt if isinstance(prompt, bytes) else prompt_bytes(prompt)
        f = self._feat
        n = f(raw)
        # merge repeated buckets so that the variance x·V·x is exact
        u, inv = np.unique(f.idx[:n], return_inverse=True)
        cols = np.concatenate([u.astype(np.int64),
                               np.arange(self.cfg.n_hashed, self.cfg.dim, dtype=np.int64)])
        x = np.concatenate([np.bincount(inv, weights=f.val[:n], minlength=len(u)),
                            f.dense.astype(np.float64)])
        x2 = x * x
        M = len(self.models)
        draws = rng.standard_normal(M + 1)
        shared = float(np.einsum("i,i->", x, self.mu0[cols])) + \
            math.sqrt(float(np.einsum("i,i->", x2, self.var0[cols]))) * draws[0]
        zm = np.einsum("i,ij->j", x, self.mu[cols])          # einsum: no threaded BLAS
        zv = np.einsum("i,ij->j", x2, self.var[cols])
        q = _sigmoid(shared + zm + np.sqrt(zv) * draws[1:])
        tried = self.rate_n > 0
        rate = np.where(tried, self.rate_sum / np.maximum(self.rate_n, 1), 0.0)
        choice = select(q, rate * len(raw), cost_weight=cost_weight, cost_ref=cost_ref,
                        impl=self.impl)
        return choice, (cols, x, len(raw))

    def update(self, ctx, model: int, score: float, cost: float) -> None:
        cols, x, n_bytes = ctx
        mu, var = self.mu[:, model], self.var[:, model]
        z0 = float(np.einsum("i,i->", self.mu0[cols] + mu[cols], x))
        v0x, vx = self.var0[cols] * x, var[cols] * x
        s = float(np.einsum("i,i->", v0x + vx, x))
        t = 0.0
        for _ in range(20):  # Newton on g(t) = t − y + σ(z0 + t s); g' ≥ 1, a few steps suffice
            p = float(_sigmoid(z0 + t * s))
            step = (t - score + p) / (1.0 + s * p * (1.0 - p))
            t -= step
            if abs(step) < 1e-10:
                break
        p = float(_sigmoid(z0 + t * s))
        self.mu0[cols] += t * v0x
        mu[cols] += t * vx
        h = p * (1.0 - p) * x * x
        self.var0[cols] = 1.0 / (1.0 / self.var0[cols] + h)
        var[cols] = 1.0 / (1.0 / var[cols] + h)
        self.rate_sum[model] += cost / max(n_bytes, 1)
        self.rate_n[model] += 1
