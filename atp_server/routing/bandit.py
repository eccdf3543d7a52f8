"""Online learning state beyond the table's Beta counts: LinUCB on the prompt features, persistence.

Thompson sampling and UCB need only the per-model success/failure sums the table keeps
(TableStats.succ / fail; the draw and the bonus are in scoring.py). LinUCB (Li et al. 2010, "A
contextual-bandit approach to personalized news article recommendation", alg. 1, disjoint model)
learns, per model, a linear correction of the predicted quality from the prompt's dense features
(length, script, code/math/multiple-choice/question flags — kernels.DENSE_NAMES): the residual
reward − predicted quality, so it starts at the predictor (θ = 0) and only moves where the
predictor is wrong for this deployment. A⁻¹ is kept directly and updated by Sherman–Morrison
(one rank-one update per observation, no inversion).

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
        self.A_inv = np.tile(np.eye(dim) / RIDGE, (n_models, 1, 1))
        self.b = np.zeros((n_models, dim))
        self._feat = None

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
        self.b[row] += residual * x

    def rows(self, src, dst, other: "LinUCB") -> None:
        self.A_inv[dst] = other.A_inv[src]
        self.b[dst] = other.b[src]


_SAVED = ("succ", "fail", "answers", "lat_ewma", "lat_p50", "lat_p95", "err_rate")


def save(table, path: Path) -> None:
    """Write the learned statistics, keyed by model id, atomically (temp file + rename)."""
    s = table.stats
    arrays = {"format": np.array(FORMAT), "ids": np.array(table.ids, dtype=np.str_)}
    arrays.update({k: getattr(s, k) for k in _SAVED})
    if isinstance(table.bandit, LinUCB):
        arrays["A_inv"], arrays["b"] = table.bandit.A_inv, table.bandit.b
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
        lin.A_inv[dst], lin.b[dst] = data["A_inv"][src], data["b"][src]
    return len(pairs)
