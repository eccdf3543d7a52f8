"""Live statistics for the dashboard and `atp top`: a bounded sliding window fed once per finished request.

The access-log stage calls `LiveStats.record(ctx)` once per request (only when [dashboard] is
enabled or a webhook is configured; otherwise the hook is None and costs one attribute test).
record() does integer work on the current one-second slot of a fixed ring: a count, a latency
histogram bucket, the error code, cost and baseline cost, the model. `snapshot()` sums the ring
into a JSON-able dict; it runs about once a second, never per request. Memory is fixed: RING_S
slots of HISTOGRAM buckets, plus per-slot dicts keyed by configured model ids and wire-code
names only (both finite sets), plus at most MAX_EVENTS recent events.
"""
import bisect
import time
from collections import deque
from dataclasses import dataclass

from .events import BUS, publish

# A minute of history: long enough for stable p99s at tens of requests a second, short enough that
# the dashboard reacts to an incident within seconds. Requests/s is taken over the last RATE_S.
RING_S = 60
RATE_S = 10
# Latency histogram: bucket upper bounds in ms, 15% apart from 0.25 ms to ~5 minutes (100 buckets):
# a percentile read from it is within 15% of the true value, at one bisect per request.
RATIO = 1.15
BOUNDS = tuple(0.25 * RATIO ** i for i in range(100))
# The dashboard lists the last 50 events: a screenful; older ones are in the log.
MAX_EVENTS = 50


@dataclass(frozen=True, slots=True)
class DashboardConfig:
    enabled: bool = False        # GET /dashboard, /dashboard/ws, /dashboard/snapshot; off: no routes, no hook
    token: str = ""              # "" = [metrics] scrape_token guards it; both "" = open, like /metrics


def parse_dashboard(table: dict, fail) -> DashboardConfig:
    """The [dashboard] section (config.py's `fail(key, problem)` raises the ConfigError)."""
    if not isinstance(table, dict):
        fail("dashboard", "must be a table")
    for key, value in table.items():
        if key == "enabled":
            if not isinstance(value, bool):
                fail("dashboard.enabled", f"must be true or false, got {value!r}")
        elif key == "token":
            if not isinstance(value, str):
                fail("dashboard.token", f"must be a string, got {value!r}")
            if value and len(value) < 16:
                fail("dashboard.token", "must be at least 16 characters")
        else:
            fail(f"dashboard.{key}", "unknown key (known: enabled, token)")
    return DashboardConfig(**table)


class _Slot:
    """One second of finished requests."""

    __slots__ = ("second", "n", "errors", "cost", "baseline", "hist", "models", "codes")

    def __init__(self):
        self.hist = [0] * (len(BOUNDS) + 1)
        self.reset(-1)

    def reset(self, second: int) -> None:
        self.second = second
        self.n = self.errors = self.cost = self.baseline = 0
        hist = self.hist
        for i in range(len(hist)):
            hist[i] = 0
        self.models: dict = {}
        self.codes: dict = {}


def percentile(hist, total: int, q: float) -> float:
    """The q-quantile (0..1) of a histogram over BOUNDS, as its bucket's upper bound in ms."""
    if total == 0:
        return 0.0
    rank, seen = q * total, 0
    for i, count in enumerate(hist):
        seen += count
        if seen >= rank and count:
            return BOUNDS[min(i, len(BOUNDS) - 1)]
    return BOUNDS[-1]


class LiveStats:
    """The aggregator. `baseline` is (USD in, USD out) per million tokens of [costs] baseline_model,
    or None. `sources` supplies the parts read at snapshot time (models, queue, events)."""

    def __init__(self, baseline: tuple[float, float] | None = None, clock=time.monotonic,
                 wall=time.time):
        self.baseline = baseline
        self.clock, self.wall = clock, wall
        self.ring = [_Slot() for _ in range(RING_S)]
        self._second = -1
        self._slot = self.ring[0]
        self.started = clock()
        self._sample, self._last_n = False, 0      # model.selected sampling (events.py)
        self.total_requests = self.total_errors = self.total_cost = self.total_baseline = 0
        self.events: deque = deque(maxlen=MAX_EVENTS)
        self.models = lambda now: []       # fn(now) -> per-model rows (install() wires the router)
        self.queue = lambda: {}            # fn() -> {"inflight": n, "queued": n}
        self.extra = {}                    # name -> fn() -> JSON-able (webhook deliveries, ...)

    # ---- per request: the hot path ----------------------------------------------------------

    def record(self, ctx) -> None:
        """One finished request (a stages.RequestContext)."""
        second = int(self.clock())
        slot = self._slot
        if second != self._second:
            slot = self._advance(second)
        slot.n += 1
        slot.hist[bisect.bisect_left(BOUNDS, (time.perf_counter_ns() - ctx.t0) / 1e6)] += 1
        if ctx.code:
            slot.errors += 1
            codes = slot.codes
            codes[ctx.outcome] = codes.get(ctx.outcome, 0) + 1
        usage = ctx.usage
        if usage is not None:
            slot.cost += usage.cost_usd_micros
            if self.baseline is not None:
                slot.baseline += round(usage.input_tokens * self.baseline[0]
                                       + usage.output_tokens * self.baseline[1])
            else:
                slot.baseline += usage.cost_usd_micros
        decision = ctx.decision
        if decision is not None:
            models = slot.models
            models[decision.model] = models.get(decision.model, 0) + 1
            if self._sample:          # model.selected: the first routed request of each second
                self._sample = False
                if BUS.subscribers:
                    publish("model.selected", model=decision.model, provider=decision.provider,
                            request_id=ctx.request.request_id, tenant=ctx.principal.tenant,
                            reasons=list(decision.reasons[:3]), requests_last_second=self._last_n)

    def _advance(self, second: int) -> _Slot:
        """Fold the finished slot into the totals and start the slot for `second`."""
        old = self._slot
        if old.second >= 0:
            self.total_requests += old.n
            self.total_errors += old.errors
            self.total_cost += old.cost
            self.total_baseline += old.baseline
        self._sample, self._last_n = True, old.n if old.second == second - 1 else 0
        slot = self.ring[second % RING_S]
        slot.reset(second)
        self._second, self._slot = second, slot
        return slot

    # ---- once a second: the dashboard's view ------------------------------------------------

    def add_event(self, name: str, fields: dict) -> None:
        """A bus subscriber (events.py): kept for the dashboard's recent-events list."""
        self.events.append({"time": self.wall(), "event": name, **fields})

    def cost_per_hour(self) -> float:
        """USD per hour at the window's rate (the [events] cost_per_hour_usd check)."""
        now = self.clock()
        second = int(now)
        cost = sum(s.cost for s in self.ring if s.second > second - RING_S and s.second >= 0)
        return cost / 1e6 * 3600 / min(RING_S, max(now - self.started, 1e-9))

    def snapshot(self) -> dict:
        now = self.clock()
        second = int(now)
        live = [s for s in self.ring if s.second > second - RING_S and s.second >= 0]
        n = sum(s.n for s in live)
        recent = sum(s.n for s in live if s.second > second - RATE_S)
        hist = [sum(col) for col in zip(*(s.hist for s in live))] if live else []
        cost = sum(s.cost for s in live)
        baseline = sum(s.baseline for s in live)
        codes: dict = {}
        mix: dict = {}
        for s in live:
            for k, v in s.codes.items():
                codes[k] = codes.get(k, 0) + v
            for k, v in s.models.items():
                mix[k] = mix.get(k, 0) + v
        current = self._slot if self._slot.second >= 0 else None
        pending = (current.n, current.errors, current.cost, current.baseline) if current else (0, 0, 0, 0)
        uptime = max(now - self.started, 1e-9)
        span = min(RING_S, uptime)
        total_cost = self.total_cost + pending[2]
        total_baseline = self.total_baseline + pending[3]
        return {
            "time": self.wall(), "uptime_s": round(uptime, 1), "window_s": RING_S,
            "requests": {"total": self.total_requests + pending[0], "window": n,
                         "per_s": round(recent / min(RATE_S, uptime), 3)},
            "latency_ms": {q: round(percentile(hist, n, v), 3)
                           for q, v in (("p50", .50), ("p95", .95), ("p99", .99))},
            "errors": {"total": self.total_errors + pending[1],
                       "window": sum(s.errors for s in live), "by_code": codes},
            "cost": {"total_usd": total_cost / 1e6, "window_usd": cost / 1e6,
                     "per_hour_usd": round(cost / 1e6 * 3600 / span, 6)},
            "savings": {"baseline_model_priced": self.baseline is not None,
                        "total_usd": (total_baseline - total_cost) / 1e6,
                        "window_usd": (baseline - cost) / 1e6,
                        "pct": round(100 * (baseline - cost) / baseline, 2) if baseline else 0.0},
            "routing_mix": dict(sorted(mix.items(), key=lambda kv: -kv[1])),
            "models": self.models(now),
            "queue": self.queue(),
            "events": list(self.events)[::-1],
            **{name: fn() for name, fn in self.extra.items()},
        }


BREAKER = {0: "closed", 1: "open", 2: "half_open", 3: "probing"}


def install(app) -> LiveStats:
    """Build the aggregator for a server App: baseline prices from [costs], per-model rows from the
    router, queue depth from admission; hook it onto the access-log stage (the one call a request)."""
    cfg = app.config
    baseline = None
    if cfg.costs.baseline_model:
        spec = {m.id: m for m in cfg.models}[cfg.costs.baseline_model]
        baseline = (spec.price_in_per_mtok, spec.price_out_per_mtok)
    stats = LiveStats(baseline)
    router, admission = app.router, app.admission

    def models(now: float) -> list:
        table = router.ref.table
        st = table.stats
        out = []
        for i, model_id in enumerate(table.ids):
            state = router.health.state(model_id, now)
            out.append({"model": model_id, "provider": table.specs[i].provider,
                        "breaker": state.name.lower(),
                        "status": "red" if state.name == "OPEN" else
                                  "green" if state.name == "CLOSED" and st.err_rate[i] < 0.05 else "yellow",
                        "inflight": int(st.inflight[i]), "answers": int(st.answers[i]),
                        "latency_p50_ms": round(float(st.lat_p50[i]), 1),
                        "latency_p95_ms": round(float(st.lat_p95[i]), 1),
                        "error_rate": round(float(st.err_rate[i]), 4)})
        return out

    stats.models = models
    stats.queue = lambda: {"inflight": admission.inflight, "queued": admission.queued,
                           "pressure": round(admission.pressure(), 3)}
    for stage in app.pipeline.chain.stages:
        if stage.name == "access_log":
            stage.live = stats
    return stats
