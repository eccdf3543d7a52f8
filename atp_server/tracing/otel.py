"""The spans (OpenTelemetry SDK, the `otel` extra): request → stages → upstream attempts, exported as configured.

Span tree of one request (names are fixed; everything variable is an attribute):

    atp.request                 SERVER, child of the client's traceparent when it sent a valid one
      atp.before.<stage>        one per stage that has a `before` (validate, policy, admission, ...)
      atp.attempt               CLIENT, one per upstream call (failover and hedging make several);
                                its context is the `traceparent` the provider receives
      atp.after.<stage>         one per stage that has an `after`, in the order they run

Only this module imports OpenTelemetry; the pipeline sees RequestSpan and AttemptSpan.
A tracer provider of our own (never the process-global one), so several Apps in one process
(tests, workers) each export to their own place.
"""
import asyncio
import collections
import sys
import time

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor,
                                            SpanExportResult)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..types import AtpError
from .config import TracingConfig
from .context import UPSTREAM_TRACE, UpstreamTrace

# gen_ai.system (OpenTelemetry GenAI semantic conventions) by adapter type: an OpenAI-compatible
# upstream speaks OpenAI's API, which is what the convention's "openai" names.
GEN_AI_SYSTEMS = {"openai_compat": "openai", "anthropic": "anthropic", "ollama": "ollama",
                  "simulated": "atp.simulated"}
# What a client or an upstream wrote (the requested model, an error message) is cut to 256
# characters on a span: every span waits in the exporter's bounded queue until it is sent. (Not
# SpanLimits: that would cut the exception events' stack traces too, with a warning each time.)
_CLIENT_TEXT = 256
# One OTLP export (its retries included) gives up after 5 s, half the exporter's default: the last
# export at shutdown then ends within a typical drain even when the collector is unreachable.
_EXPORT_TIMEOUT_S = 5
_PROPAGATOR = TraceContextTextMapPropagator()
_ERROR = StatusCode.ERROR
_SERVER, _CLIENT, _INTERNAL = SpanKind.SERVER, SpanKind.CLIENT, SpanKind.INTERNAL


class RecentSpans(InMemorySpanExporter):
    """The SDK's in-memory exporter, keeping only the newest MAX_SPANS: `exporter = "memory"` on a
    server that keeps serving must not grow without bound."""

    # 4096 spans: some 290 requests of 14 spans, more than any test reads; a few MB at most.
    MAX_SPANS = 4096

    def __init__(self):
        super().__init__()
        self._recent: collections.deque = collections.deque(maxlen=self.MAX_SPANS)

    def export(self, spans) -> SpanExportResult:
        self._recent.extend(spans)
        return SpanExportResult.SUCCESS

    def get_finished_spans(self) -> tuple:
        return tuple(self._recent)

    def clear(self) -> None:
        self._recent.clear()


def _exporter(cfg: TracingConfig):
    if cfg.exporter == "memory":
        return RecentSpans()
    if cfg.exporter == "console":     # one span per line, not the SDK's indented JSON
        # sys.stdout as it is now (the SDK's default is the one bound when it was imported)
        return ConsoleSpanExporter(out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter(endpoint=cfg.endpoint, timeout=_EXPORT_TIMEOUT_S)


class Tracer:
    """The pipeline's tracer: `request(ctx)` opens a request's span; `shutdown()` flushes."""

    def __init__(self, cfg: TracingConfig, provider_types: dict[str, str]):
        self.config = cfg
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": cfg.service_name}),
            sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)))
        self.exporter = _exporter(cfg)
        # In memory: each span is there once it ended (tests read them at once). Elsewhere a
        # background thread batches the export, off the event loop.
        processor = SimpleSpanProcessor if cfg.exporter == "memory" else BatchSpanProcessor
        self.provider.add_span_processor(processor(self.exporter))
        self.tracer = self.provider.get_tracer("atp_server")
        self.systems = {name: GEN_AI_SYSTEMS.get(t, t) for name, t in provider_types.items()}

    def request(self, ctx) -> "RequestSpan":
        return RequestSpan(self, ctx)

    def finished_spans(self) -> tuple:
        """The spans ended so far (exporter "memory" only)."""
        return self.exporter.get_finished_spans()

    def shutdown(self) -> None:
        """Export what is queued and stop (blocking: the App calls it off the loop)."""
        self.provider.shutdown()


def failed(span, exc: BaseException) -> None:
    """Record on `span` how a call ended with `exc`: a wire error or a bug is an error (with the
    exception as an event); a cancel (client gone, hedge lost) is an outcome, not an error."""
    if isinstance(exc, AtpError):
        span.set_attribute("atp.outcome", exc.name)
        span.set_attribute("atp.code", int(exc.code))
        span.set_attribute("error.type", exc.name)
        span.record_exception(exc)
        span.set_status(Status(_ERROR, str(exc)[:_CLIENT_TEXT]))
    elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        span.set_attribute("atp.outcome", "CANCELLED")
    else:
        span.set_attribute("atp.outcome", "INTERNAL")
        span.set_attribute("error.type", type(exc).__qualname__)
        span.record_exception(exc)
        span.set_status(Status(_ERROR, type(exc).__qualname__))


class RequestSpan:
    """A request's span and what its children need; built by the pipeline when a request enters."""

    __slots__ = ("owner", "span", "context", "recording", "attempts", "ended")

    def __init__(self, owner: Tracer, ctx):
        self.owner = owner
        request = ctx.request
        parent = None
        if request.traceparent:      # malformed: extract gives an empty context, a new trace
            carrier = {"traceparent": request.traceparent}
            if request.tracestate:
                carrier["tracestate"] = request.tracestate
            parent = _PROPAGATOR.extract(carrier)
        # Started when the transport received the request (ctx.t0), not when the chain began.
        started = time.time_ns() - (time.perf_counter_ns() - ctx.t0)
        attributes = {"atp.request_id": request.request_id, "atp.transport": ctx.transport,
                      "atp.tenant": ctx.principal.tenant, "atp.tier": request.tier,
                      "gen_ai.operation.name": "chat"}
        if request.model:
            attributes["gen_ai.request.model"] = request.model[:_CLIENT_TEXT]
        self.span = span = owner.tracer.start_span("atp.request", context=parent, kind=_SERVER,
                                                   attributes=attributes, start_time=started)
        ctx.trace_id = request.trace_id = format(span.get_span_context().trace_id, "032x")
        self.context = trace.set_span_in_context(span)
        self.recording = span.is_recording()
        self.attempts = 0
        self.ended = False

    failed = staticmethod(failed)     # (stage span, exc): how a stage refused or broke

    def stage(self, phase: str, name: str):
        """A started child span for one stage's before or after."""
        return self.owner.tracer.start_span(f"atp.{phase}.{name}", context=self.context, kind=_INTERNAL)

    def attempt(self, model) -> "AttemptSpan":
        """A started child span for one upstream call to `model` (a ModelSpec)."""
        self.attempts += 1
        span = self.owner.tracer.start_span("atp.attempt", context=self.context, kind=_CLIENT, attributes={
            "atp.model": model.id, "atp.provider": model.provider, "atp.attempt": self.attempts,
            "gen_ai.operation.name": "chat", "gen_ai.request.model": model.upstream or model.id,
            "gen_ai.system": self.owner.systems.get(model.provider, model.provider)})
        return AttemptSpan(span)

    def end(self, ctx) -> None:
        """Once every after has run: how the request ended, then the span closes."""
        if self.ended:
            return
        self.ended = True
        span, decision, usage = self.span, ctx.decision, ctx.usage
        if decision is not None:
            span.set_attribute("gen_ai.response.model", decision.model)
            span.set_attribute("atp.provider", decision.provider)
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
            span.set_attribute("atp.cost_usd", usage.cost_usd)
        if ctx.failures:
            span.set_attribute("atp.failovers", len(ctx.failures))
        span.set_attribute("atp.outcome", ctx.outcome)
        span.set_attribute("atp.code", ctx.code)
        if ctx.outcome != "ok":
            span.set_attribute("error.type", ctx.outcome)
            span.set_status(Status(_ERROR, ctx.outcome))
        span.end()


class AttemptSpan:
    """One upstream call's span: its traceparent for the provider, ended once by `end(exc)`.

    `async with` (a whole-answer call) sets UPSTREAM_TRACE around the call and ends the span;
    a streamed attempt calls `enter()` / `leave(token)` around its first read and `end` itself.
    """

    __slots__ = ("span", "upstream", "token")

    def __init__(self, span):
        self.span = span
        sc = span.get_span_context()
        self.upstream = UpstreamTrace(f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}",
                                      sc.trace_state.to_header() if sc.trace_state else "")
        self.token = None

    def enter(self):
        return UPSTREAM_TRACE.set(self.upstream)

    @staticmethod
    def leave(token) -> None:
        UPSTREAM_TRACE.reset(token)

    def end(self, exc: BaseException | None) -> None:
        span, self.span = self.span, None
        if span is None:
            return
        if exc is None:
            span.set_attribute("atp.outcome", "ok")
        else:
            failed(span, exc)
        span.end()

    async def __aenter__(self) -> "AttemptSpan":
        self.token = self.enter()
        return self

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        self.leave(self.token)
        self.end(exc)
        return False
