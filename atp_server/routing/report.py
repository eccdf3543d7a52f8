"""report(table, outcome, now): the one place the model table's statistics change.

Outcomes (one frozen event type per thing that can happen, dispatched on type):
  Started   — a request was routed to a model: in-flight + 1.
  Answered  — the model answered: latency EWMA / percentiles, error rate decays; an answer slower
              than the request's SLO counts as a quality failure (it did not meet the request).
  Failed    — the call ended in an upstream fault: error rate rises, a quality failure.
With the decision's prompt features (and the quality predicted then), a quality failure — a
Failed, or an Answered later than its SLO — is also LinUCB's reward 0 for that model: without it
LinUCB learnt only from explicit scores, never from a failover or an outage.
  Abandoned — ended for a reason that says nothing about the model (client error, cancel).
  Scored    — explicit feedback: the score is a reward in [0, 1] for the model that served.
An end (Answered/Failed/Abandoned) with release=True gives back the in-flight slot Started took
(after a failover, only the first model's end does: Started counted that one).
"""
from dataclasses import dataclass

import numpy as np

from .table import EWMA_ALPHA, LATENCY_RING, PERCENTILE_EVERY


@dataclass(frozen=True, slots=True)
class Started:
    model: str


@dataclass(frozen=True, slots=True)
class Answered:
    model: str
    latency_ms: float
    slo_ms: float | None = None
    release: bool = True
    features: object = None     # as in Scored: LinUCB's context, for a late answer's reward 0
    base: float | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    model: str
    release: bool = True
    features: object = None
    base: float | None = None


@dataclass(frozen=True, slots=True)
class Abandoned:
    model: str
    release: bool = True


@dataclass(frozen=True, slots=True)
class Scored:
    model: str
    score: float
    features: object = None     # LinUCB context of the decision (choose.Trace.features)
    base: float | None = None   # the quality predicted for this model then (LinUCB residual)


_KINDS = frozenset({Started, Answered, Failed, Abandoned, Scored})


def _answer(s, r: int, latency_ms: float) -> None:
    s.lat_ewma[r] += EWMA_ALPHA * (latency_ms - s.lat_ewma[r])
    n = int(s.ring_n[r])
    s.lat_ring[r, n % LATENCY_RING] = latency_ms
    s.ring_n[r] = n + 1
    if (n + 1) % PERCENTILE_EVERY == 0 or n < PERCENTILE_EVERY:
        recent = np.sort(s.lat_ring[r, :min(n + 1, LATENCY_RING)]).tolist()
        s.lat_p50[r], s.lat_p95[r] = quantile(recent, 0.50), quantile(recent, 0.95)


def quantile(ascending: list, q: float) -> float:
    """np.percentile(x, 100 q)'s default ("linear") method on already-sorted values, bit for bit
    (its lerp from the upper end when t >= 0.5 included): np.percentile itself measured ~150 µs
    for 128 values here, a sort plus this ~9 µs (tests/routing/test_report.py compares them)."""
    pos = q * (len(ascending) - 1)
    lo = int(pos)
    if lo + 1 >= len(ascending):
        return ascending[lo]
    t = pos - lo
    x, y = ascending[lo], ascending[lo + 1]
    return y - (y - x) * (1 - t) if t >= 0.5 else x + (y - x) * t


def report(table, outcome, now: float) -> bool:
    """Apply one outcome; False when it names a model the table does not have (a table swapped
    since the decision: the report is dropped, never applied to another model's row)."""
    kind = type(outcome)
    if kind not in _KINDS:
        raise TypeError(f"not a routing outcome: {outcome!r}")
    r = table.index.get(outcome.model)
    if r is None:
        return False
    s = table.stats
    if kind is Started:
        s.inflight[r] += 1
        return True
    if kind is Scored:
        y = outcome.score
        s.succ[r] += y
        s.fail[r] += 1.0 - y
        _contextual(table, r, outcome, y)
        return True
    if outcome.release and s.inflight[r] > 0:
        s.inflight[r] -= 1
    if kind is Answered:
        s.answers[r] += 1
        s.err_rate[r] -= EWMA_ALPHA * s.err_rate[r]
        _answer(s, r, outcome.latency_ms)
        if outcome.slo_ms is not None and outcome.latency_ms > outcome.slo_ms:
            s.fail[r] += 1.0
            _contextual(table, r, outcome, 0.0)
    elif kind is Failed:
        s.answers[r] += 1
        s.err_rate[r] += EWMA_ALPHA * (1.0 - s.err_rate[r])
        s.fail[r] += 1.0
        _contextual(table, r, outcome, 0.0)
    return True


def _contextual(table, r: int, outcome, reward: float) -> None:
    """LinUCB's update for one reward, when the outcome carries the decision's context."""
    if outcome.features is not None and table.bandit is not None and outcome.base is not None:
        table.bandit.update(r, outcome.features, reward - outcome.base)
