"""The selection policy: λ = 0 is max quality, huge λ is cheapest, the threshold rule, twins equal."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atp_server.routing import kernels
from atp_server.routing.predictor import select, select_batch

NAMES = [f"m{i}" for i in range(16)]


def test_zero_weight_is_max_quality(impl):
    q = np.array([0.2, 0.9, 0.5, 0.9])
    c = np.array([1.0, 5.0, 0.1, 3.0])
    ch = select(q, c, cost_weight=0.0, impl=impl)
    assert ch.order == (3, 1, 2, 0)          # tie on quality: cheaper first
    assert ch.confidence == 0.9


def test_huge_weight_is_cheapest(impl):
    q = np.array([0.2, 0.9, 0.5, 0.1])
    c = np.array([1.0, 5.0, 0.1, 0.1])
    assert select(q, c, cost_weight=1e9, impl=impl).best == 2      # tie on cost: better first
    assert select(q, c, cost_weight=np.inf, impl=impl).order == (2, 3, 0, 1)


def test_trade_off_uses_normalised_cost(impl):
    q = np.array([0.80, 0.70])
    c = np.array([0.010, 0.001])
    # gain 0.1 for 0.009 USD: worth it when λ·0.009/cost_ref < 0.1
    assert select(q, c, cost_weight=1.0, cost_ref=0.1, impl=impl).best == 0
    assert select(q, c, cost_weight=2.0, cost_ref=0.1, impl=impl).best == 1


def test_threshold_rule(impl):
    q = np.array([0.95, 0.85, 0.70, 0.88])
    c = np.array([9.0, 2.0, 0.5, 3.0])
    ch = select(q, c, min_quality=0.8, impl=impl)
    assert ch.order == (1, 3, 0, 2)           # cheapest meeting 0.8 first, then by cost, then rest
    assert select(q, c, min_quality=0.99, impl=impl).order == (0, 3, 1, 2)   # none: by quality
    assert select(q, c, min_quality=0.0, impl=impl).best == 2


def test_reasons_and_chain():
    q = np.array([0.9, 0.6])
    c = np.array([0.01, 0.0001])
    ch = select(q, c, cost_weight=0.1, cost_ref=0.01)
    assert ch.chain(["big", "small"]) == ("big", "small")
    why = " ".join(ch.reasons(["big", "small"], 0.01))
    assert "big" in why and "0.900" in why and "runner-up small" in why
    assert "cheapest of 1" in " ".join(select(q, c, min_quality=0.8).reasons(["big", "small"]))


def test_exactly_one_rule():
    with pytest.raises(ValueError):
        select(np.ones(2), np.ones(2))
    with pytest.raises(ValueError):
        select(np.ones(2), np.ones(2), cost_weight=1.0, min_quality=0.5)


arrays = st.integers(1, 16).flatmap(lambda m: st.tuples(
    st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]) | st.floats(0, 1), min_size=m, max_size=m),
    st.lists(st.sampled_from([0.0, 1e-4, 1e-3]) | st.floats(0, 0.1), min_size=m, max_size=m)))


@settings(max_examples=200, deadline=None)
@given(arrays, st.sampled_from([0.0, 0.01, 0.5, 3.0, 1e6, np.inf]), st.floats(0, 1))
def test_batch_and_twins_agree(qc, lam, thr):
    """select (each twin) and select_batch pick the same model, including ties (discrete values)."""
    q, c = np.array(qc[0]), np.array(qc[1])
    for kw in ({"cost_weight": lam, "cost_ref": 0.01}, {"min_quality": thr}):
        orders = {impl.name: select(q, c, impl=impl, **kw).order
                  for impl in (kernels.NUMPY, kernels.NUMBA) if impl is not None}
        assert len(set(orders.values())) == 1
        first = next(iter(orders.values()))[0]
        assert select_batch(q[None], c[None], **kw)[0] == first
