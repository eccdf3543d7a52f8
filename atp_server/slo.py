"""SLO tracking: per-route latency/error objectives, multiwindow error-budget burn rates, and throttling of low QoS tiers while a budget burns.

Config `[[slo]]` names a route — a model id or an alias — with an error objective (share of
requests without a server-side fault) and/or a latency objective (share of successful requests
faster than latency_ms). Every request that reached a route (or failed for a server-side reason
on the way) is counted in fixed 30-second buckets covering the longest window (6 h): memory is
bounded by configuration, never by traffic.

Burn rate = (bad / total over a window) / (1 − objective): 1 spends the budget exactly over the
SLO period, 14.4 spends 2% of a 30-day budget in one hour. The alerts are the Google SRE
Workbook's multiwindow, multi-burn-rate ones (chapter 5, "Alerting on SLOs", table 5-8):
  fast: burn ≥ 14.4 over 1 h AND over 5 m   (2% of the budget in an hour)
  slow: burn ≥ 6    over 6 h AND over 30 m  (5% of the budget in six hours)
The short window (1/12 of the long one) makes an alert stop soon after the burning stops.

While an alert is on, admission refuses the lowest QoS tiers with OVERLOADED (retryable):
a slow burn throttles the first tier of the SLO's `throttle` list (bronze), a fast burn all of
them (bronze, then silver) — low-priority load is shed to protect what budget remains for
gold. An alert clears (hysteresis) only when its short window's burn falls under
release_ratio × threshold; every change is logged as an event and exported as metrics.
"""
import logging
import math
import time
from dataclasses import dataclass, fields

from codec.errors import ErrorCode

from .logs import event
from .stages.base import RequestContext, Stage

# Bucket width: the 5-minute window spans 10 buckets (its edge moves in 30 s steps, a 10% blur),
# the 6-hour window 720; 3 counters each: ~17 KB per SLO whatever the traffic.
BUCKET_S = 30.0
# (severity, short window s, long window s, burn threshold): SRE Workbook table 5-8.
WINDOWS = (("fast", 300.0, 3600.0, 14.4), ("slow", 1800.0, 21600.0, 6.0))
LONGEST_S = max(w[2] for w in WINDOWS)
SPANS = tuple(sorted({w for _, short, long, _ in WINDOWS for w in (short, long)}))
N_BUCKETS = int(LONGEST_S // BUCKET_S) + 1     # +1: the current, partial bucket
# Codes that spend the error budget: the server's or the provider's fault, never the client's.
SERVER_FAULTS = frozenset(int(c) for c in (ErrorCode.INTERNAL, ErrorCode.UPSTREAM_ERROR,
                                           ErrorCode.UPSTREAM_TIMEOUT, ErrorCode.UPSTREAM_CUT,
                                           ErrorCode.UNAVAILABLE))
_CANCELLED = int(ErrorCode.CANCELLED)
SLIS = ("error", "latency")


@dataclass(frozen=True, slots=True)
class SloConfig:
    """One [[slo]] entry."""

    route: str                              # a model id or an alias name
    error_objective: float = 0.999          # 0 = no error SLO
    latency_ms: float = 0.0                 # 0 = no latency SLO
    latency_objective: float = 0.99
    # Too few requests in a short window say nothing: 1 failure in 3 is not a 14× burn worth
    # shedding customers for. 20 keeps a single error under 5% of the short window's count.
    min_requests: int = 20
    throttle: tuple = ("bronze", "silver")  # shed in this order: slow burn the first, fast all
    release_ratio: float = 0.5
    # Retry-After of a throttled request: the alert's short window moves in BUCKET_S steps, so
    # sooner is pointless; a minute is two buckets.
    retry_after_ms: int = 60_000


def parse_slos(value, routes: set, tiers, fail) -> tuple:
    """config.py's hook for `[[slo]]`; `fail(key, problem)` raises the ConfigError."""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        fail("slo", "must be an array of tables ([[slo]])")
    known = {f.name for f in fields(SloConfig)}
    out, seen = [], set()
    for i, t in enumerate(value):
        key = f"slo[{i}]"
        if not isinstance(t, dict):
            fail(key, "must be a table")
        for name in t:
            if name not in known:
                fail(f"{key}.{name}", f"unknown key (known: {', '.join(sorted(known))})")
        route = t.get("route")
        if not isinstance(route, str) or route not in routes:
            fail(f"{key}.route", f"must name a model or an alias, got {route!r}")
        if route in seen:
            fail(f"{key}.route", f"a second [[slo]] for {route!r}")
        seen.add(route)
        v = dict(t)
        for name in ("error_objective", "latency_objective", "release_ratio"):
            if name in v:
                x = v[name]
                if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x < 1:
                    fail(f"{key}.{name}", f"must be a number in [0, 1), got {x!r}")
                v[name] = float(x)
        for name in ("latency_ms", "min_requests", "retry_after_ms"):
            if name in v:
                x = v[name]
                if isinstance(x, bool) or not isinstance(x, (int, float)) or x < 0:
                    fail(f"{key}.{name}", f"must be a number >= 0, got {x!r}")
        if "throttle" in v:
            th = v["throttle"]
            if not isinstance(th, list) or any(x not in tiers for x in th):
                fail(f"{key}.throttle", f"must list QoS tiers ({', '.join(tiers)}), got {th!r}")
            v["throttle"] = tuple(th)
        if not v.get("error_objective", 0.999) and not v.get("latency_ms", 0):
            fail(key, "sets neither error_objective nor latency_ms: nothing to track")
        if v.get("latency_ms", 0) and not v.get("latency_objective", 0.99):
            fail(f"{key}.latency_objective", "must be > 0 when latency_ms is set")
        out.append(SloConfig(**v))
    return tuple(out)


class Buckets:
    """Counts (total, errors, slow, timed) per BUCKET_S bucket over the longest window, in rings
    of N_BUCKETS slots; slots skipped by a quiet spell are zeroed when time moves past them, so
    every slot holds one of the last N_BUCKETS buckets and a window is a slice sum."""

    __slots__ = ("last", "total", "errors", "slow", "timed")

    def __init__(self):
        self.last = None                 # the newest bucket number seen
        self.total = [0] * N_BUCKETS
        self.errors = [0] * N_BUCKETS
        self.slow = [0] * N_BUCKETS
        self.timed = [0] * N_BUCKETS     # successes, the latency SLI's denominator

    def _advance(self, k: int) -> None:
        last = self.last
        if last is not None and k <= last:   # monotonic clock: never behind
            return
        start = k if last is None or k - last > N_BUCKETS else last + 1
        for j in range(start, k + 1):
            s = j % N_BUCKETS
            self.total[s] = self.errors[s] = self.slow[s] = self.timed[s] = 0
        self.last = k

    def add(self, now: float, error: bool, slow: bool, timed: bool) -> None:
        k = int(now // BUCKET_S)
        if k != self.last:
            self._advance(k)
        s = k % N_BUCKETS
        self.total[s] += 1
        self.errors[s] += error
        self.slow[s] += slow
        self.timed[s] += timed

    def window(self, now: float, seconds: float) -> tuple[int, int, int, int]:
        """(total, errors, slow, timed) over the last `seconds` (whole buckets, current included)."""
        k = int(now // BUCKET_S)
        self._advance(k)
        n = min(N_BUCKETS, int(seconds // BUCKET_S))
        lo, hi = (k - n + 1) % N_BUCKETS, k % N_BUCKETS + 1
        out = []
        for ring in (self.total, self.errors, self.slow, self.timed):
            out.append(sum(ring[lo:hi]) if lo < hi else sum(ring[lo:]) + sum(ring[:hi]))
        return tuple(out)

    def windows(self, now: float, spans) -> dict:
        return {w: self.window(now, w) for w in spans}


def burn_rate(bad: int, total: int, objective: float, min_requests: int) -> float:
    """How many times faster than sustainable the budget is spent; 0 below min_requests."""
    if total < max(1, min_requests) or objective <= 0:
        return 0.0
    return (bad / total) / (1.0 - objective)


class RouteSlo:
    """One route's counters and alert states."""

    def __init__(self, cfg: SloConfig):
        self.cfg = cfg
        self.buckets = Buckets()
        self.burn: dict = {}                     # (sli, window seconds) -> burn rate
        self.alerts = {(sli, sev): False for sli in SLIS for sev, *_ in WINDOWS}

    def record(self, now: float, error: bool, elapsed_ms: float, ok: bool) -> None:
        lat = self.cfg.latency_ms
        self.buckets.add(now, error, ok and lat > 0 and elapsed_ms > lat, ok)

    def evaluate(self, now: float) -> list:
        """Recompute burn rates and alerts; returns the alerts that changed [(sli, sev, on)]."""
        cfg, changed = self.cfg, []
        sums = self.buckets.windows(now, SPANS)
        for sli, objective in (("error", cfg.error_objective),
                               ("latency", cfg.latency_objective if cfg.latency_ms else 0.0)):
            for w, (t, e, sl, tm) in sums.items():
                bad, n = (e, t) if sli == "error" else (sl, tm)
                self.burn[(sli, w)] = burn_rate(bad, n, objective, cfg.min_requests)
            for sev, short, long, threshold in WINDOWS:
                on = self.alerts[(sli, sev)]
                if on:   # release on the short window alone, under the hysteresis line
                    now_on = self.burn[(sli, short)] >= threshold * cfg.release_ratio
                else:
                    now_on = (self.burn[(sli, short)] >= threshold
                              and self.burn[(sli, long)] >= threshold)
                if now_on != on:
                    self.alerts[(sli, sev)] = now_on
                    changed.append((sli, sev, now_on))
        return changed

    def throttled(self) -> tuple:
        """The tiers this route wants shed now: all of `throttle` on a fast burn, its first on a slow one."""
        sev = {s for (_, s), on in self.alerts.items() if on}
        th = self.cfg.throttle
        return th if "fast" in sev else th[:1] if "slow" in sev else ()


class SloTracker(Stage):
    """The after-only stage that counts requests per route, and the evaluator that sets
    `admission.throttled` (a frozenset of tier names; admission refuses those tiers)."""

    name = "slo"
    # Burn rates are re-evaluated at most once a second: the windows move in 30 s steps, and a
    # second is far inside the 5-minute window's reaction time.
    EVAL_EVERY_S = 1.0

    def __init__(self, slos, admission=None, clock=time.monotonic):
        self.routes = {c.route: RouteSlo(c) for c in slos}
        self.admission = admission
        self.clock = clock
        self.next_eval = -math.inf
        self.throttled: frozenset = frozenset()
        self.reason = ""

    def after(self, ctx: RequestContext, outcome: str) -> None:
        code = ctx.code
        if code == _CANCELLED:           # the client left: says nothing about the route
            return
        now = self.clock()
        if now >= self.next_eval:        # before counting: a throttled arrival re-evaluates too
            self.evaluate(now)
        error = code in SERVER_FAULTS
        decision = ctx.decision
        if decision is None and not error:   # refused before routing (auth, policy, throttle)
            return
        elapsed_ms = (time.perf_counter_ns() - ctx.t0) / 1e6
        asked = ctx.request.model
        r = self.routes.get(asked) if asked else None
        if r is not None:
            r.record(now, error, elapsed_ms, code == 0)
        if decision is not None and decision.model != asked:
            r = self.routes.get(decision.model)
            if r is not None:
                r.record(now, error, elapsed_ms, code == 0)

    def evaluate(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self.next_eval = now + self.EVAL_EVERY_S
        tiers, why = set(), []
        for route, r in self.routes.items():
            for sli, sev, on in r.evaluate(now):
                short = next(w[1] for w in WINDOWS if w[0] == sev)
                event("slo.burn" if on else "slo.recovered",
                      logging.WARNING if on else logging.INFO, route=route, sli=sli,
                      severity=sev, burn_rate=round(r.burn[(sli, short)], 2))
            shed = r.throttled()
            if shed:
                tiers.update(shed)
                hot = max(((sli, sev) for (sli, sev), on in r.alerts.items() if on),
                          key=lambda a: a[1] == "fast")
                short = next(w[1] for w in WINDOWS if w[0] == hot[1])
                why.append(f"{route} {hot[0]} budget burning {r.burn[(hot[0], short)]:.1f}x "
                           f"({hot[1]})")
        new = frozenset(tiers)
        self.reason = "; ".join(why)
        if new != self.throttled:
            event("slo.throttle", logging.WARNING if new else logging.INFO,
                  tiers=sorted(new), was=sorted(self.throttled), reason=self.reason)
            self.throttled = new
        if self.admission is not None:
            self.admission.throttle(new, self.reason, self.retry_after_ms())

    def retry_after_ms(self) -> int:
        return max((r.cfg.retry_after_ms for r in self.routes.values()), default=60_000)

    def snapshot(self, now: float | None = None) -> dict:
        """Per route: objectives, burn rates per window, alerts; the throttled tiers (JSON-able)."""
        now = self.clock() if now is None else now
        routes = {}
        for route, r in self.routes.items():
            c = r.cfg
            t, e, sl, tm = r.buckets.window(now, WINDOWS[0][2])
            routes[route] = {
                "error_objective": c.error_objective, "latency_ms": c.latency_ms,
                "latency_objective": c.latency_objective if c.latency_ms else None,
                "last_hour": {"requests": t, "errors": e, "slow": sl},
                "burn_rate": {f"{sli}_{int(w // 60)}m": round(b, 3)
                              for (sli, w), b in sorted(r.burn.items())},
                "alerts": [f"{sli}:{sev}" for (sli, sev), on in r.alerts.items() if on]}
        return {"routes": routes, "throttled_tiers": sorted(self.throttled), "reason": self.reason}

    def collector(self):
        return SloCollector(self)


class SloCollector:
    """Prometheus families at scrape time (labels: configured routes, fixed SLI/window names)."""

    def __init__(self, tracker: SloTracker):
        self.tracker = tracker

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        tr = self.tracker
        burn = GaugeMetricFamily("atp_slo_burn_rate", "Error-budget burn rate per route, SLI "
                                 "and window (1 = spending exactly the budget)",
                                 labels=["route", "sli", "window"])
        alert = GaugeMetricFamily("atp_slo_alert", "1 while a multiwindow burn-rate alert is on",
                                  labels=["route", "sli", "severity"])
        for route, r in tr.routes.items():
            for (sli, w), b in sorted(r.burn.items()):
                burn.add_metric([route, sli, f"{int(w // 60)}m"], b)
            for (sli, sev), on in r.alerts.items():
                alert.add_metric([route, sli, sev], 1 if on else 0)
        yield burn
        yield alert
        th = GaugeMetricFamily("atp_slo_throttled", "1 while a QoS tier is shed for an SLO",
                               labels=["tier"])
        tiers = {t for r in tr.routes.values() for t in r.cfg.throttle}
        for tier in sorted(tiers):
            th.add_metric([tier], 1 if tier in tr.throttled else 0)
        yield th
