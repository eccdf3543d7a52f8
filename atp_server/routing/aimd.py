"""AIMD concurrency windows per provider: a pure update over state arrays, and the gate dispatch goes through.

Each provider has a window: how many requests it may have in flight. A success within the latency
SLO grows it additively (+increase / window per success, i.e. +increase per window's worth of
successes — TCP's congestion avoidance, RFC 5681 §3.1); a congestion signal — the provider's 429
(RATE_LIMITED), a timeout, or a success slower than the SLO — shrinks it multiplicatively
(x decrease), at most once per round trip (the latency EWMA): the signals of one overload episode
arrive together and are one event, as TCP counts the losses of one window once (RFC 6582).
Other failures (a 5xx, a cut stream, a client error, a cancel) say nothing about load: the breaker
(routing/health.py) handles faults, the window only load. The window stays in [floor, ceiling];
the ceiling is the provider's configured max concurrency.

`update` is the only place the state changes. It exists twice (house pattern of
routing/kernels.py): a plain-Python reference and a numba twin, identical results (the same IEEE
operations in the same order, no fastmath); `ATP_NUMBA=0` forces the reference. Which one the gate
uses is decided by measurement (`python -m bench sched`, bench/RESULTS.md): one scalar update is
too little work to pay numba's call overhead, so the gate uses the Python one (`UPDATE`).

The gate (`ProviderWindows.slot`) is the thin shell: entering takes a slot of the chosen
provider's window or raises OVERLOADED (retryable) so the pipeline fails over down the chain (to
another provider with room: admission's capacity is the windows' sum, so a full window with
admission under capacity means routing concentrated on this provider); leaving releases the slot
and reports how the call ended.
"""
import numpy as np

from codec.errors import ErrorCode

from . import kernels
from ..types import AtpError

SUCCESS, CONGESTION, NEUTRAL = 0, 1, 2
# Latency EWMA weight per sample: 1/8, TCP's smoothed-RTT gain (RFC 6298 §2), so one slow
# answer moves the once-per-round-trip guard only a little.
RTT_GAIN = 0.125
# Before any sample the round trip is unknown; a quarter second is a fast completion's order of
# magnitude, and the EWMA replaces it within a few calls.
RTT_INITIAL_S = 0.25
_CONGESTION_CODES = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.UPSTREAM_TIMEOUT,
                               ErrorCode.TIMEOUT, ErrorCode.OVERLOADED})


def _update_py(window, floor, ceiling, slo_s, rtt_s, last_cut, i, signal, latency_s, now,
               increase, decrease):
    """Apply one call's outcome to provider i; returns its new window."""
    w = window[i]
    if signal == NEUTRAL:
        return w
    rtt_s[i] = rtt_s[i] + (latency_s - rtt_s[i]) * RTT_GAIN
    if signal == SUCCESS and slo_s[i] > 0.0 and latency_s > slo_s[i]:
        signal = CONGESTION
    if signal == SUCCESS:
        w = w + increase / w
        if w > ceiling[i]:
            w = ceiling[i]
    elif now - last_cut[i] >= rtt_s[i]:
        w = w * decrease
        if w < floor[i]:
            w = floor[i]
        last_cut[i] = now
    window[i] = w
    return w


def _build_numba():
    import numba
    return numba.njit(cache=True, nogil=True)(_update_py)   # the same source, compiled


UPDATE_PYTHON = _update_py
UPDATE_NUMBA = _build_numba() if kernels.NUMBA is not None else None   # same ATP_NUMBA switch
UPDATE = UPDATE_PYTHON   # what the gate calls: measured faster for one scalar update (see above)


def signal_of(exc: BaseException | None) -> int:
    """How a call's ending speaks about load: SUCCESS, CONGESTION or NEUTRAL."""
    if exc is None:
        return SUCCESS
    if isinstance(exc, AtpError) and exc.code in _CONGESTION_CODES:
        return CONGESTION
    return NEUTRAL


class WindowState:
    """The per-provider columns `update` reads and writes (one row per provider).

    Plain Python lists for the Python update (indexing a list is ~2x cheaper than a numpy
    scalar, and the gate does it on every dispatch); numpy arrays for the numba kernel
    (`arrays=True`). The values are IEEE doubles either way, so both give the same numbers.
    """

    def __init__(self, n: int, arrays: bool = False):
        col = (lambda v: np.full(n, v)) if arrays else (lambda v: [v] * n)
        self.window = col(1.0)
        self.floor = col(1.0)
        self.ceiling = col(1.0)
        self.slo_s = col(0.0)               # 0 = no latency SLO for this provider
        self.rtt_s = col(RTT_INITIAL_S)
        self.last_cut = col(-np.inf)
        self.inflight = np.zeros(n, dtype=np.int64) if arrays else [0] * n
        self.whole = [1] * n                # int(window), kept by the gate: no int() per call


class ProviderWindows:
    """The dispatch gate: `with windows.slot(provider, slo_ms):` around one upstream call.

    `bounds` maps provider name -> (floor, ceiling, initial, slo_ms). `total` is the sum of the
    integer windows, kept up to date, read by admission as its capacity.
    """

    def __init__(self, bounds: dict, *, increase: float = 1.0, decrease: float = 0.5,
                 clock, update=None):
        self.index = {name: i for i, name in enumerate(bounds)}
        self.names = tuple(bounds)
        self.update = update or UPDATE
        self.state = s = WindowState(len(bounds), arrays=self.update is UPDATE_NUMBA)
        for i, (floor, ceiling, initial, slo_ms) in enumerate(bounds.values()):
            if not 1 <= floor <= ceiling:
                raise ValueError(f"provider {self.names[i]}: need 1 <= floor <= ceiling")
            s.floor[i], s.ceiling[i] = floor, ceiling
            s.window[i] = min(max(initial or ceiling, floor), ceiling)
            s.slo_s[i] = slo_ms / 1000
            s.window[i] = float(s.window[i])
            s.whole[i] = int(s.window[i])
        self.increase, self.decrease = increase, decrease
        self.clock = clock
        self.total = sum(s.whole)
        self._columns = (s.window, s.floor, s.ceiling, s.slo_s, s.rtt_s, s.last_cut)
        self.refused = 0                      # slots refused because a window was full
        # () -> whether admission holds more slots than the windows now total: a window that just
        # shrank does not recall calls admission already let through (TCP does not recall segments
        # in flight either); they pass, new ones wait in admission's queue. App wires it.
        self.overcommitted = lambda: False

    def window(self, provider: str) -> int:
        return self.state.whole[self.index[provider]]

    def inflight(self, provider: str) -> int:
        return int(self.state.inflight[self.index[provider]])

    def slot(self, provider: str, slo_ms: float | None = None) -> "_Slot":
        """A context manager holding one slot of `provider`'s window (OVERLOADED when full)."""
        i = self.index.get(provider)
        return _Slot(self, -1 if i is None else i, slo_ms)

    def _enter(self, i: int) -> None:
        s = self.state
        if s.inflight[i] >= s.whole[i] and not self.overcommitted():
            self.refused += 1
            raise AtpError(ErrorCode.OVERLOADED,
                           f"provider {self.names[i]}: its concurrency window ({s.whole[i]}) is full",
                           retry_after_ms=max(1, int(s.rtt_s[i] * 1000)))
        s.inflight[i] += 1

    def _leave(self, i: int, exc, started: float, slo_ms) -> None:
        s = self.state
        s.inflight[i] -= 1
        now = self.clock()
        sig = SUCCESS if exc is None else signal_of(exc)
        if sig == SUCCESS and slo_ms and s.slo_s[i] == 0.0 and now - started > slo_ms / 1000:
            sig = CONGESTION    # the request's own SLO, where the provider has none configured
        w = self.update(*self._columns, i, sig, now - started, now, self.increase, self.decrease)
        whole = s.whole[i]
        if not whole <= w < whole + 1:     # the integer window moved (rare: float compares only)
            s.whole[i] = int(w)
            self.total += s.whole[i] - whole


class _Slot:
    """One held slot (a class, not @contextmanager: it is on every dispatch)."""

    __slots__ = ("windows", "i", "slo_ms", "started")

    def __init__(self, windows: ProviderWindows, i: int, slo_ms):
        self.windows, self.i, self.slo_ms = windows, i, slo_ms

    def __enter__(self) -> "_Slot":
        if self.i >= 0:
            self.windows._enter(self.i)
            self.started = self.windows.clock()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.i >= 0:
            self.windows._leave(self.i, exc, self.started, self.slo_ms)
        return False


def provider_bounds(config) -> dict:
    """name -> (floor, ceiling, initial, slo_ms) for every provider a model uses: [scheduling.providers]
    where given; the ceiling defaults to the provider's pooled connections (max_connections: more
    in flight would only queue in the pool) or else server.max_inflight (admission's own bound)."""
    out = {}
    used = {m.provider for m in config.models}   # a provider no model uses would only inflate Σ windows
    for p in config.providers:
        if p.name not in used:
            continue
        w = config.scheduling.providers.get(p.name)
        ceiling = (w.max_concurrency if w and w.max_concurrency else
                   getattr(p.settings, "max_connections", 0) or config.server.max_inflight)
        floor = min(w.min_window if w else 1, ceiling)
        out[p.name] = (floor, ceiling, w.initial_window if w else 0, w.latency_slo_ms if w else 0.0)
    return out
