"""The model table: columns from specs, read-only statics, atomic rebuild keeping statistics, report()."""
import numpy as np
import pytest

from atp_server.routing.health import HealthBoard
from atp_server.routing.report import Abandoned, Answered, Failed, Scored, Started, report
from atp_server.routing.spec import ModelSpec
from atp_server.routing.table import (LATENCY_RING, NO_WINDOW, Alias, TableRef, build_table,
                                      rebuild)

MODELS = [
    ModelSpec("a", "p", "a", 0.1, 0.2, 4096, frozenset({"chat"}), 0.5, 100),
    ModelSpec("b", "p", "b", 1.0, 2.0, 32768, frozenset({"chat", "tools"}), 0.75, 400),
    ModelSpec("c", "p", "c", 5.0, 15.0, 131072, frozenset({"chat", "tools", "vision"}), 0.95, 900),
]


def table(models=MODELS, **kw):
    return build_table(models, HealthBoard(), **kw)


def test_columns_follow_the_specs():
    t = table()
    assert t.ids == ("a", "b", "c") and t.index == {"a": 0, "b": 1, "c": 2}
    assert t.price_out.tolist() == [0.2, 2.0, 15.0]
    assert t.context.tolist() == [4096, 32768, 131072]
    assert t.stats.lat_ewma.tolist() == [100, 400, 900]        # starts at the prior
    assert (t.stats.aimd_window == NO_WINDOW).all() and (t.stats.inflight == 0).all()
    tools = t.cap_mask(["tools"])
    assert [(int(c) & tools) == tools for c in t.caps] == [False, True, True]
    assert t.cap_mask(["telepathy"]) == -1


def test_static_columns_are_read_only():
    t = table()
    with pytest.raises(ValueError):
        t.price_in[0] = 9.0
    with pytest.raises(ValueError):
        t.F[0, 0] = 9.0


def test_duplicate_ids_and_bad_alias_are_refused():
    with pytest.raises(ValueError, match="unique"):
        table(MODELS + [MODELS[0]])
    with pytest.raises(ValueError, match="unknown models"):
        table(aliases=[Alias("smart", ("a", "ghost"))])
    with pytest.raises(ValueError, match="also a model id"):
        table(aliases=[Alias("a", ("b",))])


def test_rebuild_keeps_statistics_of_models_that_stay_and_swaps_whole():
    ref = TableRef(table())
    old = ref.table
    report(old, Scored("b", 1.0), 0.0)
    report(old, Answered("c", 50.0), 0.0)
    d = ModelSpec("d", "p", "d", 0.0, 0.0, 8192, frozenset({"chat"}), 0.6, 200)
    new = ref.swap([MODELS[2], d, MODELS[1]])
    assert ref.table is new and new is not old
    assert new.ids == ("c", "d", "b")
    assert new.stats.succ.tolist() == [0.0, 0.0, 1.0]
    assert new.stats.answers.tolist() == [1, 0, 0]
    assert new.stats.lat_ewma[1] == 200.0                     # a new model starts at its prior
    report(new, Scored("b", 1.0), 0.0)
    assert old.stats.succ[1] == 1.0                           # the old table is left alone


def test_report_answer_updates_latency_and_error_rate():
    t = table()
    report(t, Started("a"), 0.0)
    assert t.stats.inflight[0] == 1
    report(t, Answered("a", 200.0), 1.0)
    s = t.stats
    assert s.inflight[0] == 0 and s.answers[0] == 1
    assert s.lat_ewma[0] == pytest.approx(110.0)              # 100 + 0.1 × (200 − 100)
    assert s.lat_p50[0] == 200.0 and s.lat_p95[0] == 200.0
    assert s.succ[0] == 0 and s.fail[0] == 0                  # an answer alone says nothing of quality
    report(t, Failed("a"), 2.0)
    assert s.err_rate[0] == pytest.approx(0.1) and s.fail[0] == 1.0
    report(t, Abandoned("a"), 3.0)
    assert s.err_rate[0] == pytest.approx(0.1) and s.answers[0] == 2


def test_answer_over_the_slo_counts_as_a_quality_failure():
    t = table()
    report(t, Answered("b", 300.0, slo_ms=500), 0.0)
    assert t.stats.fail[1] == 0.0
    report(t, Answered("b", 800.0, slo_ms=500), 0.0)
    assert t.stats.fail[1] == 1.0


def test_percentiles_follow_recent_answers():
    t = table()
    for i in range(LATENCY_RING * 2):
        report(t, Answered("c", 1000.0 if i % 10 == 0 else 100.0), 0.0)
    assert t.stats.lat_p50[2] == 100.0
    assert t.stats.lat_p95[2] == 1000.0
    assert t.stats.ring_n[2] == LATENCY_RING * 2              # the ring wraps, bounded memory


def test_release_only_once_after_a_failover():
    t = table()
    report(t, Started("a"), 0.0)
    report(t, Failed("a", release=True), 0.0)
    report(t, Answered("b", 10.0, release=False), 0.0)
    assert t.stats.inflight.tolist() == [0, 0, 0]


def test_unknown_model_report_is_dropped_and_bad_outcome_raises():
    t = table()
    assert report(t, Scored("ghost", 1.0), 0.0) is False
    with pytest.raises(TypeError):
        report(t, ("a", 1.0), 0.0)


def test_breaker_column_reads_the_health_board():
    health = HealthBoard(threshold=1, cooldown_s=10)
    t = build_table(MODELS, health)
    from atp_server.routing.health import Outcome, finished
    health.report("b", finished(Outcome.FAULT, probe=False), 0.0)
    assert t.breaker_states(1.0).tolist() == [0, 1, 0]        # OPEN
    assert t.breaker_states(11.0).tolist() == [0, 2, 0]       # reads HALF_OPEN after the cooldown
    assert rebuild(t, MODELS[:2]).breaker_states(1.0).tolist() == [0, 1]
    assert isinstance(t.stats.S, np.ndarray)
