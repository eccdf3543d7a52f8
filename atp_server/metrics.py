"""Prometheus metrics for one server instance (its own registry, so several apps can coexist).

The per-request path only bumps plain ints (a histogram observation is a bisect and two adds);
a custom collector turns them into Prometheus families at scrape time. prometheus_client's own
Counter/Histogram take a lock per update, which cost ~1 µs each — several per request.

Label values come from configuration and code, never from client input (DESIGN §6): a model label
is a configured model id or one of FIXED_MODEL_LABELS, an outcome is "ok" or a wire code's name, a
protocol error's code is a wire code or "other". So the number of series is bounded by the config.
"""
from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from codec.errors import ErrorCode

UNKNOWN = "unknown"                # a model name that is not configured
NO_MODEL = "-"                     # refused before any model was chosen, and none was asked for
FIXED_MODEL_LABELS = frozenset({UNKNOWN, NO_MODEL})
OTHER = "other"                    # an outcome or code outside the known set
_OUTCOMES = frozenset({"ok"} | {c.name for c in ErrorCode})
_WIRE_CODES = frozenset(str(int(c)) for c in ErrorCode)

# Why a request was refused at the door (auth, parse, routes, policy, limits...): a fixed set, so
# atp_refusals has at most transports × len(REFUSAL_REASONS) series whatever clients send.
REFUSAL_REASONS = ("auth", "signature", "forbidden", "parse", "not_found", "method_not_allowed",
                   "too_large", "unknown_model", "no_route", "policy", "limits", "overload",
                   "draining")
_C = ErrorCode
_REFUSAL_BY_CODE = {
    int(_C.UNAUTHENTICATED): "auth", int(_C.UNKNOWN_KEY): "auth",
    int(_C.BAD_SIGNATURE): "signature", int(_C.REPLAYED_NONCE): "signature",
    int(_C.STALE_TIMESTAMP): "signature", int(_C.SEQUENCE_REPLAY): "signature",
    int(_C.FORBIDDEN): "forbidden", int(_C.POLICY_DENIED): "policy",
    int(_C.INVALID_REQUEST): "parse", int(_C.MALFORMED_FRAME): "parse",
    int(_C.MALFORMED_PAYLOAD): "parse", int(_C.UNSUPPORTED_VERSION): "parse",
    int(_C.UNKNOWN_FRAME_TYPE): "parse", int(_C.FRAME_TOO_LARGE): "too_large",
    int(_C.UNKNOWN_MODEL): "unknown_model", int(_C.NO_ROUTE): "no_route",
    int(_C.RATE_LIMITED): "limits", int(_C.BUDGET_EXCEEDED): "limits",
    int(_C.WINDOW_EXCEEDED): "limits", int(_C.OVERLOADED): "overload",
    int(_C.REPLAY_CACHE_FULL): "overload"}


def refusal_reason(code) -> str | None:
    """The refusal reason of a wire code, or None when the code is no refusal (an upstream fault,
    a cancellation, a drain: those are outcomes, counted in atp_requests). New work refused while
    draining is UNAVAILABLE too, so the transports name that reason ("draining") themselves."""
    return _REFUSAL_BY_CODE.get(code)      # an ErrorCode hashes and compares as its int


_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)
# Routing decisions: ~7 µs with priors, ~18 µs with a trained router for 16 models (bench routing);
# the upper buckets catch a loaded loop or a table of hundreds of models.
_DECISION_BUCKETS = (0.000005, 0.00001, 0.00002, 0.00005, 0.0001, 0.00025, 0.001, 0.005)


def capped(pairs, cap: int):
    """(label, value) pairs, at most `cap` of them: the largest values keep their label, the rest
    are summed under OTHER (a total stays a total)."""
    pairs = sorted(pairs, key=lambda p: -p[1])
    if len(pairs) <= cap:
        return pairs
    keep = pairs[:cap]
    return keep + [(OTHER, sum(v for _, v in pairs[cap:]))]


class _Histogram:
    """Bucket counts + sum for one label set; exported cumulatively at scrape time."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)     # the last slot is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def family_buckets(self):
        out, running = [], 0
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


class _RequestCollector:
    """Exports the plain counters and histograms kept by Metrics, and the Accountant's totals."""

    def __init__(self, metrics: "Metrics"):
        self.m = metrics

    def describe(self):
        return []

    def collect(self):
        m = self.m
        req = CounterMetricFamily("atp_requests", "Requests by transport, model and outcome code name",
                                  labels=["transport", "model", "outcome"])
        for labels, value in m.request_counts.items():
            req.add_metric(labels, value)
        yield req
        for name, doc, table in (
                ("atp_request_duration_seconds", "Request wall time", m.durations),
                ("atp_gateway_overhead_seconds", "Gateway time excluding the upstream's", m.overheads),
                ("atp_time_to_first_token_seconds", "Streams: from the request's arrival to its "
                 "first token ready to send", m.first_token)):
            fam = HistogramMetricFamily(name, doc, labels=["transport"])
            for transport, h in table.items():
                fam.add_metric([transport], h.family_buckets(), h.total)
            yield fam
        d = m.decision_time
        fam = HistogramMetricFamily("atp_routing_decision_seconds", "Time of the routing decision "
                                    "(the route stage's choose())")
        fam.add_metric([], d.family_buckets(), d.total)
        yield fam
        ref = CounterMetricFamily("atp_refusals", "Requests refused at the door by transport and "
                                  "reason (auth, parse, not_found, policy, limits...)",
                                  labels=["transport", "reason"])
        for labels, value in list(m.refusals.items()):
            ref.add_metric(labels, value)
        yield ref
        if m.accountant is not None:
            tokens = CounterMetricFamily("atp_tokens", "Tokens by model and direction",
                                         labels=["model", "direction"])
            estimated = CounterMetricFamily("atp_usage_estimated_requests", "Requests whose usage ATP "
                                            "counted itself (the provider reported none, or the stream was cut)",
                                            labels=["model"])
            by_tenant = list(m.accountant.by_tenant.items())
            if m.tenant_spend:
                cost = CounterMetricFamily("atp_cost_usd_micros", "Spend in USD micros by tenant "
                                           f"(past {m.max_label_values} tenants, the least "
                                           f"spending share \"{OTHER}\")", labels=["tenant"])
                for tenant, micros in capped(((t, s.cost_usd_micros) for t, s in by_tenant),
                                             m.max_label_values):
                    cost.add_metric([tenant], micros)
            else:   # an open /metrics: one tenant's spend is no business of another's
                cost = CounterMetricFamily("atp_cost_usd_micros", "Spend in USD micros, all tenants",
                                           value=sum(t.cost_usd_micros for _, t in by_tenant))
            for model, t in list(m.accountant.by_model.items()):
                tokens.add_metric([model, "in"], t.input_tokens)
                tokens.add_metric([model, "out"], t.output_tokens)
                estimated.add_metric([model], t.estimated)
            yield estimated
            yield tokens
            yield cost


class _BreakerCollector:
    """atp_breaker_state{model, state}: 1 for the state each model's circuit reads as now, 0 for
    the others (the enum-as-gauges pattern: `atp_breaker_state{state="open"} == 1` selects them)."""

    def __init__(self, health, models, clock):
        self.health, self.models, self.clock = health, models, clock

    def describe(self):
        return []

    def collect(self):
        from .routing.health import State
        fam = GaugeMetricFamily("atp_breaker_state", "Circuit breaker state per model (1 = the "
                                "state it is in)", labels=["model", "state"])
        now = self.clock()
        for model in list(self.models()):
            current = self.health.state(model, now)
            for state in State:
                fam.add_metric([model, state.name.lower()], 1.0 if state is current else 0.0)
        yield fam


class _CodeLabelled:
    """prometheus Counter labelled (transport, code) whose code is a wire code or OTHER: the
    callers (session.py) pass the code of whatever ended a session."""

    __slots__ = ("counter",)

    def __init__(self, counter: Counter):
        self.counter = counter

    def labels(self, transport: str, code: str):
        return self.counter.labels(transport, code if code in _WIRE_CODES else OTHER)


class _StateCollector:
    def __init__(self, stores):
        self.epoch = stores.epoch

    def describe(self):
        return []

    def collect(self):
        yield CounterMetricFamily("atp_state_store_resets", "Times this process found the shared "
                                  "state store (Redis) had lost its data: counters and budgets "
                                  "restarted from zero", value=self.epoch.resets)


class _AuditCollector:
    """The audit log's counters (plain ints on AuditLog), exported at scrape time."""

    def __init__(self, audit):
        self.audit = audit

    def describe(self):
        return []

    def collect(self):
        a = self.audit
        errors = CounterMetricFamily("atp_audit_write_errors", "Failed audit writes (a batch insert "
                                     "or a WAL checkpoint); failed rows stay buffered", labels=["op"])
        for op, n in a.write_errors.items():
            errors.add_metric([op], n)
        yield errors
        yield CounterMetricFamily("atp_audit_refused_requests", "Requests refused (UNAVAILABLE) "
                                  "because the audit buffer was full", value=a.refused)
        yield CounterMetricFamily("atp_audit_dropped_records", "Records of requests refused at the "
                                  "door, not kept while the audit buffer was full", value=a.dropped)
        yield CounterMetricFamily("atp_audit_commits", "Audit transactions committed (rows / "
                                  "commits = requests per group commit)", value=a.commits)
        yield CounterMetricFamily("atp_audit_rows_written", "Audit rows committed", value=a.written)
        yield CounterMetricFamily("atp_audit_signed_checkpoints", "Signed checkpoints written",
                                  value=a.signed)
        yield CounterMetricFamily("atp_audit_late_answers", "Answers sent before their audit row "
                                  "was committed (durable_wait_ms passed)", value=a.late)


class _PrivacyCollector:
    """Epsilon left per tenant and metric, read from the ledger file at scrape time (the ledger is
    charged by whichever process releases statistics, `atp costs --private` included)."""

    def __init__(self, path, cfg):
        self.path, self.cfg = path, cfg

    def describe(self):
        return []

    def collect(self):
        from .privacy import Ledger
        g = GaugeMetricFamily("atp_privacy_epsilon_remaining", "Differential-privacy budget left "
                              "today per tenant and published metric", labels=["tenant", "metric"])
        try:
            left = Ledger(self.path, self.cfg).all_remaining()
        except (OSError, ValueError):
            left = {}
        for (tenant, metric), eps in sorted(left.items()):
            g.add_metric([tenant, metric], eps)
        yield g


class _RedactionCollector:
    """Values redacted by kind and mode, prompt injections flagged by mode (plain ints on Metrics;
    labels are the fixed type names and configured modes, never client input)."""

    def __init__(self, metrics: "Metrics"):
        self.m = metrics

    def describe(self):
        return []

    def collect(self):
        red = CounterMetricFamily("atp_redactions", "Values found in requests by type and the "
                                  "tenant's mode (redact, restore, block)", labels=["type", "mode"])
        for (kind, mode), n in self.m.redactions.items():
            red.add_metric([kind, mode], n)
        yield red
        inj = CounterMetricFamily("atp_prompt_injections", "Requests the guard flagged, by the "
                                  "tenant's mode (tag, log, block)", labels=["mode"])
        for mode, n in self.m.injections.items():
            inj.add_metric([mode], n)
        yield inj


class _PolicyCollector:
    def __init__(self, holder):
        self.holder = holder

    def describe(self):
        return []

    def collect(self):
        fam = CounterMetricFamily("atp_policy_decisions", "Policy decisions by deciding rule and "
                                  "verdict (allow, deny, dry_run_deny)", labels=["rule", "verdict"])
        for (rule, verdict), n in list(self.holder.counts.items()):
            fam.add_metric([rule, verdict], n)
        yield fam


class Metrics:
    def __init__(self, accountant=None, models=(), tenant_spend: bool = True,
                 max_label_values: int = 1000):
        r = self.registry = CollectorRegistry()
        self.accountant = accountant
        # Spend per tenant only when /metrics needs a scrape token (App): see the collector.
        self.tenant_spend = tenant_spend
        self.max_label_values = max_label_values   # [metrics] max_label_values (see capped)
        self._model_labels = frozenset(models) | FIXED_MODEL_LABELS
        self.request_counts: dict[tuple, int] = {}
        self.durations: dict[str, _Histogram] = {}
        self.overheads: dict[str, _Histogram] = {}
        self.refusals: dict[tuple, int] = {}       # (transport, REFUSAL_REASONS member) -> requests
        self.first_token: dict[str, _Histogram] = {}   # transport -> streams' time to first token
        self.decision_time = _Histogram(_DECISION_BUCKETS)
        r.register(_RequestCollector(self))
        self.redactions: dict[tuple, int] = {}     # (type, mode) -> values
        self.injections: dict[str, int] = {}       # mode -> requests
        r.register(_RedactionCollector(self))
        # Rare events keep prometheus_client's own types.
        self.inflight = Gauge("atp_inflight_requests", "Requests holding a dispatch slot", registry=r)
        self.queued = Gauge("atp_queued_requests", "Requests waiting for a dispatch slot", registry=r)
        self.sessions = Gauge("atp_sessions", "Open frame sessions", ["transport"], registry=r)
        self.protocol_errors = _CodeLabelled(Counter(
            "atp_protocol_errors", "Sessions closed by a protocol error", ["transport", "code"],
            registry=r))

    def track_policy(self, holder) -> None:
        """Export the policy's decisions by deciding rule and verdict (rule ids: configuration)."""
        self.registry.register(_PolicyCollector(holder))

    def track_audit(self, audit) -> None:
        """Export an AuditLog's state: rows waiting, health, write errors, refusals."""
        r = self.registry
        Gauge("atp_audit_buffered_rows", "Audit rows waiting to be written", registry=r
              ).set_function(lambda: audit.buffered)
        Gauge("atp_audit_healthy", "1 while audit writes succeed and the buffer has room",
              registry=r).set_function(lambda: 1 if audit.healthy else 0)
        r.register(_AuditCollector(audit))

    def track_routing(self, router) -> None:
        """Export the router's decisions, expected regret and per-model posteriors."""
        self.registry.register(router.collector())

    def track_breakers(self, health, models, clock) -> None:
        """Export each model's circuit state (`models()`: the configured ids; `clock`: the
        pipeline's, which the breaker's cooldown runs on)."""
        self.registry.register(_BreakerCollector(health, models, clock))

    def observe_first_token(self, transport: str, seconds: float) -> None:
        h = self.first_token.get(transport)
        if h is None:
            h = self.first_token[transport] = _Histogram(_LATENCY_BUCKETS)
        h.observe(seconds)

    def count_redactions(self, counts: dict, mode: str) -> None:
        for kind, n in counts.items():
            key = (kind, mode)
            self.redactions[key] = self.redactions.get(key, 0) + n

    def add_models(self, model_ids) -> None:
        """Label these model ids as themselves from now on (models added through the admin API:
        configuration too, so the series stay bounded by what operators add)."""
        self._model_labels = self._model_labels | frozenset(model_ids)

    def count_refusal(self, transport: str, reason: str) -> None:
        """One refusal; a reason outside REFUSAL_REASONS is a bug, counted as OTHER."""
        key = (transport, reason if reason in REFUSAL_REASONS else OTHER)
        self.refusals[key] = self.refusals.get(key, 0) + 1

    def count_injection(self, mode: str) -> None:
        self.injections[mode] = self.injections.get(mode, 0) + 1

    def track_state(self, stores) -> None:
        """Export what a shared state store noticed: the resets (data lost) this process saw."""
        self.registry.register(_StateCollector(stores))

    def track_privacy(self, ledger_path, cfg) -> None:
        self.registry.register(_PrivacyCollector(ledger_path, cfg))

    def observe(self, transport: str, model: str, outcome: str, seconds: float,
                overhead_s: float | None) -> None:
        counts, key = self.request_counts, (transport, model, outcome)
        n = counts.get(key)
        if n is None:   # a new label set: check it once (a known one was checked when it arrived)
            key = (transport, model if model in self._model_labels else UNKNOWN,
                   outcome if outcome in _OUTCOMES else OTHER)
            n = counts.get(key, 0)
        counts[key] = n + 1
        h = self.durations.get(transport)
        if h is None:
            h = self.durations[transport] = _Histogram(_LATENCY_BUCKETS)
            self.overheads[transport] = _Histogram(_OVERHEAD_BUCKETS)
        h.observe(seconds)
        if overhead_s is not None:
            self.overheads[transport].observe(overhead_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
