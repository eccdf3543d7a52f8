"""Prompt features: deterministic across processes, bounded shape, meaningful dense flags, twins equal."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from atp_server.routing import kernels
from atp_server.routing.features import DENSE_NAMES, FeatureConfig, Featurizer, featurize_many

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [
    "", "a", "What is the capital of France?",
    "Solve $x^2 = 4$ and explain.\nA. 2\nB. -2\nC. both\nD. none\nAnswer:",
    "```python\ndef f(x):\n    return x + 1\n```\nWhy does this fail?",
    "日本語の文章を英語に翻訳してください。", "Переведите этот текст на английский.",
    "x" * 5000, "word " * 900, "MiXeD CaSe wOrDs_with_underscores 12345 !!!",
    "\udcff lone surrogate",
]
DENSE = {name: i for i, name in enumerate(DENSE_NAMES)}


def features(prompt, cfg=FeatureConfig(), impl=None):
    f = Featurizer(cfg, impl)
    n = f(prompt)
    return f.idx[:n].copy(), f.val[:n].copy(), f.dense.copy()


def test_shape_and_range(impl):
    cfg = FeatureConfig(bits=10)
    for p in PROMPTS:
        idx, val, dense = features(p, cfg, impl)
        assert idx.dtype == np.int32 and val.dtype == np.float32 and dense.shape == (len(DENSE_NAMES),)
        assert ((idx >= 0) & (idx < cfg.n_hashed)).all()
        assert (val > 0).all() and np.isfinite(dense).all()
        assert dense[DENSE["bias"]] == 1.0
        # bounded whatever the prompt length: only the head is hashed
        assert len(idx) <= kernels.max_features(cfg.max_bytes, cfg.char_lo, cfg.char_hi)


def test_twins_identical():
    if kernels.NUMBA is None:
        pytest.skip("numba not importable")
    for cfg in (FeatureConfig(), FeatureConfig(bits=20, char_lo=2, char_hi=5, max_bytes=64),
                FeatureConfig(char_lo=0, char_hi=0, bigrams=False)):
        for p in PROMPTS:
            a = features(p, cfg, kernels.NUMPY)
            b = features(p, cfg, kernels.NUMBA)
            for x, y in zip(a, b):
                assert x.shape == y.shape and (x == y).all(), p[:30]


def test_deterministic_across_processes():
    """No per-process salt (Python's hash() would differ per process): a fresh interpreter agrees."""
    prompt = PROMPTS[3]
    code = ("import sys; from atp_server.routing.features import Featurizer, FeatureConfig;"
            "f = Featurizer(FeatureConfig()); n = f(sys.argv[1]);"
            "print(','.join(map(str, f.idx[:n].tolist())))")
    for seed in ("0", "12345"):
        out = subprocess.run([sys.executable, "-c", code, prompt], capture_output=True, text=True,
                             cwd=ROOT, check=True, env={"PYTHONHASHSEED": seed, "PATH": "",
                                                        "PYTHONPATH": f"{ROOT}:{ROOT / 'clients'}"})
        assert out.stdout.strip() == ",".join(map(str, features(prompt)[0].tolist()))


def test_golden_buckets(impl):
    """The hash is part of the file format: a change here silently breaks every router.bin."""
    idx, val, _ = features("hello world", FeatureConfig(bits=16), impl)
    # 8 char 4-grams, 2 words, 1 bigram, each family scaled to unit norm
    assert idx.tolist() == [6532, 61360, 29209, 37514, 57520, 18081, 25567, 29245, 22753, 62419,
                            33326]
    assert np.allclose(val, [8 ** -0.5] * 8 + [2 ** -0.5] * 2 + [1.0])


def test_dense_flags():
    d = features(PROMPTS[3])[2]
    assert d[DENSE["math"]] and d[DENSE["multiple_choice"]] and not d[DENSE["code"]]
    d = features(PROMPTS[4])[2]
    assert d[DENSE["code"]] and not d[DENSE["multiple_choice"]]
    assert features("What is 2+2?")[2][DENSE["wh_start"]] == 1.0
    assert features("What is 2+2?")[2][DENSE["ends_question"]] == 1.0
    assert features("  Explain entropy.")[2][DENSE["imperative_start"]] == 1.0
    assert features("Entropy, explain.")[2][DENSE["imperative_start"]] == 0.0
    assert features(PROMPTS[5])[2][DENSE["cjk_frac"]] > 0.3   # lead bytes: 1 in 3 for CJK
    assert features(PROMPTS[6])[2][DENSE["cyrillic_frac"]] > 0.3
    assert features("ABC")[2][DENSE["upper_frac"]] == 1.0
    assert features("abc")[2][DENSE["nonascii_frac"]] == 0.0


def test_case_insensitive_hashing_but_not_flags():
    a, b = features("Hello World"), features("hello world")
    assert (a[0] == b[0]).all()
    assert a[2][DENSE["upper_frac"]] > 0 and b[2][DENSE["upper_frac"]] == 0


def test_featurize_many_merges_duplicates(impl):
    cfg = FeatureConfig(bits=10)
    X = featurize_many(["a a a a", "b"], cfg, impl)
    assert X.n_rows == 2 and X.dim == cfg.dim
    row0 = X.idx[X.indptr[0]:X.indptr[1]]
    assert len(np.unique(row0)) == len(row0)
    # the dense block closes every row
    assert (X.idx[X.indptr[1] - len(DENSE_NAMES):X.indptr[1]] == np.arange(cfg.n_hashed, cfg.dim)).all()


def test_config_validation():
    with pytest.raises(ValueError):
        FeatureConfig(bits=40)
    with pytest.raises(ValueError):
        FeatureConfig(char_lo=5, char_hi=3)
    cfg = FeatureConfig(bits=14, char_lo=3, char_hi=5, bigrams=False)
    assert FeatureConfig.from_ints(cfg.as_ints()) == cfg
