"""Prompt → sparse feature vector in microseconds: hashed char/word n-grams plus a few dense flags.

Why feature hashing: the router must featurise prompts it has never seen, in a fixed-size weight
table, without a vocabulary to ship, grow or look up (Weinberger et al. 2009, "Feature hashing for
large scale multitask learning"). Collisions cost a little accuracy; `bits` sets the trade-off
(measured in bench/RESULTS.md, "Routing evaluation").

A prompt's vector is, per family f (char n-grams for each n, words, word bigrams), the bucket
counts of its n-grams scaled by 1/sqrt(N_f) (N_f = n-grams in the family), so each family has the
L2 norm of a unit vector when n-grams are distinct whatever the prompt length; the length itself is a dense feature.
Then the dense block (bias, log lengths, script and structure flags) at columns 2^bits…

Pure and deterministic across processes and machines: no Python hash(), no clock, no RNG.
"""
from dataclasses import dataclass

import numpy as np

from . import kernels


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    bits: int = 16          # 2^16 buckets: 2^18 measured no better on the RouteLLM split (RESULTS.md)
    # char n-gram sizes char_lo..char_hi (0 = none). On English MMLU/GSM8K, 3..5, 4 and none
    # measured equal (RESULTS.md); 4-grams are kept for text without spaces (CJK, code) at half
    # the cost of 3..5
    char_lo: int = 4
    char_hi: int = 4
    words: bool = True
    bigrams: bool = True
    max_bytes: int = 2048   # hash only the head: bounds the worst case (p95 prompt here is ~1.4 kB)
    word_cap: int = 32      # bytes of a word that are hashed (longer ones: URLs, base64 blobs)

    def __post_init__(self):
        if not 8 <= self.bits <= 24:
            raise ValueError(f"bits must be in 8..24, not {self.bits}")
        if self.char_lo and not 1 <= self.char_lo <= self.char_hi <= 7:
            raise ValueError("char n-gram sizes must satisfy 1 <= char_lo <= char_hi <= 7")
        if self.max_bytes < 1 or self.word_cap < 1:
            raise ValueError("max_bytes and word_cap must be positive")

    @property
    def n_hashed(self) -> int:
        return 1 << self.bits

    @property
    def dim(self) -> int:
        return self.n_hashed + len(DENSE_NAMES)

    def as_ints(self) -> list[int]:
        return [self.bits, self.char_lo, self.char_hi, int(self.words), int(self.bigrams),
                self.max_bytes, self.word_cap]

    @classmethod
    def from_ints(cls, v) -> "FeatureConfig":
        v = [int(x) for x in v]
        return cls(bits=v[0], char_lo=v[1], char_hi=v[2], words=bool(v[3]), bigrams=bool(v[4]),
                   max_bytes=v[5], word_cap=v[6])


# The dense block (bias, log lengths, script fractions, code/math/multiple-choice/question flags) is
# computed by the same kernel pass; its definition lives with the kernels.
DENSE_NAMES = kernels.DENSE_NAMES


def prompt_bytes(prompt: str) -> bytes:
    # errors="replace": a lone surrogate in client text must not crash routing
    return prompt.encode("utf-8", "replace")


class Featurizer:
    """Featurises one prompt at a time into reusable scratch arrays (not thread-safe: one per loop)."""

    __slots__ = ("cfg", "impl", "idx", "val", "dense", "_args")

    def __init__(self, cfg: FeatureConfig, impl=None):
        self.cfg = cfg
        self.impl = impl or kernels.IMPL
        cap = kernels.max_features(cfg.max_bytes, cfg.char_lo, cfg.char_hi)
        self.idx = np.empty(cap, dtype=np.int32)
        self.val = np.empty(cap, dtype=np.float32)
        self.dense = np.empty(len(DENSE_NAMES), dtype=np.float32)
        self._args = (cfg.max_bytes, cfg.char_lo, cfg.char_hi, 64 - cfg.bits, cfg.word_cap,
                      cfg.words, cfg.bigrams)

    def __call__(self, prompt: str | bytes) -> int:
        """Featurise; returns n: the hashed features are idx[:n], val[:n], the dense block dense."""
        raw = prompt if isinstance(prompt, bytes) else prompt_bytes(prompt)
        return self.impl.featurize(np.frombuffer(raw, dtype=np.uint8), *self._args, self.idx,
                                   self.val, self.dense)


@dataclass(frozen=True, slots=True)
class Csr:
    """Rows of features for training: row i is idx/val[indptr[i]:indptr[i+1]] (duplicates merged)."""
    indptr: np.ndarray   # int64 [N+1]
    idx: np.ndarray      # int32 [nnz], columns in 0..dim-1 (dense block at n_hashed..)
    val: np.ndarray      # float32 [nnz]
    dim: int

    @property
    def n_rows(self) -> int:
        return self.indptr.shape[0] - 1

    def take(self, rows: np.ndarray) -> "Csr":
        lens = np.diff(self.indptr)[rows]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lens, out=indptr[1:])
        pos = np.concatenate([np.arange(self.indptr[r], self.indptr[r + 1]) for r in rows]) \
            if len(rows) else np.zeros(0, dtype=np.int64)
        return Csr(indptr, self.idx[pos], self.val[pos], self.dim)


def featurize_many(prompts, cfg: FeatureConfig, impl=None) -> Csr:
    """Training matrix for many prompts (same features as Featurizer, duplicate buckets summed)."""
    f = Featurizer(cfg, impl)
    n_dense = len(DENSE_NAMES)
    dense_cols = np.arange(cfg.n_hashed, cfg.dim, dtype=np.int32)
    idx_parts, val_parts = [], []
    indptr = np.zeros(len(prompts) + 1, dtype=np.int64)
    for i, p in enumerate(prompts):
        n = f(p)
        u, inv = np.unique(f.idx[:n], return_inverse=True)
        v = np.bincount(inv, weights=f.val[:n], minlength=u.shape[0]).astype(np.float32)
        idx_parts.append(u.astype(np.int32))
        idx_parts.append(dense_cols)
        val_parts.append(v)
        val_parts.append(f.dense.copy())
        indptr[i + 1] = indptr[i] + u.shape[0] + n_dense
    idx = np.concatenate(idx_parts) if idx_parts else np.zeros(0, np.int32)
    val = np.concatenate(val_parts) if val_parts else np.zeros(0, np.float32)
    return Csr(indptr, idx, val, cfg.dim)
