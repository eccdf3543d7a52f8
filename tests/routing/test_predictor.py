"""Training recovers who is good where (12 synthetic models), router.bin round trips and rejects bad files."""
import json
import zipfile

import numpy as np
import pytest

from atp_server.routing import kernels
from atp_server.routing.features import FeatureConfig
from atp_server.routing.predictor import (DataError, OnlineRouter, Predictor, RouterFileError,
                                          fit_platt, lbfgs, parse_outcomes, train)
from bench.routing import synth

from .conftest import SMALL


def test_recovers_expert_per_topic(synthetic, trained):
    _, test, experts, topics = synthetic
    assert len(trained.models) == 12
    hits = [trained.models[int(np.argmax(trained.predict(p)[0]))] == experts[t]
            for p, t in zip(test.prompts, topics)]
    assert np.mean(hits) >= 0.9


def test_probabilities_calibrated_on_synthetic(synthetic, trained):
    """Predicted P(correct) tracks the observed rate (expected calibration error under 0.1)."""
    _, test, _, _ = synthetic
    q = np.array([trained.predict(p)[0] for p in test.prompts]).ravel()
    y = test.score.ravel()
    bins = np.minimum((q * 10).astype(int), 9)
    ece = sum(abs(q[bins == b].mean() - y[bins == b].mean()) * (bins == b).mean()
              for b in range(10) if (bins == b).any())
    assert ece < 0.1


def test_cost_prediction_close(synthetic, trained):
    _, test, _, _ = synthetic
    c = np.array([trained.predict(p)[1] for p in test.prompts])
    rel = np.abs(c - test.cost).sum() / test.cost.sum()
    assert rel < 0.25 and trained.report["cost_kind"] in ("length", "dense")


def test_training_is_deterministic_for_a_seed(synthetic):
    a = train(synthetic[0].take(np.arange(200)), SMALL, seed=5, epochs=15)
    b = train(synthetic[0].take(np.arange(200)), SMALL, seed=5, epochs=15)
    assert (a.W == b.W).all() and a.tiers == b.tiers


def test_training_twins_agree(synthetic):
    if kernels.NUMBA is None:
        pytest.skip("numba not importable")
    part = synthetic[0].take(np.arange(150))
    a = train(part, SMALL, seed=1, epochs=10, impl=kernels.NUMPY)
    b = train(part, SMALL, seed=1, epochs=10, impl=kernels.NUMBA)
    assert np.allclose(a.W, b.W, atol=1e-4)


def test_fractional_scores_and_missing_outcomes():
    rows, _ = synth.make_rows(np.random.default_rng(7), n=300, models=10, fractional=True)
    for i, r in enumerate(rows):            # every 3rd row lacks one model's outcome
        if i % 3 == 0:
            r["outcomes"].pop(f"model-{i % 10:02d}")
    data = parse_outcomes([json.dumps(r) for r in rows])
    assert np.isnan(data.score).sum() == 100
    assert not np.allclose(data.score[~np.isnan(data.score)] % 1, 0)
    pred = train(data, SMALL, seed=0, epochs=20)
    q, c = pred.predict(data.prompts[0])
    assert q.shape == c.shape == (10,) and np.isfinite(q).all() and (c > 0).all()


def test_round_trip(tmp_path, trained, impl):
    path = tmp_path / "router.bin"
    trained.save(path)
    loaded = Predictor.load(path, impl)
    assert loaded.models == trained.models and loaded.cfg == trained.cfg
    assert loaded.tiers == trained.tiers and loaded.report == trained.report
    for p in ["What is t1w3 t1w5?", ""]:
        q1, c1 = trained.with_impl(impl).predict(p)
        q2, c2 = loaded.predict(p)
        assert (q1 == q2).all() and (c1 == c2).all()
        assert loaded.decide(p).order == trained.with_impl(impl).decide(p).order


def _rewrite(src, dst, **changes):
    with np.load(src, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    for k, v in changes.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    with open(dst, "wb") as f:
        np.savez(f, **d)


def test_corrupt_files(tmp_path, trained):
    good = tmp_path / "router.bin"
    trained.save(good)
    blob = good.read_bytes()
    cases = {
        "missing": (None, "cannot read"),
        "empty": (b"", "not a valid router file"),
        "truncated": (blob[: len(blob) // 2], "not a valid router file"),
        "garbage": (b"\x00garbage" * 100, "not a valid router file"),
    }
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0xFF
    cases["bitflip"] = (bytes(flipped), None)   # CRC, zip structure or array checks: any of them
    for name, (data, needle) in cases.items():
        path = tmp_path / f"{name}.bin"
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(RouterFileError, match=needle):
            Predictor.load(path)
    bad = {
        "format": (dict(format=np.array("something-else")), "not an atp-router file"),
        "version": (dict(version=np.array(99)), "version 99"),
        "shape": (dict(W=trained.W[:-1]), "W has shape"),
        "nan": (dict(platt=np.full_like(trained.platt, np.nan)), "non-finite"),
        "lacks": (dict(W=None), "lacks 'W'"),
        "dense": (dict(dense_names=np.array(["x"])), "other dense features"),
        "models": (dict(models=np.array(["a"] * len(trained.models))), "shape|repeated"),
    }
    for name, (changes, needle) in bad.items():
        path = tmp_path / f"{name}.bin"
        _rewrite(good, path, **changes)
        with pytest.raises(RouterFileError, match=needle):
            Predictor.load(path)


def test_no_pickle_in_file(tmp_path, trained):
    path = tmp_path / "router.bin"
    trained.save(path)
    with zipfile.ZipFile(path) as z, np.load(path, allow_pickle=False) as npz:
        assert all(n.endswith(".npy") for n in z.namelist())
        assert all(npz[k].dtype != object for k in npz.files)


def test_data_errors_name_the_line():
    with pytest.raises(DataError, match=":2:"):
        parse_outcomes(['{"prompt": "a", "outcomes": {"m": {"score": 1, "cost_usd": 0.1}}}',
                        '{"prompt": "b", "outcomes": {"m": {"score": 2, "cost_usd": 0.1}}}'])
    with pytest.raises(DataError, match=":1:"):
        parse_outcomes(["not json"])
    with pytest.raises(DataError, match="no rows"):
        parse_outcomes([""])


def test_lbfgs_minimises_a_quadratic():
    A = np.diag(np.arange(1.0, 11.0))
    b = np.ones(10)
    x, f, evals = lbfgs(lambda x: (0.5 * x @ A @ x - b @ x, A @ x - b), np.zeros(10), 200)
    assert np.allclose(x, 1.0 / np.arange(1.0, 11.0), atol=1e-6) and evals < 200


def test_platt_recovers_a_known_scale():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-(0.5 * z - 1)))).astype(float)
    a, b = fit_platt(z, y)
    assert abs(a - 0.5) < 0.05 and abs(b + 1) < 0.08


def test_online_router_learns(synthetic, impl):
    train_part, test, _, _ = synthetic
    rng = np.random.default_rng(0)
    online = OnlineRouter(train_part.models, SMALL, impl=impl)
    got = []
    for i, p in enumerate(train_part.prompts + test.prompts):
        data = train_part if i < 600 else test
        j = i if i < 600 else i - 600
        choice, ctx = online.decide(p, rng, cost_weight=0.0, cost_ref=1.0)
        m = choice.best
        online.update(ctx, m, float(data.score[j, m]), float(data.cost[j, m]))
        got.append(data.score[j, m])
    got = np.array(got)
    best_single = train_part.score.mean(axis=0).max()
    assert got[-300:].mean() > got[:150].mean() + 0.1
    assert got[-300:].mean() > best_single
