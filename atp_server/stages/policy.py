"""Request checks before anything is spent: the request's own shape (validate) and the policy."""
import logging

from codec.errors import ErrorCode

from ..types import AtpError, RouteDecision
from ..routing.spec import estimate_tokens
from .base import RequestContext, Stage

log = logging.getLogger("atp.policy")


class ValidateStage(Stage):
    """Refuse a request whose fields are out of range (types.ChatRequest.validate)."""

    name = "validate"
    selection = True

    def before(self, ctx: RequestContext) -> None:
        ctx.request.validate()


class PolicyStage(Stage):
    """Decide the attribute-based policy (atp_server/policy) before admission and routing; the
    decision stays on the context for the route filter, redaction and the audit record."""

    name = "policy"
    selection = True

    def __init__(self, holder):
        self.holder = holder        # .policy is swapped whole by a reload: read it per request

    def before(self, ctx: RequestContext) -> None:
        # Whatever tenant the body named, from here on it is the credentials' (a later stage
        # keying anything on request.tenant can never reach another tenant's entries).
        ctx.request.tenant = ctx.principal.tenant
        holder = self.holder
        ctx.policy = decision = holder.decide(ctx.principal, ctx.request, ctx.transport,
                                              getattr(ctx, "pii_types", None))
        holder.enforce(decision, ctx.request.request_id)


class PolicyRouteStage(Stage):
    """After routing: keep only the models the policy decision allows in the failover chain (an
    unpinned request may go to any model routing ranks; policy may have taken some out)."""

    name = "policy-models"
    selection = True

    def __init__(self, router):
        self.router = router

    def before(self, ctx: RequestContext) -> None:
        decision = ctx.policy
        if decision is None or decision.models is None or decision.dry_run:
            return
        d = ctx.decision
        allowed = decision.models
        chain = [m for m in (d.model,) + d.fallbacks if m in allowed]
        if chain == [d.model] + list(d.fallbacks):
            return
        if not chain:
            raise AtpError(ErrorCode.POLICY_DENIED, f"no model this request may use is routable "
                           f"(policy rule {decision.rule} allows {', '.join(sorted(allowed))})")
        best = self.router.models[chain[0]]
        worst_out = ctx.request.max_tokens or best.max_output_tokens
        ctx.decision = d._replace(   # _replace keeps the engine's extra fields (max_attempts, trace)
            provider=best.provider, model=best.id,
            estimated_cost_usd=best.cost_micros(estimate_tokens(ctx.request.prompt_chars()),
                                                worst_out) / 1e6,
            estimated_latency_ms=best.latency_ms,
            reasons=d.reasons + (f"policy allows {', '.join(sorted(allowed))}",),
            fallbacks=tuple(chain[1:]))
