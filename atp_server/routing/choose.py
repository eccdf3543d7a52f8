"""The routing core, pure: choose(request, table, now, rng) -> RouteDecision, with its reasons.

Mask (capabilities, context, budget, latency SLO, breaker) → score (predicted quality from the
trained router when loaded, else the config prior; the online posterior and exploration on top;
against expected cost and latency, weighed by the request's objective) → ordered failover chain.
Reads the table, never writes it (routing/report.py is the one mutator). The randomness is the
caller's `rng` (numpy Generator); `now` is the caller's monotonic clock.

Objectives, first one given wins: the request's explicit `cost_weight` λ or `min_quality` q
(ChatRequest fields, or the same names in its metadata — what gRPC and frame clients can send);
a routed alias's own; the request's tier (fast | balanced | high, config [routing.tiers]).
"""
import math
from typing import NamedTuple

import numpy as np

from codec.errors import ErrorCode

from ..types import AtpError, ChatRequest, RouteDecision
from . import scoring
from .config import PRIOR_COST_WEIGHTS
from .spec import estimate_tokens

_MODES = {"greedy": scoring.MEAN, "thompson": scoring.THOMPSON, "ucb": scoring.UCB,
          "linucb": scoring.MEAN}   # LinUCB's bonus rides on the prior (bandit.py), no draw


class Objective(NamedTuple):
    rule: int            # scoring.UTILITY or scoring.MIN_QUALITY
    cost_weight: float   # λ, quality per cost_ref
    latency_weight: float
    min_quality: float
    label: str


class Trace(NamedTuple):
    """What report() needs later about this decision (carried on RouteDecision.trace)."""
    features: object     # LinUCB context vector, or None
    base: object         # quality per table row before the LinUCB correction (its residual's base)
    regret: float        # expected regret of the pick vs the posterior-best (0 when exploiting)
    challenger: bool = False   # decided by a champion/challenger experiment's challenger table


def _meta_float(request: ChatRequest, name: str):
    v = request.metadata.get(name) if request.metadata else None
    if v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x):
        raise AtpError(ErrorCode.INVALID_REQUEST, f"metadata {name} must be a number, not {v!r}")
    return x


def objective(request: ChatRequest, table, alias=None) -> Objective:
    """The trade-off for this request (see the module docstring for the precedence)."""
    cw, mq = request.cost_weight, request.min_quality
    cw = _meta_float(request, "cost_weight") if cw is None else cw
    mq = _meta_float(request, "min_quality") if mq is None else mq
    tier = request.tier
    if cw is None and mq is None and alias is not None:
        cw, mq, tier = alias.cost_weight, alias.min_quality, alias.tier or tier
    if cw is not None and mq is not None:
        raise AtpError(ErrorCode.INVALID_REQUEST, "give cost_weight or min_quality, not both")
    weights = table.policy.tiers.get(tier)
    if weights is None:
        raise AtpError(ErrorCode.INVALID_REQUEST, f"tier must be one of fast, balanced, high, "
                       f"not {tier!r}")
    if mq is not None:
        if not 0.0 <= mq <= 1.0:
            raise AtpError(ErrorCode.INVALID_REQUEST, f"min_quality must be in [0, 1], not {mq}")
        return Objective(scoring.MIN_QUALITY, 0.0, 0.0, mq, f"cheapest with quality >= {mq:g}")
    if cw is not None:
        if not cw >= 0.0:
            raise AtpError(ErrorCode.INVALID_REQUEST, f"cost_weight must be >= 0, not {cw}")
        return Objective(scoring.UTILITY, cw, weights.latency_weight, 0.0, f"cost_weight {cw:g}")
    lam = weights.cost_weight
    learned = table.predictor is not None and lam is None and tier in table.predictor.tiers
    if lam is None:   # the trained router's λ for this tier, else the documented default
        lam = table.predictor.tiers[tier] if learned else PRIOR_COST_WEIGHTS[tier]
    return Objective(scoring.UTILITY, lam, weights.latency_weight, 0.0,
                     f"tier {tier} (cost_weight {lam:g}{' learned' if learned else ''}, "
                     f"latency_weight {weights.latency_weight:g})")


def _tier_objective(table, tier: str) -> Objective:
    cache = table.objectives
    obj = cache.get(tier)
    if obj is None:
        if tier not in table.policy.tiers:
            raise AtpError(ErrorCode.INVALID_REQUEST, f"unknown tier {tier!r}")
        obj = cache[tier] = objective(_TierOnly(tier), table)
    return obj


class _TierOnly(NamedTuple):
    tier: str
    cost_weight: None = None
    min_quality: None = None
    metadata: dict = {}


def prompt_text(request: ChatRequest) -> str:
    """What the quality predictor reads: every message's text, in order."""
    msgs = request.messages
    return msgs[0][1] if len(msgs) == 1 else "\n".join(c for _, c in msgs)


_WHY = {scoring.CONTEXT: "context {ctx} too small", scoring.OVER_BUDGET: "over max_cost_usd",
        scoring.OVER_SLO: "p95 latency over the SLO", scoring.CIRCUIT: "circuit open"}


def _excluded(table, request, why) -> str:
    parts = []
    for r, w in enumerate(why.tolist()):
        if w == scoring.OK or w == scoring.NOT_IN_SET:
            continue
        spec = table.specs[r]
        if w == scoring.LACKS_CAPS:
            need = set(request.capabilities) - spec.capabilities
            parts.append(f"{spec.id} (lacks {', '.join(sorted(need))})")
        elif w == scoring.CIRCUIT and _pressure_blocked(table, r):
            parts.append(f"{spec.id} (not loaded, memory pressure)")
        else:
            parts.append(f"{spec.id} ({_WHY[w].format(ctx=spec.context_window)})")
    return ", ".join(parts)


def _pressure_blocked(table, r: int) -> bool:
    rb = table.resource_block
    return rb is not None and bool(rb[r])


# Retry-After when memory pressure excludes every candidate: one probe round of resources.py
# (local servers are re-read once a second), so a retry sees what was unloaded meanwhile.
PRESSURE_RETRY_MS = 1000


def choose(request: ChatRequest, table, now: float, rng, *, impl=None) -> RouteDecision:
    """The ordered chain for `request` with reasons, estimates and confidence; AtpError when none.

    NO_ROUTE (a 4xx) when the request itself excludes every model; UNAVAILABLE (retryable, with
    retry_after_ms) when health excludes any of those that would otherwise fit.
    """
    impl = impl or scoring.IMPL
    alias = None
    pinned = False
    in_set = table.every
    reasons = []
    if request.model:
        r = table.index.get(request.model)
        if r is not None:
            pinned = True
            in_set = table.only[r]
            reasons.append("pinned by request")
        else:
            alias = table.aliases.get(request.model)
            if alias is None:
                known = sorted(table.ids) + sorted(table.aliases)
                raise AtpError(ErrorCode.UNKNOWN_MODEL, f"unknown model {request.model!r}; "
                               f"known: {', '.join(known)}")
            in_set = table.alias_sets[alias.name]
            reasons.append(f"alias {alias.name} ({alias.mode}: {', '.join(alias.models)})")
    fixed = pinned or (alias is not None and alias.mode != "routed")
    capbits = table.cap_mask(request.capabilities) if request.capabilities else 0
    health = table.health
    blocked = table.no_block
    if health.not_closed:
        blocked = np.array([not health.admits(m, now) for m in table.ids], dtype=np.bool_)
    if table.resource_block is not None:    # memory pressure: local models not loaded (resources.py)
        blocked = blocked | table.resource_block
    policy = table.policy
    if fixed:
        obj = _FIXED
    elif (alias is None and request.cost_weight is None and request.min_quality is None
          and not request.metadata):   # the common case, cached per table
        obj = table.objectives.get(request.tier) or _tier_objective(table, request.tier)
    else:
        obj = objective(request, table, alias)
    mode = scoring.MEAN if fixed else _MODES[policy.bandit]
    pred = table.predictor      # pinned and fixed chains too: their confidence and cost estimate
    qp = cp = table.prior_quality
    pcols = table.pred_cols
    features = base = None
    if pred is not None:
        qp, cp = pred.predict(prompt_text(request))
    bandit = table.bandit
    if bandit is not None and policy.bandit == "linucb" and not fixed:
        features = bandit.context(request, pred)
        if pred is not None:
            known = pcols >= 0
            base = np.where(known, qp[np.maximum(pcols, 0)], table.prior_quality)
            cp = np.where(known, cp[np.maximum(pcols, 0)], np.nan)   # NaN: the price bound
        else:
            base = table.prior_quality
            cp = table.no_cost          # NaN everywhere: every model's price bound
        qp = bandit.adjusted(base, features, policy.explore)
        pcols = table.all_rows
    W, order, why, out, P = table.scratch
    stats = table.stats
    # one slice assignment (in scoring.P_* order): fifteen item assignments cost ~3× more
    P[:] = (estimate_tokens(request.prompt_chars()), request.max_tokens or 0,
            math.inf if request.max_cost_usd is None else request.max_cost_usd,
            math.inf if request.latency_slo_ms is None else request.latency_slo_ms,
            policy.prior_strength, mode, policy.explore,
            math.log1p(float(stats.answers.sum())) if mode == scoring.UCB else 0.0,
            obj.rule, obj.cost_weight, obj.latency_weight, obj.min_quality,
            1.0 if (pred is not None or features is not None) else 0.0,
            pred.cost_ref if pred is not None else 0.0, 1.0 if pinned else 0.0)
    z = rng.standard_normal(table.size) if mode == scoring.THOMPSON else qp
    n_ok = impl.decide(table.F, table.caps, stats.S, in_set, blocked, qp, cp, pcols, z, P,
                       np.uint64(capbits) if capbits > 0 else _NO_CAPS, W, order, why, out)
    if capbits < 0:   # a capability no model has: nothing can serve it
        n_ok = 0
        why[in_set] = scoring.LACKS_CAPS
    if n_ok == 0:
        detail = _excluded(table, request, why)
        sick = [table.ids[r] for r in np.flatnonzero(why == scoring.CIRCUIT).tolist()]
        if sick:   # an upstream outage, not the caller's fault: retryable, with when to retry
            wait = health.retry_after_ms(sick, now)
            if table.resource_block is not None:
                wait = max(wait, PRESSURE_RETRY_MS)
            raise AtpError(ErrorCode.UNAVAILABLE, f"no model available now ({detail})",
                           retry_after_ms=wait)
        raise AtpError(ErrorCode.NO_ROUTE, f"no model satisfies the request ({detail})")
    ids = table.ids
    if fixed and alias is not None:
        chain = _fixed_chain(alias, table, why == scoring.OK, rng).tolist()
    else:
        chain = order[:n_ok].tolist()
    best = chain[0]
    # Python floats before formatting: numpy scalars format several times slower
    # .item(): a Python float at once (indexing gives a numpy scalar, which formats slower)
    mean, util, cost = W.item(0, best), W.item(2, best), W.item(3, best)
    lat = stats.lat_ewma.item(best)
    reasons.append(f"{ids[best]}: predicted quality {mean:.3f}, expected cost "
                   f"${cost:.6f}, latency ~{lat:.0f} ms")
    if not fixed:
        source = "trained router" if pred is not None else "config prior"
        reasons.append(f"objective {obj.label} over {n_ok} candidates; quality from {source}, "
                       f"{policy.bandit} posterior")
        if n_ok > 1:
            r2 = chain[1]
            mean2, util2 = W.item(0, r2), W.item(2, r2)
            reasons.append(f"runner-up {ids[r2]}: quality {mean2:.3f}, utility "
                           f"{util2:.3f} vs {util:.3f}")
    n_set = 1 if pinned else len(alias.models) if alias is not None else len(ids)
    if n_ok < n_set:
        reasons.append("excluded " + _excluded(table, request, why))
    spec = table.specs[best]
    return RouteDecision(
        spec.provider, spec.id, cost, lat, mean, tuple(reasons), tuple([ids[r] for r in chain[1:]]),
        alias.max_attempts if alias is not None else 0,
        Trace(features, None if base is None else base.copy(), out.item(0)))


_NO_CAPS = np.uint64(0)
_FIXED = Objective(scoring.UTILITY, 0.0, 0.0, 0.0, "")


def _fixed_chain(alias, table, usable, rng):
    """An ordered alias: its order; a weighted one: the first pick drawn by weight among the usable
    members, the rest by decreasing weight (ties: listed order)."""
    rows = table.alias_rows[alias.name]
    ok = usable[rows]
    if alias.mode == "weighted":
        w = np.where(ok, table.alias_weights[alias.name], 0.0)
        if w.sum() > 0:
            first = int(rng.choice(len(rows), p=w / w.sum()))
        else:             # every usable member has weight 0: take them in listed order
            first = int(np.flatnonzero(ok)[0])
        rest = [j for j in np.argsort(-w, kind="stable").tolist() if ok[j] and j != first]
        return rows[np.array([first] + rest)]
    return rows[ok]
