"""Online learning: feedback and implicit signals through the Router, LinUCB, regret, persistence."""
import numpy as np
import pytest

from atp_server.auth import Principal
from atp_server.feedback import FeedbackLog
from atp_server.metrics import Metrics
from atp_server.routing import bandit
from atp_server.routing.config import RoutingConfig
from atp_server.routing.router import RECENT_DECISIONS, Router
from atp_server.routing.spec import ModelSpec
from atp_server.stages.base import RequestContext
from atp_server.types import ChatRequest
from codec.errors import ErrorCode

MODELS = [ModelSpec("x", "p", "x", 1.0, 1.0, quality=0.7, latency_ms=100),
          ModelSpec("y", "p", "y", 1.0, 1.0, quality=0.6, latency_ms=100)]
ALICE = Principal("acme", "alice", "api_key")


def served(router, request_id, principal=ALICE, *, code=0, upstream_ms=50.0, text="hello",
           slo=None, failures=()):
    """Route one request and end it the way the pipeline would (route stage before + after)."""
    req = ChatRequest([("user", text)], request_id=request_id, latency_slo_ms=slo,
                      tenant="client-says-this")
    ctx = RequestContext(req, principal, "http", None)
    ctx.decision = router.choose(req, 0.0)
    router.started(ctx.decision)
    ctx.upstream_ns = int(upstream_ms * 1e6)
    ctx.code, ctx.finished = code, code == 0
    ctx.failures = list(failures)
    router.finished(ctx, 1.0)
    return ctx.decision


def test_explicit_feedback_moves_the_posterior_of_the_model_that_served():
    r = Router(MODELS, policy=RoutingConfig(bandit="greedy"))
    assert served(r, "r1").model == "x"
    for i in range(40):
        d = served(r, f"q{i}")
        assert r.feedback("acme", f"q{i}", 0.0, 2.0) is True
    assert d.model == "y"           # x kept scoring 0: the router moved to y
    t = r.table
    assert t.stats.fail[t.index["x"]] > 10 and r.feedback_applied == 40


def test_feedback_counts_only_under_the_authenticated_tenant():
    r = Router(MODELS, policy=RoutingConfig(bandit="greedy"))
    served(r, "r1")
    assert r.feedback("client-says-this", "r1", 1.0, 2.0) is False     # the request's own field
    assert r.feedback("other", "r1", 1.0, 2.0) is False
    assert r.feedback("acme", "r1", 1.0, 2.0) is True
    assert r.feedback("acme", "r1", 1.0, 2.0) is False                 # once


def test_feedback_log_hands_first_ratings_to_the_router():
    r = Router(MODELS, policy=RoutingConfig(bandit="greedy"))
    served(r, "r1")
    log = FeedbackLog(on_score=lambda tenant, rid, score: r.feedback(tenant, rid, score, 0.0))
    assert log.add("acme", "r1", 1.0) and not log.add("acme", "r1", 0.0)
    t = r.table
    assert t.stats.succ[t.index["x"]] == 1.0 and t.stats.fail[t.index["x"]] == 0.0


def test_remembered_decisions_are_bounded():
    r = Router(MODELS, policy=RoutingConfig(bandit="greedy"))
    for i in range(RECENT_DECISIONS + 10):
        r._recent[("acme", str(i))] = ("x", None)
    served(r, "last")
    assert len(r._recent) == RECENT_DECISIONS
    assert ("acme", "0") not in r._recent and ("acme", "last") in r._recent


def test_implicit_signals_errors_and_slo():
    r = Router(MODELS, policy=RoutingConfig(bandit="greedy"))
    t = r.table
    served(r, "e1", code=int(ErrorCode.UPSTREAM_ERROR))
    assert t.stats.fail[0] == 1.0 and t.stats.err_rate[0] > 0
    served(r, "e2", code=int(ErrorCode.INVALID_REQUEST))     # the caller's fault: nothing learnt
    assert t.stats.fail[0] == 1.0
    served(r, "s1", upstream_ms=900.0, slo=500)              # answered, but over the SLO
    assert t.stats.fail[0] == 2.0
    assert t.stats.inflight.tolist() == [0, 0]
    assert ("acme", "e1") not in r._recent                   # only answers can be rated


def test_failover_reports_the_failed_attempt_and_the_answer():
    r = Router(MODELS, policy=RoutingConfig(bandit="greedy"))
    t = r.table
    req = ChatRequest([("user", "x")], request_id="f1")
    ctx = RequestContext(req, ALICE, "http", None)
    ctx.decision = r.choose(req, 0.0)
    r.started(ctx.decision)
    ctx.failures = ["x: UPSTREAM_ERROR"]
    ctx.decision = ctx.decision._replace(model="y")
    ctx.finished = True
    r.finished(ctx, 1.0)
    assert t.stats.fail[0] == 1.0 and t.stats.answers.tolist() == [1, 1]
    assert t.stats.inflight.tolist() == [0, 0]


def test_regret_is_exported_as_a_metric():
    r = Router(MODELS, policy=RoutingConfig(bandit="thompson", seed=3))
    for i in range(200):
        served(r, f"t{i}")
    assert r.decisions == 200 and r.regret > 0
    m = Metrics()
    m.track_routing(r)
    text = m.render().decode()
    assert f"atp_routing_regret_total {r.regret}" in text.replace("e+0", "e0") or \
        "atp_routing_regret_total" in text
    assert 'atp_routing_quality_posterior{model="x"}' in text
    assert "atp_routing_decisions_total 200.0" in text


def test_linucb_learns_a_feature_dependent_correction():
    """x is good on questions, bad on code; y the reverse: LinUCB on the dense features learns it."""
    r = Router(MODELS, policy=RoutingConfig(bandit="linucb", explore=0.1, seed=0))
    code, question = "def f(x):\n    return x + 1\n```", "What is the capital of France?"
    for i in range(150):
        for text, good in ((code, "y"), (question, "x")):
            d = served(r, f"{i}-{len(text)}", text=text)
            r.feedback("acme", f"{i}-{len(text)}", 1.0 if d.model == good else 0.0, 2.0)
    assert served(r, "c", text=code).model == "y"
    assert served(r, "q", text=question).model == "x"


def test_posteriors_persist_across_restarts(tmp_path):
    path = tmp_path / bandit.FILE
    a = Router(MODELS, policy=RoutingConfig(bandit="linucb"))
    for i in range(5):
        served(a, f"p{i}")
        a.feedback("acme", f"p{i}", 0.25, 0.0)
    a.save(path)
    b = Router(list(reversed(MODELS)) + [ModelSpec("z", "p", "z")], policy=RoutingConfig(bandit="linucb"))
    assert b.load(path) == 2
    ta, tb = a.table, b.table
    for mid in ("x", "y"):
        i, j = ta.index[mid], tb.index[mid]
        assert tb.stats.succ[j] == ta.stats.succ[i] and tb.stats.fail[j] == ta.stats.fail[i]
        assert (tb.bandit.A_inv[j] == ta.bandit.A_inv[i]).all()
    assert tb.stats.succ[tb.index["z"]] == 0.0
    assert Router(MODELS).load(tmp_path / "missing.npz") == 0


def linucb_router(models=MODELS) -> Router:
    r = Router(models, policy=RoutingConfig(bandit="linucb"))
    rng = np.random.default_rng(0)
    for i in range(6):
        r.table.bandit.update(i % 2, rng.random(r.table.bandit.dim), float(rng.random()) - 0.5)
    return r


def test_linucb_keeps_A_beside_its_inverse():
    lin = linucb_router().table.bandit
    assert np.allclose(lin.A_inv @ lin.A, np.eye(lin.dim), atol=1e-10)
    assert (lin.A == lin.A.transpose(0, 2, 1)).all()     # exactly symmetric: packing halves it


def test_packed_sums_round_trip_and_reinvert():
    lin = linucb_router().table.bandit
    packed = lin.packed()
    d = lin.dim
    assert packed.shape == (2, d * (d + 1) // 2 + d)
    other = bandit.LinUCB(2, d)
    other.set_rows([1, 0], packed)            # row 1 takes model 0's sums
    assert (other.A[1] == lin.A[0]).all() and (other.b[1] == lin.b[0]).all()
    assert np.allclose(other.A_inv[1], np.linalg.inv(lin.A[0]))


def test_linucb_sums_persist_with_A(tmp_path):
    path = tmp_path / bandit.FILE
    a = linucb_router()
    a.save(path)
    b = Router(list(reversed(MODELS)), policy=RoutingConfig(bandit="linucb"))
    assert b.load(path) == 2
    la, lb = a.table.bandit, b.table.bandit
    for k in ("A", "A_inv", "b"):
        assert (getattr(lb, k)[::-1] == getattr(la, k)).all()


def test_a_posterior_file_without_A_is_loaded_by_inverting_A_inv(tmp_path):
    path = tmp_path / bandit.FILE
    a = linucb_router()
    a.save(path)
    with np.load(path) as z:                     # as written before A was saved
        old = {k: z[k] for k in z.files if k != "A"}
    with open(path, "wb") as f:
        np.savez(f, **old)
    b = Router(MODELS, policy=RoutingConfig(bandit="linucb"))
    assert b.load(path) == 2
    la, lb = a.table.bandit, b.table.bandit
    assert (lb.A_inv == la.A_inv).all() and (lb.b == la.b).all()
    assert np.allclose(lb.A, la.A, rtol=1e-9)


def test_a_singular_saved_A_inv_is_named(tmp_path):
    path = tmp_path / bandit.FILE
    a = linucb_router()
    a.table.bandit.A_inv[0] = 0.0
    a.save(path)
    with np.load(path) as z:
        old = {k: z[k] for k in z.files if k != "A"}
    with open(path, "wb") as f:
        np.savez(f, **old)
    with pytest.raises(ValueError, match=f"{path}.*singular"):
        Router(MODELS, policy=RoutingConfig(bandit="linucb")).load(path)


def test_a_corrupt_posterior_file_is_named(tmp_path):
    path = tmp_path / bandit.FILE
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=str(path)):
        Router(MODELS).load(path)


def test_set_models_swaps_the_table_and_keeps_what_was_learnt():
    r = Router(MODELS, policy=RoutingConfig(bandit="greedy"))
    served(r, "s")
    r.feedback("acme", "s", 1.0, 0.0)
    old = r.table
    removed = []
    r.on_removed = removed.extend          # the learning merge forgets their bases
    r.set_models([MODELS[0], ModelSpec("w", "p", "w", quality=0.1)])
    assert r.table is not old and set(r.models) == {"x", "w"} and removed == ["y"]
    assert r.table.stats.succ[0] == 1.0
    assert served(r, "s2").model in ("x", "w")


def test_draws_reproduce_for_a_seed():
    a = Router(MODELS, policy=RoutingConfig(bandit="thompson", seed=11))
    b = Router(MODELS, policy=RoutingConfig(bandit="thompson", seed=11))
    picks = [[served(r, f"d{i}").model for i in range(300)] for r in (a, b)]
    assert picks[0] == picks[1] and len(set(picks[0])) == 2
    assert np.isfinite(a.regret)


def test_debug_log_shows_the_decision(caplog):
    import logging
    r = Router(MODELS, policy=RoutingConfig(bandit="greedy"))
    with caplog.at_level(logging.DEBUG, logger="atp.routing"):
        served(r, "dbg-1")
    line = next(m for m in caplog.messages if m.startswith("route dbg-1"))
    assert "-> x (chain y)" in line and "predicted quality 0.700" in line
