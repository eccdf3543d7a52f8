"""Champion/challenger: the SPRT promotes a better challenger, rolls back a worse one, keeps an
equal one; operator actions; the pure core takes its draws."""
import numpy as np
import pytest

from atp_server.routing.champion import Experiment


def run(p_champion, p_challenger, seed=0, n=20_000, share=0.2):
    rng = np.random.default_rng(seed)
    e = Experiment("router-v2.bin", share)
    for _ in range(n):
        ch = e.assign(float(rng.random()))
        v = e.observe(ch, float(rng.random() < (p_challenger if ch else p_champion)))
        if v is not None:
            return e, v
    return e, None


@pytest.mark.parametrize("seed", range(5))
def test_a_better_challenger_is_promoted(seed):
    e, v = run(0.60, 0.72, seed)
    assert v is not None and v.action == "promote" and not e.running
    assert v.challenger_mean > v.champion_mean and v.rewards < 2000


@pytest.mark.parametrize("seed", range(5))
def test_a_worse_challenger_is_rolled_back(seed):
    _, v = run(0.70, 0.55, seed)
    assert v is not None and v.action == "rollback" and "worse" in v.reason


def test_wrong_decisions_are_rare_when_there_is_no_difference():
    verdicts = [run(0.65, 0.65, seed)[1] for seed in range(40)]
    wrong = sum(v is not None and v.action != "keep" for v in verdicts)
    assert wrong <= 5            # 2α = 5% of 40 is 2; allow for a small sample
    assert sum(v is not None and v.action == "keep" for v in verdicts) >= 30


def test_challenger_rewards_count_only_when_paired():
    e = Experiment("c", 0.5)
    for _ in range(500):
        assert e.observe(True, 1.0) is None       # nothing to pair with
    assert e.pairs == 0 and e.llr_up == 0.0
    e.observe(False, 0.0)
    e.observe(True, 1.0)
    assert e.pairs == 1 and e.llr_up > 0
    e.observe(False, 1.0)
    e.observe(True, 1.0)                          # a tie: no evidence
    assert e.pairs == 1


def test_operator_pin_promote_rollback():
    e = Experiment("c", 0.5)
    e.operator("pin")
    assert not e.assign(0.0)                      # pinned: the champion serves everything
    for _ in range(100):
        e.observe(False, 0.0)
    assert all(e.observe(True, 1.0) is None for _ in range(1000)) and e.pairs == 0
    e.operator("unpin")
    assert e.assign(0.1) and not e.assign(0.9)
    v = e.operator("rollback")
    assert v.action == "rollback" and v.reason == "operator" and not e.assign(0.0)
    with pytest.raises(ValueError, match="already ended"):
        e.operator("promote")
    with pytest.raises(ValueError):
        e.operator("dance")


@pytest.mark.parametrize("kw", [{"share": 0.0}, {"share": 1.0}, {"share": 0.2, "delta": 0.6}])
def test_bad_parameters(kw):
    with pytest.raises(ValueError):
        Experiment("c", **kw)


def test_rewards_are_checked_and_fractional_ones_count():
    e = Experiment("c", 0.5)
    with pytest.raises(ValueError):
        e.observe(True, 1.5)
    e.observe(False, 0.5)
    e.observe(True, 0.9)
    assert e.llr_up > 0 > e.llr_down


# ---- in the Router: a challenger router.bin takes a share, feedback decides --------------------

def _experiment_router(trained, champion_pred, challenger_pred, share=0.3):
    from atp_server.routing.config import RoutingConfig
    from atp_server.routing.router import Router
    from atp_server.routing.spec import ModelSpec
    specs = [ModelSpec(m, "p", m) for m in trained.models]
    r = Router(specs, policy=RoutingConfig(bandit="greedy", seed=1), predictor=champion_pred)
    r.challenge("challenger.bin", challenger_pred, share)
    return r


def _inverted(pred):
    """The same router with its quality logits negated: it prefers the worst model."""
    from atp_server.routing.predictor import Predictor
    return Predictor(pred.models, pred.cfg, -pred.W, pred.platt, pred.cost_kind, pred.cost_params,
                     pred.cost_ref, pred.tiers)


def _feed(r, data, rounds=20):
    from atp_server.types import ChatRequest
    col = {m: j for j, m in enumerate(data.models)}
    seen = []
    r.on_verdict = seen.append
    k = 0
    for _ in range(rounds):
        for i, prompt in enumerate(data.prompts):
            k += 1
            d = r.choose(ChatRequest([("user", prompt)], request_id=str(k), cost_weight=0.0), 0.0)
            r._recent[("t", str(k))] = (d.model, d.trace)      # what finished() stores
            y = data.score[i, col[d.model]]
            r.feedback("t", str(k), 0.0 if np.isnan(y) else float(y), 0.0)
            if seen:
                return seen
    return seen


def test_a_better_router_file_is_promoted(trained, synthetic):
    bad = _inverted(trained)
    r = _experiment_router(trained, bad, trained)
    seen = _feed(r, synthetic[1])
    assert [v.action for v in seen] == ["promote"] and r.table.predictor is trained
    assert r.verdicts == seen and not r.experiment.running


def test_a_worse_router_file_is_rolled_back(trained, synthetic):
    r = _experiment_router(trained, trained, _inverted(trained))
    seen = _feed(r, synthetic[1])
    assert [v.action for v in seen] == ["rollback"] and r.table.predictor is trained
    assert r.challenger_table is None


def test_operator_actions_through_the_router(trained):
    r = _experiment_router(trained, trained, _inverted(trained))
    r.operator("pin")
    from atp_server.types import ChatRequest
    assert not any(r.choose(ChatRequest([("user", "x")]), 0.0).trace.challenger for _ in range(50))
    r.operator("unpin")
    assert any(r.choose(ChatRequest([("user", "x")]), 0.0).trace.challenger for _ in range(50))
    r.operator("promote")
    assert r.verdicts[-1].reason == "operator" and r.table.predictor is not trained
    with pytest.raises(ValueError):
        r.operator("rollback")


def test_verdicts_are_written_to_the_audit_log(tmp_path, trained):
    from atp_server.audit import AuditLog
    from atp_server.routing.router import audit_verdicts
    audit = AuditLog(str(tmp_path / "audit.sqlite"))
    r = _experiment_router(trained, trained, _inverted(trained))
    r.on_verdict = audit_verdicts(audit)
    r.operator("rollback")
    assert audit.flush() == 1
    import sqlite3
    rows = sqlite3.connect(tmp_path / "audit.sqlite").execute(
        "select transport, model, outcome from audit").fetchall()
    assert rows == [("routing", "challenger.bin", "rollback")]
