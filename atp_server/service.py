"""The gateway as the transports see it: one narrow facade over authentication, pipeline, models, feedback.

Transports translate their wire to calls on a GatewayService and never reach into the App's
parts (router, policy, health board, feedback log, admission): what a front door may ask of the
gateway is exactly what is here. The pipeline's and the authenticator's methods are bound once,
at construction, so calling `service.complete` costs what calling `pipeline.complete` cost.
"""
import hmac
from dataclasses import dataclass

from codec.errors import ErrorCode

from .metrics import refusal_reason
from .routing.spec import ModelSpec
from .auth import Principal
from .types import AtpError


@dataclass(frozen=True, slots=True)
class ModelListing:
    """One row of the model table as a client may see it."""

    spec: ModelSpec
    healthy: bool             # its circuit is not open right now


class GatewayService:
    """What a transport may use: authenticate, check signatures, run requests, list models, take
    feedback, see whether the server is draining, render metrics, open frame sessions.

    `draining` is a plain attribute (the App sets it when shutdown begins) because the HTTP and
    frame hot paths read it on every request.
    """

    def __init__(self, *, auth, pipeline, router, feedback, metrics, admission, limits,
                 connection_config, congestion_watermark: float, scrape_token: str = ""):
        # requests
        self.authenticate = auth.api_key            # (authorization header) -> Principal
        self.check_signature = auth.check_signature  # (headers, method, path, body, now_ms)
        self.require_signature: bool = auth.cfg.require_signature
        self.signature_present = auth.signature_present   # (headers) -> any signature header?
        self.complete = pipeline.complete           # (request, principal, transport, t0)
        self.stream = pipeline.stream
        self.route = pipeline.route                 # (request, principal) -> RouteDecision
        self.embed = None                           # (EmbeddingRequest, principal) -> (Embeddings, model id, Usage)
        self.resources = None                       # resources.ResourceMonitor (.snapshot()), or None
        self.slo = None                             # slo.SloTracker (.snapshot()), or None
        self.draining = False
        # frame sessions (session.FrameSession)
        self.keyring = auth.keyring
        self.nonce_cache = auth.nonce_cache
        # (nonce, timestamp_ms, now_ms) -> awaitable, when nonces are shared across workers; else None
        self.check_shared_nonce = auth.check_shared_nonce if auth.shared_nonces is not None else None
        self.limits = limits
        self.connection_config = connection_config
        self.session_principal = auth.session_principal
        self.pressure = admission.pressure          # () -> 0..1 fill of slots + queue
        self.congested = admission.congested        # () -> bool: the CONGESTION flag (watermarks)
        self.credit_target = admission.capacity     # () -> slots now: sizes sessions' request credit
        self.congestion_watermark = congestion_watermark
        self.render_metrics = metrics.render        # () -> Prometheus text of this process
        self.scrape_metrics = self._scrape_one      # async () -> what GET /metrics answers
        self._scrape = ("Bearer " + scrape_token).encode() if scrape_token else None
        self._metrics = metrics
        self._router = router
        self._policy = pipeline.policy
        self._clock = pipeline.clock
        self._feedback = feedback

    async def _scrape_one(self) -> bytes:
        """One process: its own numbers (with --workers N, App sets worker_metrics.gather)."""
        return self.render_metrics()

    def metrics_allowed(self, authorization: str | None) -> bool:
        """Whether a scrape may read /metrics: always without [metrics] scrape_token, else only
        with `Authorization: Bearer <token>` (compared in constant time)."""
        if self._scrape is None:
            return True
        return authorization is not None and hmac.compare_digest(authorization.encode(), self._scrape)

    # ---- models and feedback --------------------------------------------------------------------

    def models(self, principal: Principal) -> list[ModelListing]:
        """The models `principal` may use: its key's scope and what the policy allows it."""
        now, health = self._clock(), self._router.health
        return [ModelListing(spec, not health.is_open(spec.id, now))
                for spec in self._policy.visible_models(principal, self._router.models.values())]

    def model_status(self, principal: Principal) -> list[dict]:
        """Per model `principal` may use: breaker state, latency percentiles, error rate, in
        flight and AIMD window, read from the live table (the REST API's models/status)."""
        now, table, health = self._clock(), self._router.table, self._router.health
        st, out = table.stats, []
        for spec in self._policy.visible_models(principal, self._router.models.values()):
            i = table.index.get(spec.id)
            if i is None:
                continue
            state = health.state(spec.id, now)
            window = float(st.aimd_window[i])
            out.append({"id": spec.id, "provider": spec.provider, "healthy": not health.is_open(spec.id, now),
                        "breaker": state.name.lower(), "latency_p50_ms": round(float(st.lat_p50[i]), 3),
                        "latency_p95_ms": round(float(st.lat_p95[i]), 3),
                        "error_rate": round(float(st.err_rate[i]), 6), "in_flight": int(st.inflight[i]),
                        "answers": int(st.answers[i]),
                        "window": None if window == float("inf") else window})
        return out

    def model_health(self) -> list[bool]:
        """For every configured model: is its circuit closed enough to take calls (health probes)."""
        now, health = self._clock(), self._router.health
        return [not health.is_open(m, now) for m in self._router.models]

    def feedback(self, principal: Principal, request_id: str, score: float,
                 comment: str | None = None) -> bool:
        """Record a score in [0, 1] for one answer, under the principal's own tenant (never a
        tenant the client names); False if that request was already rated."""
        if not request_id:
            raise AtpError(ErrorCode.INVALID_REQUEST, "request_id is required")
        if not 0.0 <= score <= 1.0:   # also refuses NaN
            raise AtpError(ErrorCode.INVALID_REQUEST, f"score must be in [0, 1], not {score}")
        return self._feedback.add(principal.tenant, request_id, score, comment, principal.name)

    # ---- frame-session bookkeeping --------------------------------------------------------------

    def session_opened(self, transport: str) -> None:
        self._metrics.sessions.labels(transport).inc()

    def session_closed(self, transport: str) -> None:
        self._metrics.sessions.labels(transport).dec()

    def protocol_error(self, transport: str, code: int) -> None:
        """A session we closed for a protocol error (bad MAC, replay, malformed frame...)."""
        self._metrics.protocol_errors.labels(transport, str(int(code))).inc()
        self.refused(transport, code)

    def refused(self, transport: str, code: int | None = None, reason: str | None = None) -> None:
        """Count a refusal at the door in atp_refusals: by `reason` (metrics.REFUSAL_REASONS), else
        by the wire code's reason; a code that is no refusal (upstream fault, drain) is not
        counted. Called on error paths only: a request that succeeds pays nothing."""
        reason = reason or (refusal_reason(code) if code is not None else None)
        if reason is not None:
            self._metrics.count_refusal(transport, reason)
