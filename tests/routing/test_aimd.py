"""AIMD windows: additive increase, multiplicative decrease once per round trip, bounds; the gate; both twins."""
import os

import numpy as np
import pytest

from atp_server import config
from atp_server.routing import aimd
from atp_server.routing.aimd import CONGESTION, NEUTRAL, SUCCESS, ProviderWindows, WindowState
from atp_server.types import AtpError
from codec.errors import ErrorCode

UPDATES = [u for u in (aimd.UPDATE_PYTHON, aimd.UPDATE_NUMBA) if u is not None]


@pytest.fixture(params=UPDATES, ids=lambda u: "numba" if u is aimd.UPDATE_NUMBA else "python")
def update(request):
    return request.param


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_numba_twin_is_available_unless_forced_off():
    assert (aimd.UPDATE_NUMBA is None) == (os.environ.get("ATP_NUMBA") == "0")


def _state(window=4.0, floor=1.0, ceiling=8.0, slo_s=0.0):
    s = WindowState(1, arrays=True)
    s.window[0], s.floor[0], s.ceiling[0], s.slo_s[0] = window, floor, ceiling, slo_s
    return s


def _apply(update, s, signal, latency, now):
    return update(s.window, s.floor, s.ceiling, s.slo_s, s.rtt_s, s.last_cut, 0, signal, latency,
                  now, 1.0, 0.5)


def test_successes_grow_the_window_by_one_per_windowful_up_to_the_ceiling(update):
    s = _state(window=4.0)
    for _ in range(4):                      # one window's worth of successes: +~1
        _apply(update, s, SUCCESS, 0.1, 0.0)
    assert 4.9 < s.window[0] < 5.0
    for _ in range(200):
        _apply(update, s, SUCCESS, 0.1, 0.0)
    assert s.window[0] == 8.0               # never above the provider's max concurrency


def test_congestion_halves_once_per_round_trip_and_stops_at_the_floor(update):
    s = _state(window=8.0)
    s.rtt_s[0] = 0.2
    _apply(update, s, CONGESTION, 0.2, 10.0)
    assert s.window[0] == 4.0
    _apply(update, s, CONGESTION, 0.2, 10.1)   # same overload episode (within one RTT): no second cut
    assert s.window[0] == 4.0
    for k in range(10):
        _apply(update, s, CONGESTION, 0.2, 11.0 + k)
    assert s.window[0] == 1.0                  # the floor: one request still probes the provider


def test_a_success_over_the_slo_counts_as_congestion_and_neutral_changes_nothing(update):
    s = _state(window=8.0, slo_s=0.5)
    _apply(update, s, SUCCESS, 0.9, 10.0)
    assert s.window[0] == 4.0
    before = (s.window.copy(), s.rtt_s.copy(), s.last_cut.copy())
    _apply(update, s, NEUTRAL, 5.0, 20.0)
    assert all(np.array_equal(a, b) for a, b in zip(before, (s.window, s.rtt_s, s.last_cut)))


def test_both_twins_give_bit_identical_states_on_a_random_signal_trace():
    compiled = aimd.UPDATE_NUMBA or aimd.UPDATE_PYTHON
    states = []
    for update in (aimd.UPDATE_PYTHON, compiled):
        s = WindowState(4, arrays=True)
        s.window[:], s.floor[:], s.ceiling[:] = [4, 1, 32, 2], [1, 1, 2, 2], [8, 4, 64, 2]
        s.slo_s[:] = [0.0, 0.3, 0.5, 0.0]
        r = np.random.default_rng(5)
        now = 0.0
        for _ in range(5000):
            now += float(r.exponential(0.02))
            update(s.window, s.floor, s.ceiling, s.slo_s, s.rtt_s, s.last_cut, int(r.integers(0, 4)),
                   int(r.integers(0, 3)), float(r.exponential(0.3)), now, 1.0, 0.5)
        states.append((s.window.copy(), s.rtt_s.copy(), s.last_cut.copy()))
    assert all(np.array_equal(a, b) for a, b in zip(*states))   # exact, not approximately
    assert len(set(states[0][0])) > 1             # the trace moved the windows


def test_signal_of_counts_only_load_signals():
    assert aimd.signal_of(None) == SUCCESS
    for code in (ErrorCode.RATE_LIMITED, ErrorCode.UPSTREAM_TIMEOUT, ErrorCode.TIMEOUT):
        assert aimd.signal_of(AtpError(code, "x")) == CONGESTION
    for exc in (AtpError(ErrorCode.UPSTREAM_ERROR, "5xx"), AtpError(ErrorCode.INVALID_REQUEST, "x"),
                GeneratorExit(), ValueError("bug")):
        assert aimd.signal_of(exc) == NEUTRAL


def test_the_gate_refuses_past_the_window_and_releases_whatever_ends_the_call(update):
    clock = Clock()
    w = ProviderWindows({"p": (1, 2, 2, 0.0)}, clock=clock, update=update)
    assert w.total == 2
    with w.slot("p"), w.slot("p"):
        with pytest.raises(AtpError) as info:
            with w.slot("p"):
                pass                                # never reached
        assert w.inflight("p") == 2
    err = info.value
    assert err.code == ErrorCode.OVERLOADED and err.retryable and err.retry_after_ms >= 1
    assert w.inflight("p") == 0 and w.refused == 1
    with pytest.raises(AtpError):
        with w.slot("p"):
            clock.t += 1.0
            raise AtpError(ErrorCode.RATE_LIMITED, "429 upstream")
    assert w.inflight("p") == 0 and w.window("p") == 1 and w.total == 1
    with pytest.raises(KeyError):
        with w.slot("p"):
            raise KeyError("a bug")                 # released all the same, window untouched
    assert w.inflight("p") == 0 and w.window("p") == 1
    with w.slot("unknown-provider"):                # providers without a window pass through
        pass


def test_the_request_slo_applies_where_the_provider_has_none():
    clock = Clock()
    w = ProviderWindows({"p": (1, 8, 8, 0.0)}, clock=clock)
    with w.slot("p", slo_ms=100):
        clock.t += 0.5                               # 500 ms against a 100 ms objective
    assert w.window("p") == 4
    with w.slot("p", slo_ms=None):
        clock.t += 0.5
    assert w.window("p") == 4                        # no objective: a slow success is a success


def test_bounds_come_from_scheduling_then_max_connections_then_max_inflight(tmp_path):
    # `idle` serves no model: it gets no window (it would only inflate admission's capacity).
    cfg = config.loads(f"""
[server]
state_dir = "{tmp_path}"
max_inflight = 100
{config.dev_auth_toml("dev")}
[[providers]]
name = "sim"
type = "simulated"
[[providers]]
name = "up"
type = "openai_compat"
base_url = "http://127.0.0.1:1"
max_connections = 16
[[providers]]
name = "tuned"
type = "simulated"
[scheduling.providers.tuned]
max_concurrency = 6
min_window = 2
initial_window = 3
latency_slo_ms = 900
[[providers]]
name = "idle"
type = "simulated"
[[models]]
id = "m"
provider = "sim"
[[models]]
id = "u"
provider = "up"
[[models]]
id = "t"
provider = "tuned"
""")
    assert aimd.provider_bounds(cfg) == {"sim": (1, 100, 0, 0.0), "up": (1, 16, 0, 0.0),
                                         "tuned": (2, 6, 3, 900.0)}
    w = ProviderWindows(aimd.provider_bounds(cfg), clock=Clock())
    assert (w.window("sim"), w.window("up"), w.window("tuned")) == (100, 16, 3)


def test_calls_admitted_before_a_window_shrank_still_pass_the_gate():
    clock = Clock()
    w = ProviderWindows({"p": (1, 4, 4, 0.0)}, clock=clock)
    admitted = [0]
    w.overcommitted = lambda: admitted[0] > w.total
    slots = [w.slot("p") for _ in range(4)]
    for s in slots:
        s.__enter__()
    slots[0].__exit__(AtpError, AtpError(ErrorCode.RATE_LIMITED, "429"), None)   # one call got a 429
    assert w.window("p") == 2 and w.inflight("p") == 3
    admitted[0] = 4                 # admission let four through while the window was 4
    with w.slot("p"):               # the fourth was granted before the shrink: it passes
        assert w.inflight("p") == 4
    admitted[0] = 2                 # admission is back within the windows: the gate is strict
    with pytest.raises(AtpError) as info:
        with w.slot("p"):
            pass
    assert info.value.code == ErrorCode.OVERLOADED
