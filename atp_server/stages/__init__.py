"""The pipeline's stages: small objects with one job each, chained once at start-up (DESIGN §1).

A stage may define `before(ctx)` — check or rewrite the request, refuse with an AtpError, or
return an awaitable the pipeline awaits (admission waiting for a slot) — and `after(ctx,
outcome)`, which runs for every stage whose `before` completed, in reverse order, whatever the
outcome: success, an error, a client cancel or a bug. A stage that is configured off is simply
not in the chain, so nothing on the per-request path asks `if enabled`.
"""
from .base import RequestContext, Stage, StageChain

__all__ = ["RequestContext", "Stage", "StageChain"]
