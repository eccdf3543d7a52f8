"""After-only stages that record how a request ended: accounting, metrics, the audit log, observers."""
import hashlib
import logging
import time

import orjson

from .. import logs
from ..logs import ACCESS
from ..metrics import NO_MODEL, UNKNOWN
from .base import RequestContext, Stage


def label_model(ctx: RequestContext, known) -> str:
    """The model a request is recorded under: the routed one, else the client's only if we serve
    it (labels and audit rows never carry arbitrary client strings), else a fixed label."""
    if ctx.decision is not None:
        return ctx.decision.model
    asked = ctx.request.model
    if asked:
        return asked if asked in known else UNKNOWN
    return NO_MODEL


def redaction_detail(ctx: RequestContext) -> dict:
    """What redact/guard found, for the audit row: counts by type (never the values) and the
    injection score with its signal families; empty when they found nothing."""
    detail = {}
    if ctx.redacted:
        detail["redacted"] = ctx.redacted
    if ctx.injection is not None:
        detail["injection"] = {"score": ctx.injection[0], "signals": list(ctx.injection[1])}
    return detail


class AccountStage(Stage):
    """Add a completed answer's tokens and cost to the tenant's and the model's totals."""

    name = "account"

    def __init__(self, accountant):
        self.record = accountant.record

    def after(self, ctx: RequestContext, outcome: str) -> None:
        if ctx.usage is not None:
            self.record(ctx.principal.tenant, ctx.decision.model, ctx.usage)


class MetricsStage(Stage):
    name = "metrics"

    def __init__(self, metrics, known_models):
        self.observe = metrics.observe
        self.known = known_models

    def after(self, ctx: RequestContext, outcome: str) -> None:
        elapsed_ns = time.perf_counter_ns() - ctx.t0
        self.observe(ctx.transport, label_model(ctx, self.known), outcome, elapsed_ns / 1e9,
                     (elapsed_ns - ctx.upstream_ns) / 1e9 if ctx.usage else None)


class AuditStage(Stage):
    """One audit row per request: who, what, which model, tokens, cost — and the prompt's SHA-256,
    never its text unless [audit] store_prompts says so."""

    name = "audit"

    def __init__(self, audit, known_models, store_prompts: bool = False):
        self.audit = audit            # .record looked up per call: tests wrap it to observe it
        self.known = known_models
        self.store_prompts = store_prompts

    def after(self, ctx: RequestContext, outcome: str) -> None:
        decision, usage, request = ctx.decision, ctx.usage, ctx.request
        prompt = orjson.dumps(request.messages, default=str)
        detail = {
            **redaction_detail(ctx),
            "tier": request.tier,
            "provider": decision.provider if decision else None,
            "in": usage.input_tokens if usage else 0,
            "out": usage.output_tokens if usage else 0,
            "cost_micros": usage.cost_usd_micros if usage else 0,
            "estimated": bool(getattr(usage, "estimated", False)),
            "prompt_sha256": hashlib.sha256(prompt).hexdigest(),
            "failovers": len(ctx.failures),
            "elapsed_us": (time.perf_counter_ns() - ctx.t0) // 1000,
            **policy_detail(ctx.policy)}
        if ctx.cache is not None:       # the response cache: hit or miss, and what a hit saved
            detail["cache"] = ctx.cache.audit()
        if self.store_prompts:
            detail["prompt"] = orjson.loads(prompt)
        self.audit.record(ctx.principal.tenant, ctx.principal.name, ctx.transport,
                          request.request_id, label_model(ctx, self.known), outcome, ctx.code,
                          detail)


def policy_detail(decision) -> dict:
    """Which policy rule decided, for the audit record (dry-run: what it would have done)."""
    if decision is None:
        return {}
    out = {"policy_rule": decision.rule, "policy": "allow" if decision.allowed else "deny"}
    if decision.dry_run:
        out["policy_dry_run"] = True
    if decision.redact:
        out["policy_redact"] = True
    return out


_ROOT = logging.getLogger()


class AccessLogStage(Stage):
    """One access-log line per request (logs.py): who, what, how it ended, what it cost."""

    name = "access_log"
    live = None     # live.LiveStats when [dashboard] or [[webhooks]] is on: fed here, once a request

    def __init__(self, known_models):
        self.known = known_models

    def after(self, ctx: RequestContext, outcome: str) -> None:
        if self.live is not None:
            self.live.record(ctx)
        if not ACCESS.isEnabledFor(20):   # logging.INFO; skipped before any field is built
            return
        usage, decision, request = ctx.usage, ctx.decision, ctx.request
        elapsed_ns = time.perf_counter_ns() - ctx.t0
        fields = {"request_id": request.request_id, "tenant": ctx.principal.tenant,
                  "key": ctx.principal.name, "transport": ctx.transport,
                  "model": label_model(ctx, self.known),
                  "provider": decision.provider if decision else None,
                  "outcome": outcome, "code": ctx.code,
                  "tokens_in": usage.input_tokens if usage else 0,
                  "tokens_out": usage.output_tokens if usage else 0,
                  "cost_usd": usage.cost_usd if usage else 0.0,
                  "overhead_us": (elapsed_ns - ctx.upstream_ns) // 1000,
                  "upstream_ms": round(ctx.upstream_ns / 1e6, 3),
                  "elapsed_ms": round(elapsed_ns / 1e6, 3)}
        if ctx.trace_id is not None:     # tracing on, or the client sent a traceparent
            fields["trace_id"] = ctx.trace_id
        if ctx.failures:
            fields["failovers"] = list(ctx.failures)
        if decision is not None and ACCESS.isEnabledFor(10):   # DEBUG: why this model
            fields["reasons"] = list(decision.reasons)
        sink = logs.ACCESS_SINK
        if sink is not None and sink in _ROOT.handlers and not ACCESS.handlers:
            sink.access(fields)        # the server's handler: rendered and batched there
        else:
            ACCESS.info("request", extra={"fields": fields})


class ObserverStage(Stage):
    """Calls each fn(request_id, transport, outcome, code) in `observers` (a live list: tests and
    the harness append to it to wait on a request's end without sleeping)."""

    name = "observers"

    def __init__(self, observers: list):
        self.observers = observers

    def after(self, ctx: RequestContext, outcome: str) -> None:
        for observer in self.observers:
            observer(ctx.request.request_id, ctx.transport, outcome, ctx.code)
