"""The decision kernel: masks, posterior quality, exploration, utility and the ordered chain, in one call.

One call per routing decision does everything numeric: per model the masks (capability bits,
context, worst-case cost against the budget, p95 latency against the SLO, breaker, alias
membership), the quality posterior (the predictor's — or the config prior's — probability as a
Beta prior worth `n0` observations, plus the online successes/failures), an exploration score
(posterior mean, a Thompson draw, or an upper confidence bound), the utility and the order of the
usable models, and the expected regret of the pick. With `use_pred`, model m's quality is
qp[pcols[m]] and its cost cp[pcols[m]] (NaN: its price bound) where pcols[m] >= 0. One call because a numba dispatch costs
~0.1 µs per argument and a numpy operation on 16 floats ~0.5–1 µs: thirty of them were most of a
decision (measured 127 µs before, bench/RESULTS.md).

Twins as in kernels.py: a pure-numpy reference (`NUMPY`) and a numba one (`NUMBA`, present when
kernels.NUMBA is: the same `ATP_NUMBA` switch); the same inputs give the same order on both (the
arithmetic is elementwise IEEE +,−,×,÷,√ in the same order — correctly rounded on both — and the
sort keys break ties by cost, then by row). The random draws come in as an array (`z`, standard
normals from the caller's RNG), so the kernels hold no random state.

Thompson sampling uses the normal with the Beta posterior's mean and variance instead of a Beta
draw: one normal per model from the caller's RNG (numpy's Beta sampler costs ~10× more and cannot
be reproduced inside numba), and the two agree closely once a + b ≳ 10, which the prior strength
guarantees from the first request.
"""
import numpy as np

from . import kernels

MEAN, THOMPSON, UCB = 0, 1, 2          # exploration modes
UTILITY, MIN_QUALITY = 0, 2            # ordering rules (kernels.order's numbering)

# rows of the static column block F[k, M]
F_PRICE_IN, F_PRICE_OUT, F_CONTEXT, F_MAX_OUTPUT, F_PRIOR_Q = range(5)
N_F = 5
# rows of the statistics block S[k, M] (TableStats views)
S_LAT_EWMA, S_LAT_P50, S_LAT_P95, S_ERR, S_SUCC, S_FAIL, S_AIMD = range(7)
N_S = 7
# P: the request's scalars
(P_PROMPT_TOKENS, P_MAX_TOKENS, P_MAX_COST, P_SLO, P_N0, P_MODE, P_EXPLORE, P_LOG_TOTAL, P_RULE,
 P_LAMBDA, P_MU, P_PARAM, P_USE_PRED, P_COST_REF, P_PINNED) = range(15)
N_P = 15
# W: outputs per model
W_MEAN, W_SCORE, W_UTIL, W_COST, W_QPRIOR, W_BOUND = range(6)
N_W = 6
# why[m]: the first mask that excluded model m
OK, NOT_IN_SET, LACKS_CAPS, CONTEXT, OVER_BUDGET, OVER_SLO, CIRCUIT = range(7)


def _decide_np(F, caps, S, in_set, blocked, qp, cp, pcols, z, P, capbits, W, order, why, out):
    M = F.shape[1]
    pt, mt = P[P_PROMPT_TOKENS], P[P_MAX_TOKENS]
    out_tokens = F[F_MAX_OUTPUT] if mt <= 0 else np.full(M, mt)
    bound = (pt * F[F_PRICE_IN] + out_tokens * F[F_PRICE_OUT]) / 1e6
    lacks = (caps & np.uint64(capbits)) != np.uint64(capbits)
    w = np.where(~in_set, NOT_IN_SET, np.where(lacks, LACKS_CAPS, np.where(
        pt + mt > F[F_CONTEXT], CONTEXT, np.where(bound > P[P_MAX_COST], OVER_BUDGET, np.where(
            (P[P_PINNED] == 0) & (S[S_LAT_P95] > P[P_SLO]), OVER_SLO,
            np.where(blocked, CIRCUIT, OK))))))
    why[:] = w
    usable = w == OK
    n_ok = int(usable.sum())
    q, c = F[F_PRIOR_Q], bound
    if P[P_USE_PRED] != 0:
        known = pcols >= 0
        q = np.where(known, qp[np.maximum(pcols, 0)], q)
        cv = cp[np.maximum(pcols, 0)]
        c = np.where(known & ~np.isnan(cv), cv, c)
    W[W_BOUND], W[W_COST], W[W_QPRIOR] = bound, c, q
    lat = S[S_LAT_EWMA]
    cref = P[P_COST_REF] if P[P_COST_REF] > 0 else (bound[usable].max() if n_ok else 0.0)
    cref = cref if cref > 0 else 1.0
    lref = lat[usable].max() if n_ok else 0.0
    lref = lref if lref > 0 else 1.0
    qc = np.minimum(np.maximum(q, 0.0), 1.0)
    n0 = P[P_N0]
    a = n0 * qc + S[S_SUCC]
    b = n0 * (1.0 - qc) + S[S_FAIL]
    n = a + b
    mean = a / n
    mode = P[P_MODE]
    if mode == THOMPSON:
        s = np.minimum(np.maximum(mean + np.sqrt(a * b / (n * n * (n + 1.0))) * z, 0.0), 1.0)
    elif mode == UCB:
        s = mean + P[P_EXPLORE] * np.sqrt(P[P_LOG_TOTAL] / n)
    else:
        s = mean
    lam, mu = P[P_LAMBDA], P[P_MU]
    ln, cn = lat / lref, c / cref
    util = s - mu * ln - lam * cn
    W[W_MEAN], W[W_SCORE], W[W_UTIL] = mean, s, util
    rows = np.arange(M)
    if P[P_RULE] == UTILITY:
        k0, k1, k2 = np.where(usable, 0.0, 1.0), -util, c
    else:
        ok = s >= P[P_PARAM]
        k0 = np.where(usable, np.where(ok, 0.0, 0.5), 1.0)
        k1, k2 = np.where(ok, c, -s), np.where(ok, -s, 0.0)
    order[:] = np.lexsort((rows, k2, k1, k0))
    regret = 0.0
    if n_ok and P[P_RULE] == UTILITY:
        umean = mean - mu * ln - lam * cn
        regret = umean[usable].max() - umean[order[0]]
    out[0], out[1], out[2] = regret, cref, lref
    return n_ok


class _Impl:
    __slots__ = ("name", "decide")

    def __init__(self, name, decide):
        self.name, self.decide = name, decide


NUMPY = _Impl("numpy", _decide_np)


def _build_numba():
    import math

    import numba

    @numba.njit(cache=True, nogil=True)
    def decide(F, caps, S, in_set, blocked, qp, cp, pcols, z, P, capbits, W, order, why, out):
        M = F.shape[1]
        pt, mt = P[P_PROMPT_TOKENS], P[P_MAX_TOKENS]
        use_pred = P[P_USE_PRED] != 0
        n_ok = 0
        cref = 0.0
        lref = 0.0
        for m in range(M):
            out_tokens = F[F_MAX_OUTPUT, m] if mt <= 0 else mt
            bound = (pt * F[F_PRICE_IN, m] + out_tokens * F[F_PRICE_OUT, m]) / 1e6
            if not in_set[m]:
                w = NOT_IN_SET
            elif (caps[m] & capbits) != capbits:
                w = LACKS_CAPS
            elif pt + mt > F[F_CONTEXT, m]:
                w = CONTEXT
            elif bound > P[P_MAX_COST]:
                w = OVER_BUDGET
            elif P[P_PINNED] == 0 and S[S_LAT_P95, m] > P[P_SLO]:
                w = OVER_SLO
            elif blocked[m]:
                w = CIRCUIT
            else:
                w = OK
            why[m] = w
            q, c = F[F_PRIOR_Q, m], bound
            if use_pred and pcols[m] >= 0:
                q = qp[pcols[m]]
                cc = cp[pcols[m]]
                if cc == cc:          # NaN: no predicted cost, the price bound stands
                    c = cc
            W[W_BOUND, m], W[W_COST, m], W[W_QPRIOR, m] = bound, c, q
            if w == OK:
                n_ok += 1
                cref = max(cref, bound)
                lref = max(lref, S[S_LAT_EWMA, m])
        if P[P_COST_REF] > 0:
            cref = P[P_COST_REF]
        if not cref > 0:
            cref = 1.0
        if not lref > 0:
            lref = 1.0
        n0, mode, lam, mu = P[P_N0], P[P_MODE], P[P_LAMBDA], P[P_MU]
        rule, param = P[P_RULE], P[P_PARAM]
        k0 = np.empty(M)
        k1 = np.empty(M)
        k2 = np.empty(M)
        umean = np.empty(M)
        for m in range(M):
            qc = min(max(W[W_QPRIOR, m], 0.0), 1.0)
            a = n0 * qc + S[S_SUCC, m]
            b = n0 * (1.0 - qc) + S[S_FAIL, m]
            n = a + b
            mean = a / n
            if mode == THOMPSON:
                s = min(max(mean + math.sqrt(a * b / (n * n * (n + 1.0))) * z[m], 0.0), 1.0)
            elif mode == UCB:
                s = mean + P[P_EXPLORE] * math.sqrt(P[P_LOG_TOTAL] / n)
            else:
                s = mean
            ln = S[S_LAT_EWMA, m] / lref
            cn = W[W_COST, m] / cref
            util = s - mu * ln - lam * cn
            umean[m] = mean - mu * ln - lam * cn
            W[W_MEAN, m], W[W_SCORE, m], W[W_UTIL, m] = mean, s, util
            usable = why[m] == OK
            if rule == UTILITY:
                k0[m] = 0.0 if usable else 1.0
                k1[m] = -util
                k2[m] = W[W_COST, m]
            elif s >= param:
                k0[m] = 0.0 if usable else 1.0
                k1[m] = W[W_COST, m]
                k2[m] = -s
            else:
                k0[m] = 0.5 if usable else 1.0
                k1[m] = -s
                k2[m] = 0.0
            order[m] = m
        for i in range(1, M):     # insertion sort: tens of rows, stable like lexsort
            x = order[i]
            j = i
            while j > 0:
                y = order[j - 1]
                if (k0[x] < k0[y] or (k0[x] == k0[y] and (k1[x] < k1[y] or (
                        k1[x] == k1[y] and k2[x] < k2[y])))):
                    order[j] = y
                    j -= 1
                else:
                    break
            order[j] = x
        regret = 0.0
        if n_ok > 0 and rule == UTILITY:
            best = -np.inf
            for m in range(M):
                if why[m] == OK and umean[m] > best:
                    best = umean[m]
            regret = best - umean[order[0]]
        out[0], out[1], out[2] = regret, cref, lref
        return n_ok

    return _Impl("numba", decide)


NUMBA = _build_numba() if kernels.NUMBA is not None else None
IMPL = NUMBA or NUMPY
