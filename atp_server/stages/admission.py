"""Take a dispatch slot before routing (waiting in the tenant's fair-queue flow if need be); give it back after."""
from ..admission import Admission
from .base import RequestContext, Stage


class AdmissionStage(Stage):
    """`before` returns the admission wait (the chain awaits it); `after` releases the slot —
    it runs only when `before` completed, i.e. only when a slot was actually taken."""

    name = "admission"

    def __init__(self, admission: Admission):
        # Looked up per call, not bound once: the test harness wraps acquire to observe it.
        self.admission = admission

    def before(self, ctx: RequestContext):
        # The authenticated tenant picks the flow and tier (a client-sent tenant field would let
        # anyone claim gold); the request's own latency SLO can only shorten its queue deadline.
        return self.admission.acquire(ctx.principal.tenant, ctx.request.latency_slo_ms)

    def after(self, ctx: RequestContext, outcome: str) -> None:
        self.admission.release()
