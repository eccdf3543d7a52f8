"""The one request pipeline every transport calls: a chain of stages around dispatch.

The chain is fixed at start-up (`build_chain`): validate → policy → admission → route, then
dispatch (attempts down the chain, see dispatch.py; breaker reports) here, then — in reverse,
whatever the outcome — account → metrics → audit → observers. Authentication happens at the door
(transport + auth.py) and arrives here as a Principal.
"""
import asyncio
import logging
import random
import time
from contextlib import aclosing

from codec.errors import ErrorCode

from .accounting import Accountant
from .admission import Admission
from .auth import Principal
from .dispatch import Caps, DispatchConfig, first_item
from .routing.aimd import ProviderWindows
from .logs import event
from .routing.health import Action, HealthBoard, Signal, ended
from .routing.router import Router
from .stages import RequestContext, StageChain
from .redaction import restoring
from .stages.admission import AdmissionStage
from .stages.guard import GuardStage
from .stages.policy import PolicyRouteStage, PolicyStage, ValidateStage
from .stages.record import AccessLogStage, AccountStage, AuditStage, MetricsStage, ObserverStage
from .stages.redact import RedactStage
from .stages.route import RouteStage
from .stages.cache import hit_usage
from .tracing.context import trace_id
from .types import (AtpError, ChatRequest, Completion, Delta, Done, Finish, RouteDecision, Routed, TextDelta,
                    ToolCall, ToolCallDelta)

__all__ = ["Pipeline", "build_chain"]

log = logging.getLogger("atp.dispatch")

_DISPATCH, _REJECT, _PROBE = Signal.DISPATCH, Action.REJECT, Action.PROBE   # enum lookups cost ~100 ns
_CANCELLED, _INTERNAL = int(ErrorCode.CANCELLED), int(ErrorCode.INTERNAL)


def build_chain(*, router: Router, admission: Admission, accountant: Accountant, policy,
                clock, observers: list, metrics=None, audit=None, limits=None, redaction=None,
                guard=None, shadow=None, cache=None, slo=None) -> StageChain:
    """The stages in order; what is configured off (no audit log, no metrics) is left out.

    The after-only recorders come first so that, running in reverse, they see the final outcome
    after the slot was released and the spend accounted.
    """
    known = frozenset(router.models)
    stages = [ObserverStage(observers), AccessLogStage(known)]
    if audit is not None:
        stages.append(AuditStage(audit, known, getattr(audit, "store_prompts", False)))
    if metrics is not None:
        stages.append(MetricsStage(metrics, known))
    if slo is not None:             # [[slo]] configured: slo.SloTracker counts per route
        stages.append(slo)
    stages += [AccountStage(accountant), ValidateStage()]
    if limits is not None:          # DESIGN §1: limits/budget reserve right after authn, before policy
        stages.append(limits)
    stages.append(PolicyStage(policy))
    if redaction is not None and redaction.enabled:    # DESIGN §1: policy → redact → guard
        stages.append(RedactStage(redaction, metrics))
    if guard is not None and guard.enabled:
        stages.append(GuardStage(guard, metrics))
    stages += [AdmissionStage(admission),
               RouteStage(router, clock, metrics.decision_time if metrics is not None else None),
               PolicyRouteStage(router)]
    if cache is not None:           # last before dispatch: a hit was authorised and routed like any
        stages.append(cache)
    if shadow is not None:          # after-only and first: mirrors once everything is recorded
        stages.insert(0, shadow)
    return StageChain(stages)


class _Scope:
    """`async with`: run every stage's `before`; on the way out run the `after` of each stage whose
    `before` completed, in reverse order, whatever ended the request (a class, not an
    @asynccontextmanager: a third of the cost)."""

    __slots__ = ("chain", "ctx", "entered")

    def __init__(self, chain: StageChain, ctx: RequestContext):
        self.chain, self.ctx = chain, ctx
        self.entered = 0

    async def __aenter__(self) -> RequestContext:
        ctx = self.ctx
        try:
            for before in self.chain.befores:
                if before is not None:
                    pending = before(ctx)
                    if pending is not None:
                        await pending
                self.entered += 1
        except BaseException as exc:
            self._close(exc)
            raise
        return ctx

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        self._close(exc)
        return False

    def _close(self, exc: BaseException | None) -> None:
        ctx = self.ctx
        _settle(ctx, exc)
        afters, outcome = self.chain.afters, ctx.outcome
        for i in range(self.entered - 1, -1, -1):
            after = afters[i]
            if after is not None:
                after(ctx, outcome)
        self.entered = 0


def _settle(ctx: RequestContext, exc: BaseException | None) -> None:
    """The request's final outcome and wire code from what ended it."""
    if isinstance(exc, AtpError):
        ctx.outcome, ctx.code = exc.name, int(exc.code)
    elif exc is not None and not ctx.finished:   # client gone (GeneratorExit/cancel) or a bug
        if isinstance(exc, (GeneratorExit, asyncio.CancelledError)):
            ctx.outcome, ctx.code = "CANCELLED", _CANCELLED
        else:
            ctx.outcome, ctx.code = "INTERNAL", _INTERNAL


class _TracedScope(_Scope):
    """_Scope with a span around each stage's before and after, children of the request's span
    (ctx.span, tracing/otel.py), which ends once the last after ran. Chosen per request only when
    tracing is on and the request is sampled, so the untraced scope pays nothing for it."""

    __slots__ = ()

    async def __aenter__(self) -> RequestContext:
        ctx = self.ctx
        request_span, stages = ctx.span, self.chain.stages
        try:
            for i, before in enumerate(self.chain.befores):
                if before is not None:
                    span = request_span.stage("before", stages[i].name)
                    try:
                        pending = before(ctx)
                        if pending is not None:
                            await pending
                    except BaseException as exc:
                        request_span.failed(span, exc)
                        raise
                    finally:
                        span.end()
                self.entered += 1
        except BaseException as exc:
            self._close(exc)
            raise
        return ctx

    def _close(self, exc: BaseException | None) -> None:
        ctx = self.ctx
        _settle(ctx, exc)
        request_span, stages = ctx.span, self.chain.stages
        afters, outcome = self.chain.afters, ctx.outcome
        try:
            for i in range(self.entered - 1, -1, -1):
                after = afters[i]
                if after is not None:
                    span = request_span.stage("after", stages[i].name)
                    try:
                        after(ctx, outcome)
                    except BaseException as exc:
                        request_span.failed(span, exc)
                        raise
                    finally:
                        span.end()
        finally:
            self.entered = 0
            request_span.end(ctx)


class _Call:
    """`with _Call(...)`: one dispatch to one model, reported to the health board at both ends (a
    class, like _Admitted, for the per-request cost). Creating it reports DISPATCH and raises
    UNAVAILABLE when the breaker refuses; leaving reports how the call ended, whatever it was:
    success, an upstream fault, a client error, a cancel (CancelledError / GeneratorExit) or a bug.
    So a probe is always released."""

    __slots__ = ("health", "model_id", "clock", "probe")

    def __init__(self, health: HealthBoard, model_id: str, clock):
        self.health, self.model_id, self.clock = health, model_id, clock
        action = health.report(model_id, _DISPATCH, clock())
        if action is _REJECT:    # opened, or its probe went out, after this request was routed
            raise AtpError(ErrorCode.UNAVAILABLE, f"{model_id}: circuit open",
                           retry_after_ms=health.retry_after_ms((model_id,), clock()))
        self.probe = action is _PROBE

    def __enter__(self) -> "_Call":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.health.report(self.model_id, ended(exc, self.probe), self.clock())
        return False


class _Attempt:
    """One streamed call to one model: its concurrency slot and breaker DISPATCH taken when it
    starts, given back and reported by `close(exc)` however it ends (the same guarantee as _Call,
    across the yields of a stream). The pipeline reads `up` directly: no generator in between."""

    __slots__ = ("model_id", "call", "up", "caps", "provider", "slot", "span")

    def __init__(self, pipeline: "Pipeline", model_id: str, request: ChatRequest, vault=None,
                 request_span=None):
        model = pipeline.router.models[model_id]
        self.model_id, self.caps, self.provider, self.up = model_id, pipeline.caps, model.provider, None
        # tracing on: this call's span, started before the gates so a refusal is a failed attempt
        self.span = span = request_span.attempt(model) if request_span is not None else None
        self.slot = pipeline.windows.slot(model.provider, request.latency_slo_ms)
        try:
            self.slot.__enter__()          # the provider's AIMD window (OVERLOADED when full)
        except BaseException as exc:
            if span is not None:
                span.end(exc)
            raise
        capped = False
        try:
            capped = self.caps.take(model.provider)
            self.call = _Call(pipeline.router.health, model_id, pipeline.clock)
        except BaseException as exc:
            if capped:
                self.caps.give_back(model.provider)
            self.slot.__exit__(type(exc), exc, None)
            if span is not None:
                span.end(exc)
            raise
        if not capped:
            self.caps = None
        up = pipeline.adapters[model.provider].stream(model, request)
        self.up = restoring(up, vault) if vault is not None else up   # redaction placeholders back

    async def first(self):
        """(self, the first item); a stream that ends before any item is a cut."""
        # tracing: the upstream request (sent by this first read) carries the attempt's traceparent
        token = self.span.enter() if self.span is not None else None
        try:
            return self, await self.up.__anext__()
        except StopAsyncIteration:
            exc = AtpError(ErrorCode.UPSTREAM_CUT, f"{self.model_id} ended the stream without finishing")
            await self.close(exc)
            raise exc from None
        except BaseException as exc:
            await self.close(exc)
            raise
        finally:
            if token is not None:
                self.span.leave(token)

    async def close(self, exc: BaseException | None) -> None:
        up, self.up = self.up, None
        if up is None:
            return
        kind = None if exc is None else type(exc)
        try:
            await up.aclose()
        finally:
            self.call.__exit__(kind, exc, None)
            if self.caps is not None:
                self.caps.give_back(self.provider)
            self.slot.__exit__(kind, exc, None)
            if self.span is not None:
                self.span.end(exc)


class Pipeline:
    def __init__(self, router: Router, adapters: dict, admission: Admission,
                 accountant: Accountant, audit=None, metrics=None, policy=None,
                 clock=time.monotonic, dispatch: DispatchConfig = DispatchConfig(), sleep=asyncio.sleep,
                 rng: random.Random | None = None, windows=None, limits=None, redaction=None,
                 guard=None, shadow=None, cache=None, slo=None, tracer=None):
        self.router = router
        self.tracer = tracer         # tracing/otel.Tracer when [tracing] is on, else None
        self.dispatch = dispatch     # retries, failover budget, hedging ([routing] keys)
        self.sleep = sleep           # backoff and hedge timers: injectable, so tests never sleep
        self.rng = rng or random.Random()   # full-jitter draws; a seeded one in tests
        self.caps = Caps(adapters)   # per-provider max_concurrency, taken per attempt
        self.windows = windows or ProviderWindows({}, clock=clock)   # AIMD gate (routing/aimd.py)
        self.adapters = adapters
        self.admission = admission
        self.accountant = accountant
        self.audit = audit
        self.metrics = metrics
        if policy is None:      # no policy files: the size caps and allow-by-default
            from .policy import PolicyHolder
            policy = PolicyHolder.of_rules("", router.models.values())
        self.policy = policy
        # () -> awaitable: returns once every audit row recorded so far is committed (audit.py)
        self.durable = audit.durable if audit is not None else None
        self._ids = 0
        self.observers: list = []   # fn(request_id, transport, outcome, code) after each request
        self.chain = build_chain(router=router, admission=admission, accountant=accountant,
                                 policy=policy, clock=clock, observers=self.observers,
                                 metrics=metrics, audit=audit, limits=limits, redaction=redaction,
                                 guard=guard, shadow=shadow, cache=cache, slo=slo)
        self.clock = clock

    @property
    def clock(self):
        """The monotonic clock routing and health read; one source for the stages and dispatch."""
        return self._clock

    @clock.setter
    def clock(self, clock) -> None:
        # A replaced clock (tests, simulations) must reach the stages that captured the old one,
        # or routing and dispatch would disagree about when a circuit reopens.
        self._clock = clock
        for stage in self.chain.stages:
            if hasattr(stage, "clock"):
                stage.clock = clock

    def _request_id(self, request: ChatRequest) -> str:
        if request.request_id:
            return request.request_id
        self._ids += 1
        return f"atp-{int(time.time() * 1000):x}-{self._ids:x}"

    def route(self, request: ChatRequest, principal: Principal) -> RouteDecision:
        """Selection only (the Route RPC): the selection stages (validate, policy, route), no
        admission, dispatch or recording."""
        ctx = RequestContext(request, principal, "route", None)
        for before in self.chain.selection_befores:
            before(ctx)
        return ctx.decision

    def _admitted(self, request: ChatRequest, principal: Principal, transport: str,
                  started_ns: int | None) -> _Scope:
        """`async with`: the chain's befores (validate, policy, take a slot, route); always the
        afters (release, account, record)."""
        request.request_id = self._request_id(request)
        ctx = RequestContext(request, principal, transport, started_ns)
        if self.tracer is not None:
            ctx.span = span = self.tracer.request(ctx)
            if span.recording:          # sampled out: the context still reaches the upstream
                return _TracedScope(self.chain, ctx)
        elif request.traceparent:       # tracing off: the client's trace id still goes in the log
            ctx.trace_id = trace_id(request.traceparent)
        return _Scope(self.chain, ctx)

    def _failed(self, trace: RequestContext, model_id: str, exc: AtpError) -> None:
        trace.failures.append(f"{model_id}: {exc.name}")
        log.info("request %s: %s failed (%s), trying again down the chain",
                 trace.request.request_id, model_id, exc)
        # the same as a structured event (JSON logs: atp.events), for dashboards and alerts
        event("failover", request_id=trace.request.request_id, tenant=trace.principal.tenant,
              failed=model_id, code=exc.name)

    def _answered_by(self, trace: RequestContext, model_id: str) -> RouteDecision:
        """The decision naming the model that answers, after failing over to it."""
        d = trace.decision
        if model_id == d.model:
            return d
        nxt = self.router.models[model_id]
        chain = (d.model,) + d.fallbacks
        trace.decision = d._replace(
            provider=nxt.provider, model=nxt.id, estimated_latency_ms=nxt.latency_ms,
            reasons=d.reasons + (f"failed over after {'; '.join(trace.failures)}",),
            fallbacks=tuple(m for m in chain if m != nxt.id))
        return trace.decision

    async def _first(self, trace: RequestContext, request: ChatRequest, start, discard=None):
        """(model id, start(model id)'s result) from the first attempt that gets that far:
        retries, failover and hedging (dispatch.py)."""
        d = trace.decision
        # The routing engine may give an alias its own budget (a field appended to RouteDecision).
        budget = getattr(d, "max_attempts", None) or self.dispatch.max_attempts
        u0 = time.perf_counter_ns()
        try:
            return await first_item((d.model,) + d.fallbacks, budget, self.dispatch, self.rng, start,
                                    self.dispatch.hedge_s(request.tier), self.sleep,
                                    lambda model_id, exc: self._failed(trace, model_id, exc), discard)
        finally:
            trace.upstream_ns += time.perf_counter_ns() - u0

    async def _complete_call(self, model_id: str, request: ChatRequest, request_span=None):
        """One whole-answer call: (text, finish, tokens), reported to the breaker at both ends."""
        model = self.router.models[model_id]
        if request_span is not None:    # tracing: the same call inside its attempt span
            async with request_span.attempt(model):
                return await self._complete_call(model_id, request)
        adapter = self.adapters[model.provider]
        capped = self.caps.take(model.provider)
        try:
            with self.windows.slot(model.provider, request.latency_slo_ms), \
                    _Call(self.router.health, model_id, self.clock):
                if hasattr(adapter, "complete"):
                    text, finish = await adapter.complete(model, request)
                    return text, finish, finish.output_tokens or 0
                return await _drain(adapter, model, request)
        finally:
            if capped:
                self.caps.give_back(model.provider)

    def _succeeded(self, trace: RequestContext, principal: Principal, model, request, finish: Finish,
                   tokens: int):
        trace.usage = usage = self.accountant.usage(model, request, finish, tokens)
        if finish.route_note is not None:
            d = trace.decision
            trace.decision = d._replace(reasons=d.reasons + (finish.route_note,))
        if trace.cache is not None and trace.cache.entry is not None:   # a cache hit: nothing spent
            trace.usage = usage = hit_usage(trace.cache, usage)
        trace.finished = True      # the account stage adds it to the totals on the way out
        return usage

    async def stream(self, request: ChatRequest, principal: Principal, transport: str,
                     started_ns: int | None = None):
        """Async generator: Routed, then Delta..., then Done; failures raise AtpError.

        Closing the generator early (client gone) closes the upstream call with it. After a
        failover before the first token a second Routed names the model that answers now.
        """
        done = None
        async with self._admitted(request, principal, transport, started_ns) as trace:
            yield Routed(trace.decision)
            vault, cached = trace.vault, trace.cache
            model_id, (attempt, item) = await (
                cached.first(vault) if cached is not None and cached.entry is not None else
                self._first(trace, request, lambda m: _Attempt(self, m, request, vault, trace.span).first(),
                            _discard))
            if model_id != trace.decision.model:
                yield Routed(self._answered_by(trace, model_id))
            if self.metrics is not None and type(item) is not Finish:   # the first token is ready
                self.metrics.observe_first_token(transport, (time.perf_counter_ns() - trace.t0) * 1e-9)
            model = self.router.models[model_id]
            up = attempt.up
            emitted = tokens = 0
            try:
                while True:
                    kind = type(item)
                    if kind is TextDelta:
                        yield Delta(emitted, item.text, item.tokens)
                        emitted += 1
                        tokens += item.tokens
                    elif kind is Finish:
                        break
                    elif kind is ToolCallDelta:     # passed through as is
                        yield item
                        emitted += 1
                        tokens += item.tokens
                    u0 = time.perf_counter_ns()
                    try:
                        item = await up.__anext__()
                    except StopAsyncIteration:
                        raise AtpError(ErrorCode.UPSTREAM_CUT,
                                       f"{model_id} ended the stream without finishing") from None
                    finally:
                        trace.upstream_ns += time.perf_counter_ns() - u0
            except BaseException as exc:
                await attempt.close(exc)
                if emitted:     # a cut stream (or a client gone) is billed for what it delivered
                    trace.usage = self.accountant.delivered(model, request, tokens)
                # Bytes reached the client: no failover can splice another model's answer on.
                if emitted and isinstance(exc, AtpError) and exc.code is not ErrorCode.UPSTREAM_CUT:
                    raise AtpError(ErrorCode.UPSTREAM_CUT,
                                   f"{model_id} failed mid-stream: {exc.message}") from exc
                raise
            finish = item
            await attempt.close(None)
            usage = self._succeeded(trace, principal, model, request, finish, tokens)
            done = Done(finish.reason, usage, trace.decision, trace.overhead_us())
        if done is None:
            raise AtpError(ErrorCode.INTERNAL, "pipeline ended without a result")
        # The stages have run (the audit row is recorded): the final frame waits for its commit.
        if self.durable is not None:
            await self.durable()
        yield done

    async def complete(self, request: ChatRequest, principal: Principal, transport: str,
                       started_ns: int | None = None) -> Completion:
        """A whole answer (non-streaming callers): the adapter's one-shot `complete` when it has
        one — a single JSON answer costs the upstream and us less than an SSE stream — else its
        stream, drained. Same admission, failover, accounting and audit as stream()."""
        result = None
        async with self._admitted(request, principal, transport, started_ns) as trace:
            cached = trace.cache
            if cached is not None and cached.entry is not None:
                model_id, (text, finish, tokens) = cached.whole()
            else:
                model_id, (text, finish, tokens) = await self._first(
                    trace, request, lambda m: self._complete_call(m, request, trace.span))
                if cached is not None:          # a miss: the answer the cache stage stores
                    cached.answer = (text, finish, tokens)
            self._answered_by(trace, model_id)
            usage = self._succeeded(trace, principal, self.router.models[model_id], request, finish, tokens)
            if trace.vault is not None:     # redaction placeholders back into the answer
                text = trace.vault.restore(text)
            result = Completion(request.request_id, text, finish.reason, usage, trace.decision,
                                trace.overhead_us(), finish.tool_calls)
        if result is None:
            raise AtpError(ErrorCode.INTERNAL, "pipeline ended without a result")
        if self.durable is not None:   # the answer goes out once its audit row is committed
            await self.durable()
        return result


async def _discard(started) -> None:
    """A hedge that got its first item too late: close its call (reported as cancelled)."""
    attempt, _ = started
    await attempt.close(asyncio.CancelledError())


async def _drain(adapter, model, request: ChatRequest):
    """Collect an adapter's stream into (text, finish, tokens); a stream without Finish is a cut."""
    parts, tokens, calls = [], 0, {}
    async with aclosing(adapter.stream(model, request)) as items:
        async for item in items:
            if type(item) is TextDelta:
                parts.append(item.text)
                tokens += item.tokens
            elif type(item) is ToolCallDelta:
                call = calls.get(item.index) or ToolCall(item.id or "", item.name or "", "")
                calls[item.index] = call._replace(arguments=call.arguments + item.arguments)
                tokens += item.tokens
            elif type(item) is Finish:
                if calls and not item.tool_calls:
                    item = item._replace(tool_calls=tuple(calls[i] for i in sorted(calls)))
                return "".join(parts), item, tokens
    raise AtpError(ErrorCode.UPSTREAM_CUT, f"{model.id} ended the stream without finishing")
