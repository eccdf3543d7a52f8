"""`python -m bench routing --json` on small synthetic files with 12 models; `atp router train`."""
import json

import numpy as np

from atp_server import cli
from atp_server.routing.predictor import Predictor
from bench import __main__ as bench_main
from bench.routing import metrics, synth

KEYS = {"accuracy", "usd_per_1k", "savings_vs_best_pct", "pct_of_best_accuracy", "regret_vs_oracle",
        "curve", "aiq", "models", "zero_router", "oracle"}


def _files(tmp_path, models=12):
    rows, _ = synth.make_rows(np.random.default_rng(11), n=420, models=models, fractional=True)
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    synth.write_jsonl(train, rows[:300])
    synth.write_jsonl(test, rows[300:])
    return str(train), str(test)


def test_bench_routing_json(tmp_path, capsys):
    train, test = _files(tmp_path)
    assert bench_main.main(["routing", "--train", train, "--test", test, "--json", "--online",
                            "--window", "40", "--epochs", "20"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert KEYS <= set(res)
    assert len(res["models"]) == 12
    for p in list(res["models"].values()) + [res["oracle"]]:
        assert {"accuracy", "usd_per_1k", "savings_vs_best_pct", "pct_of_best_accuracy",
                "regret_vs_oracle", "aiq"} <= set(p)
    assert len(res["curve"]) > 10 and {"cost_weight", "accuracy", "usd_per_1k"} <= set(res["curve"][0])
    assert res["oracle"]["accuracy"] >= max(p["accuracy"] for p in res["models"].values())
    assert res["oracle"]["regret_vs_oracle"] == 0
    assert 0 <= res["zero_router"]["aiq"] <= res["oracle"]["aiq"] + 1e-9
    assert res["aiq"] > res["zero_router"]["aiq"]       # topics are learnable
    assert len(res["online"]["windows"]) == 3


def test_bench_routing_table_two_models(tmp_path, capsys):
    train, test = _files(tmp_path, models=2)
    assert bench_main.main(["routing", "--train", train, "--test", test, "--epochs", "10"]) == 0
    out = capsys.readouterr().out
    assert "zero router" in out and "oracle" in out and "tier balanced" in out


def test_atp_router_train(tmp_path, capsys):
    train, _ = _files(tmp_path)
    out = tmp_path / "router.bin"
    assert cli.main(["router", "train", train, "-o", str(out), "--epochs", "10", "--seed", "2"]) == 0
    text = capsys.readouterr().out
    assert "300 rows" in text and "12 models" in text and "log-loss" in text and "holdout" in text
    pred = Predictor.load(out)
    assert len(pred.models) == 12 and pred.report["seed"] == 2
    assert cli.main(["router", "train", str(tmp_path / "nope.jsonl")]) == 2


def test_hull_and_aiq():
    pts = [(0.0, 0.5), (1.0, 0.9), (0.5, 0.6), (2.0, 0.8)]
    h = metrics.nd_hull(pts)
    assert h.tolist() == [[0.0, 0.5], [1.0, 0.9]]    # (0.5, 0.6) under the chord, (2, 0.8) falls
    # ∫0..1 of the line 0.5→0.9 = 0.7, then flat 0.9 to 2: (0.7 + 0.9)/2
    assert abs(metrics.aiq(pts, 0.0, 2.0) - 0.8) < 1e-9
    assert abs(metrics.aiq([(1.0, 0.9)], 0.0, 2.0) - 0.45) < 1e-6   # nothing before its cost
    assert abs(metrics.cost_at_quality(pts, 0.7) - 0.5) < 1e-12
    assert metrics.cost_at_quality(pts, 0.95) is None
