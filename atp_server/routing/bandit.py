"""Online learning state beyond the table's Beta counts: LinUCB on the prompt features, persistence.

Thompson sampling and UCB need only the per-model success/failure sums the table keeps
(TableStats.succ / fail; the draw and the bonus are in scoring.py). LinUCB (Li et al. 2010, "A
contextual-bandit approach to personalized news article recommendation", alg. 1, disjoint model)
learns, per model, a linear correction of the predicted quality from the prompt's dense features
(length, script, code/math/multiple-choice/question flags — kernels.DENSE_NAMES): the residual
reward − predicted quality, so it starts at the predictor (θ = 0) and only moves where the
predictor is wrong for this deployment. A⁻¹ is kept directly and updated by Sherman–Morrison
(one rank-one update per observation, no inversion).

A itself is kept beside A⁻¹ (A += x xᵀ per observation: ~2 µs on top of the Sherman–Morrison
update's ~4.5 µs, off the decision path, bench/RESULTS.md) because A = λI + Σ x xᵀ
and b = Σ r x are *sums*, and sums merge exactly across workers (state/learning.py): each worker
sends its ΔA, Δb, the store adds them, and the worker inverts the merged A once per merge
(`set_rows`: a batched np.linalg.inv, ~0.1 ms for 16 × 17×17 every 2 s; bench/RESULTS.md). A⁻¹
alone cannot be merged (the inverse of a sum is no function of the summands' inverses), and
inverting A⁻¹ back to A at every merge would compound rounding; keeping A also resets the
Sherman–Morrison rounding drift at each merge. A stays exactly symmetric (outer(x, x) is: xᵢxⱼ
and xⱼxᵢ are the same float product), so only its upper triangle crosses the store (`packed`).

Plain numpy: 16 models × 17 features is ~5k multiply-adds, ~3 µs in one einsum; a compiled twin
would not pay for itself here (the scoring kernel is where numba buys, bench/RESULTS.md).
"""
import os
from pathlib import Path

import numpy as np

from .features import FeatureConfig, Featurizer, prompt_bytes

# Ridge of LinUCB's A = λI + Σ x xᵀ: λ = 1 (the paper's choice) makes the first observations
# count fully against a prior of "no correction" with unit variance per feature (features ≈ 1).
RIDGE = 1.0
FILE = "routing_posteriors.npz"
FORMAT = "atp-routing-posteriors-1"


class LinUCB:
    """Per-model ridge regression of the quality residual on the prompt's dense features."""

    def __init__(self, n_models: int, dim: int):
        self.A = np.tile(np.eye(dim) * RIDGE, (n_models, 1, 1))
        self.A_inv = np.tile(np.eye(dim) / RIDGE, (n_models, 1, 1))
        self.b = np.zeros((n_models, dim))
        self._feat = None
        self._triu = np.triu_indices(dim)

    @property
    def dim(self) -> int:
        return self.b.shape[1]

    def context(self, request, predictor):
        """The dense block of the prompt (the trained router's featurizer when loaded: already
        computed by predict(); else a small one of our own)."""
        from .choose import prompt_text
        if predictor is not None:
            return predictor._feat.dense.astype(np.float64)
        if self._feat is None:
            self._feat = Featurizer(FeatureConfig(bits=8))   # only the dense block is used
        self._feat(prompt_bytes(prompt_text(request)))
        return self._feat.dense.astype(np.float64)

    def adjusted(self, q_prior: np.ndarray, x: np.ndarray, alpha: float) -> np.ndarray:
        theta = np.einsum("mij,mj->mi", self.A_inv, self.b)
        ax = np.einsum("mij,j->mi", self.A_inv, x)
        bonus = alpha * np.sqrt(np.maximum(ax @ x, 0.0))
        return np.clip(q_prior + theta @ x + bonus, 0.0, 1.0)

    def update(self, row: int, x: np.ndarray, residual: float) -> None:
        Ai = self.A_inv[row]
        ax = Ai @ x
        self.A_inv[row] = Ai - np.outer(ax, ax) / (1.0 + x @ ax)
        self.A[row] += np.outer(x, x)
        self.b[row] += residual * x

    def rows(self, src, dst, other: "LinUCB") -> None:
        self.A[dst] = other.A[src]
        self.A_inv[dst] = other.A_inv[src]
        self.b[dst] = other.b[src]

    # ---- the merge's view: one flat vector per model (A's upper triangle, then b) --------------

    def packed(self) -> np.ndarray:
        """Every model's sums as rows of d(d+1)/2 + d floats (a copy)."""
        iu = self._triu
        return np.concatenate([self.A[:, iu[0], iu[1]], self.b], axis=1)

    def set_rows(self, rows, packed: np.ndarray) -> None:
        """Replace the sums of `rows` by `packed` (rows of packed()) and invert their A afresh.
        np.linalg.LinAlgError, and nothing changed, when an A is not at least λI."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return
        iu, n = self._triu, len(self._triu[0])
        A = np.empty((rows.size, self.dim, self.dim))
        A[:, iu[0], iu[1]] = packed[:, :n]
        A[:, iu[1], iu[0]] = packed[:, :n]
        # Every LinUCB A = λI + Σ x xᵀ is ⪰ λI, so A − λI/2 is positive definite with a margin far
        # above rounding; an A that fails this (Cholesky raises) came from a corrupt store, and a
        # near-singular one would not make inv() raise, only return garbage.
        np.linalg.cholesky(A - 0.5 * RIDGE * np.eye(self.dim))
        self.A[rows] = A
        self.A_inv[rows] = np.linalg.inv(A)
        self.b[rows] = packed[:, n:]


_SAVED = ("succ", "fail", "answers", "lat_ewma", "lat_p50", "lat_p95", "err_rate")


def save(table, path: Path) -> None:
    """Write the learned statistics, keyed by model id, atomically (temp file + rename)."""
    s = table.stats
    arrays = {"format": np.array(FORMAT), "ids": np.array(table.ids, dtype=np.str_)}
    arrays.update({k: getattr(s, k) for k in _SAVED})
    if isinstance(table.bandit, LinUCB):
        arrays["A"], arrays["A_inv"], arrays["b"] = table.bandit.A, table.bandit.A_inv, table.bandit.b
    # a temp name per process: --workers N stop together, and a shared one raced (one worker's
    # rename found the file the other had just renamed away)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def load(table, path: Path) -> int:
    """Restore what was saved for models still in the table; returns how many models were found.
    A missing file is a fresh start; a corrupt or foreign one raises ValueError naming the file."""
    if not path.exists():
        return 0
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["format"]) != FORMAT:
                raise ValueError(f"format {str(z['format'])!r}")
            ids = [str(i) for i in z["ids"]]
            data = {k: z[k] for k in z.files}
    except (OSError, KeyError, ValueError, EOFError) as exc:
        raise ValueError(f"{path}: not a routing posterior file ({exc})") from None
    pairs = [(table.index[i], j) for j, i in enumerate(ids) if i in table.index]
    if not pairs:
        return 0
    dst, src = (np.array(x, dtype=np.int64) for x in zip(*pairs))
    for k in _SAVED:
        getattr(table.stats, k)[dst] = data[k][src]
    lin = table.bandit
    if isinstance(lin, LinUCB) and "A_inv" in data and data["A_inv"].shape[1:] == lin.A_inv.shape[1:]:
        A_inv = data["A_inv"][src]
        # A file written before A was saved beside A⁻¹: A is its inverse (up to the rounding of
        # one inversion, no worse than the Sherman–Morrison updates that made A⁻¹)
        try:
            A = data["A"][src] if "A" in data else np.linalg.inv(A_inv)
        except np.linalg.LinAlgError:
            raise ValueError(f"{path}: LinUCB's saved A⁻¹ is singular (a corrupt file)") from None
        lin.A[dst], lin.A_inv[dst], lin.b[dst] = A, A_inv, data["b"][src]
    return len(pairs)
