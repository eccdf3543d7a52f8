"""The weighted fair queue core: weighted shares, bounds, shedding, removal; both selection twins agree."""
import numpy as np
import pytest

from atp_server.routing import fairq
from atp_server.routing.fairq import FairQueue, QueueFull

SELECTS = [s for s in (fairq.SELECT_PYTHON, fairq.SELECT_NUMBA) if s is not None]


@pytest.fixture(params=SELECTS, ids=lambda s: "numba" if s is fairq.SELECT_NUMBA else "python")
def select(request):
    return request.param


def test_numba_twin_is_available_unless_forced_off():
    # The suite runs with numba installed; without this a missing twin would silently skip half the tests.
    import os
    assert (fairq.SELECT_NUMBA is None) == (os.environ.get("ATP_NUMBA") == "0")


def test_select_picks_the_smallest_tag_and_breaks_ties_by_lowest_flow(select):
    finish = np.array([3.0, 1.0, 1.0, 2.0, np.inf])
    flows = np.array([0, 7, 2, 1, 0], dtype=np.int64)
    assert select(finish, flows, 4) == 2          # tag 1.0 twice: flow 2 beats flow 7
    assert select(finish, flows, 1) == 0
    assert select(finish, flows, 0) == -1


def test_both_twins_decide_identically_on_random_inputs():
    compiled = fairq.SELECT_NUMBA or fairq.SELECT_PYTHON   # ATP_NUMBA=0: the reference alone
    rng = np.random.default_rng(7)
    for _ in range(2000):
        n = int(rng.integers(0, 40))
        finish = rng.integers(0, 6, size=40).astype(np.float64) / 4   # many exact ties
        flows = rng.permutation(64)[:40].astype(np.int64)
        assert fairq.SELECT_PYTHON(finish, flows, n) == compiled(finish, flows, n)


def _trace(select, seed):
    """A random mix of pushes, pops and removals; the order items come out in."""
    rng = np.random.default_rng(seed)
    q = FairQueue(64, 16, select=select)
    weights = [16.0, 4.0, 1.0, 4.0, 1.0, 2.0]
    queued, out = [], []
    for step in range(3000):
        r = rng.random()
        if r < 0.55:
            t = int(rng.integers(0, len(weights)))
            fid = q.flow(f"t{t}", weights[t])
            item = (t, step)
            try:
                evicted = q.push(fid, item, cost=float(rng.integers(1, 4)))
            except QueueFull:
                out.append(("full", t))
                continue
            queued.append((fid, item))
            if evicted is not None:
                out.append(("shed", evicted))
        elif r < 0.9:
            out.append(q.pop())
        elif queued:
            fid, item = queued[int(rng.integers(0, len(queued)))]
            out.append(("removed", q.remove(fid, item)))
    return out


def test_a_random_workload_comes_out_in_the_same_order_on_both_twins():
    traces = [_trace(s, seed=11) for s in SELECTS]
    assert all(t == traces[0] for t in traces)
    kinds = [type(x).__name__ if not isinstance(x, tuple) or isinstance(x[0], int) else x[0]
             for x in traces[0]]
    assert kinds.count("tuple") > 500 and "shed" in kinds and "full" in kinds   # all paths ran


def test_backlogged_flows_are_served_in_proportion_to_their_weights(select):
    q = FairQueue(6000, 8, select=select)
    weights = {"gold": 16.0, "silver": 4.0, "bronze": 1.0}
    fids = {t: q.flow(t, w) for t, w in weights.items()}
    for i in range(2000):
        for t, fid in fids.items():
            q.push(fid, t)
    served = [q.pop() for _ in range(2100)]     # all three stay backlogged throughout
    counts = {t: served.count(t) for t in weights}
    total = sum(weights.values())
    for t, w in weights.items():
        assert abs(counts[t] - 2100 * w / total) <= 2, counts   # SCFQ: within a packet or two
    assert counts["bronze"] >= 99                             # bronze is slow, never starved


def test_a_full_queue_sheds_the_tenant_most_over_its_share_not_the_light_one(select):
    q = FairQueue(4, 4, select=select)
    heavy, light = q.flow("heavy", 1.0), q.flow("light", 1.0)
    for i in range(4):
        assert q.push(heavy, f"h{i}") is None
    assert q.push(light, "l0") == "h3"           # heavy's newest request makes room
    assert q.queued == 4 and q.depth(heavy) == 3 and q.depth(light) == 1
    with pytest.raises(QueueFull):               # heavy itself is refused: it is over its share
        q.push(heavy, "h4")
    assert q.push(light, "l1") == "h2"           # light at 2 would still not exceed heavy at 3
    with pytest.raises(QueueFull):
        q.push(light, "l2")                      # light would now be the one over its share
    assert q.queued == 4


def test_remove_takes_an_item_out_and_the_rest_still_comes_out_in_order(select):
    q = FairQueue(10, 4, select=select)
    a, b = q.flow("a", 1.0), q.flow("b", 1.0)
    for i in range(3):
        q.push(a, f"a{i}")
        q.push(b, f"b{i}")
    assert q.remove(a, "a0") is False            # identity, not equality: a copy is not queued
    item = q._items[a][0][1]
    assert q.remove(a, item) is True and q.remove(a, item) is False
    out = [q.pop() for _ in range(5)]
    assert sorted(out) == ["a1", "a2", "b0", "b1", "b2"] and q.pop() is None and q.queued == 0


def test_a_new_backlog_starts_every_flow_level(select):
    """Tags left over from an earlier backlog (here: requests cancelled out of the middle of a
    flow) must not push that flow back once the queue has emptied: both then alternate."""
    q = FairQueue(20, 4, select=select)
    a, b = q.flow("a", 1.0), q.flow("b", 1.0)
    items = [f"old{i}" for i in range(6)]
    for item in items:
        q.push(a, item)
    for item in items[:-1]:
        q.remove(a, item)                         # cancelled while queued
    assert q.pop() == "old5" and q.queued == 0    # a's tags ran ahead to 6
    for i in range(3):
        q.push(b, f"b{i}")
        q.push(a, f"a{i}")
    assert [q.pop() for _ in range(6)] == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_a_zero_length_queue_refuses_everything(select):
    q = FairQueue(0, 1, select=select)
    with pytest.raises(QueueFull):
        q.push(q.flow("a", 1.0), "x")
    assert q.queued == 0


def test_flow_records_are_bounded_and_idle_ones_are_reused(select):
    q = FairQueue(2, 3, select=select)
    for i in range(1000):
        assert q.flow(f"tenant{i}", 1.0) is not None   # idle records are recycled
    assert len(q._key_of) == 3 and len(q._keys) == 3
    busy = [q.flow(f"busy{i}", 1.0) for i in range(2)]
    for fid in busy:
        q.push(fid, "x")
    assert q.flow("another", 1.0) is not None           # one record is still idle
    q2 = FairQueue(5, 2, select=select)
    for i in range(2):
        q2.push(q2.flow(f"b{i}", 1.0), i)
    assert q2.flow("new", 1.0) is None                  # every record backlogged: refuse, do not grow
