"""report.quantile: np.percentile's linear method on sorted values, bit for bit."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from atp_server.routing.report import quantile


@given(st.lists(st.floats(min_value=0.0, max_value=1e6, allow_nan=False), min_size=1, max_size=128),
       st.sampled_from([0.0, 0.05, 0.5, 0.95, 0.99, 1.0]))
def test_quantile_equals_numpy_percentile(values, q):
    expected = float(np.percentile(np.array(values), q * 100))
    assert quantile(sorted(values), q) == expected


@pytest.mark.parametrize("n", [1, 2, 3, 16, 127, 128])
def test_quantile_of_latencies_like_the_ring_holds(n):
    values = np.random.default_rng(n).exponential(50.0, n)
    got = [quantile(np.sort(values).tolist(), q) for q in (0.5, 0.95)]
    assert got == np.percentile(values, (50, 95)).tolist()
