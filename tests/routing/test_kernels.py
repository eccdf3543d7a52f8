"""The numba kernels and their numpy twins: bit-identical decision path, close training products."""
import numpy as np
import pytest

from atp_server.routing import kernels
from atp_server.routing.features import FeatureConfig, Featurizer, featurize_many

pytestmark = pytest.mark.skipif(kernels.NUMBA is None, reason="numba not importable")
PROMPTS = ["What is t1w3?", "", "Explain\nA. x\nB. y", "長い文章" * 50, "def f(): return 1 " * 40]


def test_score_and_predict_bit_identical():
    rng = np.random.default_rng(0)
    cfg = FeatureConfig(bits=12)
    M = 16
    W = rng.standard_normal((cfg.dim, 2 * M)).astype(np.float32)
    a, b = rng.normal(1, 0.2, M), rng.normal(0, 0.5, M)
    c0, c1 = rng.random(M) * 1e-4, rng.random(M) * 1e-6
    cW = rng.normal(-7, 1, (len(kernels.DENSE_NAMES), M))
    hs2 = rng.random(M) * 0.1
    f = Featurizer(cfg, kernels.NUMBA)
    for p in PROMPTS:
        n = f(p)
        for mode in (0, 1, 2):
            outs = []
            for impl in (kernels.NUMPY, kernels.NUMBA):
                z, q, c = np.empty(2 * M), np.empty(M), np.empty(M)
                impl.predict(f.idx, f.val, n, f.dense, W, a, b, mode, c0, c1, cW, hs2, len(p), z, q, c)
                outs.append((z, q, c))
            for x, y in zip(*outs):
                assert (x == y).all(), (p[:20], mode)


def test_order_identical_on_ties():
    q = np.array([0.5, 0.5, 0.5, 0.2, 0.9, 0.9])
    c = np.array([1.0, 1.0, 0.5, 0.5, 2.0, 2.0])
    for rule, param in ((0, 0.0), (0, 0.3), (1, 0.0), (2, 0.5), (2, 0.95)):
        outs = []
        for impl in (kernels.NUMPY, kernels.NUMBA):
            out = np.empty(6, dtype=np.int64)
            impl.order(q, c, rule, param, out)
            outs.append(out.tolist())
        assert outs[0] == outs[1], (rule, param)


def test_csr_products_close():
    rng = np.random.default_rng(1)
    X = featurize_many(PROMPTS * 3, FeatureConfig(bits=10), kernels.NUMPY)
    W = rng.standard_normal((X.dim, 5))
    G = rng.standard_normal((X.n_rows, 5))
    outs = []
    for impl in (kernels.NUMPY, kernels.NUMBA):
        Z, T = np.empty((X.n_rows, 5)), np.empty((X.dim, 5))
        impl.csr_matmul(X.indptr, X.idx, X.val, W, Z)
        impl.csr_tmatmul(X.indptr, X.idx, X.val, G, T)
        outs.append((Z, T))
    assert np.allclose(outs[0][0], outs[1][0], rtol=1e-12, atol=1e-12)
    assert np.allclose(outs[0][1], outs[1][1], rtol=1e-12, atol=1e-12)
    dense = np.zeros((X.n_rows, X.dim))
    for i in range(X.n_rows):
        np.add.at(dense[i], X.idx[X.indptr[i]:X.indptr[i + 1]], X.val[X.indptr[i]:X.indptr[i + 1]])
    assert np.allclose(outs[0][0], dense @ W) and np.allclose(outs[0][1], dense.T @ G)


def test_env_switch_selects_numpy():
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    code = "from atp_server.routing import kernels; print(kernels.IMPL.name, kernels.NUMBA)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env={"ATP_NUMBA": "0", "PYTHONPATH": f"{root}:{root / 'clients'}"}, check=True)
    assert out.stdout.split() == ["numpy", "None"]
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env={"ATP_NUMBA": "yes", "PYTHONPATH": f"{root}:{root / 'clients'}"})
    assert bad.returncode != 0 and "ATP_NUMBA must be 0 or 1" in bad.stderr
