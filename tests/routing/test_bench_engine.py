"""The routing evaluation routes through the server's choose(): same picks as the sweep's
select_batch, any model set (10 synthetic models), the online Router learns."""
import json

import numpy as np

from atp_server.routing import scoring
from atp_server.routing.predictor import parse_outcomes, select_batch, train
from bench import __main__ as bench_main
from bench.routing import engine, synth

from .conftest import SMALL


def _data(models=10, n=500, seed=5):
    rows, _ = synth.make_rows(np.random.default_rng(seed), n=n, models=models, topics=5)
    data = parse_outcomes([json.dumps(r) for r in rows])
    return data.take(np.arange(350)), data.take(np.arange(350, n))


def test_choose_picks_what_the_sweep_picks():
    tr, te = _data()
    pred = train(tr, SMALL, seed=0, epochs=20)
    te = te.aligned(pred.models)
    q = np.empty(te.score.shape)
    c = np.empty(te.score.shape)
    for i, p in enumerate(te.prompts):
        q[i], c[i] = pred.predict(p)
    for lam in (0.0, pred.tiers["balanced"], 50.0):
        sweep = select_batch(q, c, cost_weight=lam, cost_ref=pred.cost_ref)
        for impl in [k for k in (scoring.NUMPY, scoring.NUMBA) if k is not None]:
            picks = engine.route_all(pred, te, cost_weight=lam, impl=impl)
            assert (picks == sweep).mean() >= 0.99, (lam, impl.name)   # ulp ties at most


def test_online_router_learns_from_scratch():
    tr, te = _data(n=1400)
    res = engine.run_online_engine(tr, te, tr.models, 350, 0.0, "thompson", 0)
    w = res["windows"]
    assert len(w) >= 3 and w[-1]["accuracy"] > w[0]["accuracy"]
    best_single = np.nanmean(te.score, axis=0).max()
    assert res["windows"][-1]["accuracy"] >= best_single - 0.1


def test_bench_json_has_the_engine_parts(tmp_path, capsys):
    rows, _ = synth.make_rows(np.random.default_rng(2), n=300, models=10, fractional=True)
    a, b = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    synth.write_jsonl(a, rows[:200])
    synth.write_jsonl(b, rows[200:])
    assert bench_main.main(["routing", "--train", str(a), "--test", str(b), "--json", "--online",
                            "--window", "50", "--epochs", "10"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["online_engine"]) == {"thompson", "linucb"}
    assert len(res["models"]) == 10 and len(res["online_engine"]["linucb"]["windows"]) == 2
