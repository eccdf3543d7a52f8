"""Prometheus metrics for one server instance (its own registry, so several apps can coexist)."""
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("atp_requests", "Requests by transport, model and outcome code name",
                                ["transport", "model", "outcome"], registry=r)
        self.duration = Histogram("atp_request_duration_seconds", "Request wall time",
                                  ["transport"], buckets=_LATENCY_BUCKETS, registry=r)
        self.overhead = Histogram("atp_gateway_overhead_seconds",
                                  "Gateway time excluding the upstream's", ["transport"],
                                  buckets=_OVERHEAD_BUCKETS, registry=r)
        self.tokens = Counter("atp_tokens", "Tokens by model and direction",
                              ["model", "direction"], registry=r)
        self.cost = Counter("atp_cost_usd_micros", "Spend in USD micros by tenant", ["tenant"],
                            registry=r)
        self.inflight = Gauge("atp_inflight_requests", "Requests holding a dispatch slot", registry=r)
        self.queued = Gauge("atp_queued_requests", "Requests waiting for a dispatch slot", registry=r)
        self.sessions = Gauge("atp_sessions", "Open frame sessions", ["transport"], registry=r)
        self.protocol_errors = Counter("atp_protocol_errors", "Sessions closed by a protocol error",
                                       ["transport", "code"], registry=r)
        self._bound: dict = {}

    def observe(self, transport: str, model: str, outcome: str, seconds: float,
                overhead_s: float | None, tenant: str, tokens_in: int, tokens_out: int,
                cost_micros: int) -> None:
        key = (transport, model, outcome)
        bound = self._bound.get(key)
        if bound is None:   # label lookups cost more than the increments: cache the children
            bound = self._bound[key] = (
                self.requests.labels(transport, model, outcome), self.duration.labels(transport),
                self.overhead.labels(transport), self.tokens.labels(model, "in"),
                self.tokens.labels(model, "out"))
        req, dur, ovh, tin, tout = bound
        req.inc()
        dur.observe(seconds)
        if overhead_s is not None:
            ovh.observe(overhead_s)
        if tokens_in:
            tin.inc(tokens_in)
        if tokens_out:
            tout.inc(tokens_out)
        if cost_micros:
            self.cost.labels(tenant).inc(cost_micros)

    def render(self) -> bytes:
        return generate_latest(self.registry)
