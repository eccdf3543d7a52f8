"""After-only stages that record how a request ended: accounting, metrics, the audit log, observers."""
import time

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
    name = "audit"

    def __init__(self, audit, known_models):
        self.audit = audit            # .record looked up per call: tests wrap it to observe it
        self.known = known_models

    def after(self, ctx: RequestContext, outcome: str) -> None:
        decision, usage, request = ctx.decision, ctx.usage, ctx.request
        self.audit.record(ctx.principal.tenant, ctx.principal.name, ctx.transport,
                          request.request_id, label_model(ctx, self.known), outcome, ctx.code, {
                              **redaction_detail(ctx),
                              "tier": request.tier,
                              "provider": decision.provider if decision else None,
                              "in": usage.input_tokens if usage else 0,
                              "out": usage.output_tokens if usage else 0,
                              "cost_micros": usage.cost_usd_micros if usage else 0,
                              "estimated": usage.estimated if usage else False,
                              "elapsed_us": (time.perf_counter_ns() - ctx.t0) // 1000,
                              **policy_detail(ctx.policy)})


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


class ObserverStage(Stage):
    """Calls each fn(request_id, transport, outcome, code) in `observers` (a live list: tests and
    the harness append to it to wait on a request's end without sleeping)."""

    name = "observers"

    def __init__(self, observers: list):
        self.observers = observers

    def after(self, ctx: RequestContext, outcome: str) -> None:
        for observer in self.observers:
            observer(ctx.request.request_id, ctx.transport, outcome, ctx.code)
