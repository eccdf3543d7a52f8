"""The one request pipeline every transport calls: a chain of stages around dispatch.

The chain is fixed at start-up (`build_chain`): validate → policy → admission → route, then
dispatch (failover down the chain, breaker reports) here, then — in reverse, whatever the outcome —
account → metrics → audit → observers. Authentication happens at the door (transport + auth.py)
and arrives here as a Principal.
"""
import asyncio
import time
from contextlib import aclosing

from codec.errors import ErrorCode

from .accounting import Accountant
from .admission import Admission
from .auth import Principal
from .logs import event
from .routing.health import Action, HealthBoard, Signal, ended
from .routing.router import Router
from .stages import RequestContext, StageChain
from .stages.admission import AdmissionStage
from .stages.policy import BasicPolicy, PolicyStage, ValidateStage
from .stages.record import AccessLogStage, AccountStage, AuditStage, MetricsStage, ObserverStage
from .stages.route import RouteStage
from .types import AtpError, ChatRequest, Completion, Delta, Done, Finish, RouteDecision, Routed, TextDelta

__all__ = ["BasicPolicy", "Pipeline", "build_chain"]

MAX_ATTEMPTS = 3   # first choice + two failovers down the chain, for errors before the first token
_DISPATCH, _REJECT, _PROBE = Signal.DISPATCH, Action.REJECT, Action.PROBE   # enum lookups cost ~100 ns
_CANCELLED, _INTERNAL = int(ErrorCode.CANCELLED), int(ErrorCode.INTERNAL)


def build_chain(*, router: Router, admission: Admission, accountant: Accountant, policy,
                clock, observers: list, metrics=None, audit=None) -> StageChain:
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
    stages += [AccountStage(accountant), ValidateStage(), PolicyStage(policy),
               AdmissionStage(admission), RouteStage(router, clock)]
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
        if isinstance(exc, AtpError):
            ctx.outcome, ctx.code = exc.name, int(exc.code)
        elif exc is not None and not ctx.finished:   # client gone (GeneratorExit/cancel) or a bug
            if isinstance(exc, (GeneratorExit, asyncio.CancelledError)):
                ctx.outcome, ctx.code = "CANCELLED", _CANCELLED
            else:
                ctx.outcome, ctx.code = "INTERNAL", _INTERNAL
        afters, outcome = self.chain.afters, ctx.outcome
        for i in range(self.entered - 1, -1, -1):
            after = afters[i]
            if after is not None:
                after(ctx, outcome)
        self.entered = 0


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


class Pipeline:
    def __init__(self, router: Router, adapters: dict, admission: Admission,
                 accountant: Accountant, audit=None, metrics=None, policy=BasicPolicy(),
                 clock=time.monotonic):
        self.router = router
        self.adapters = adapters
        self.admission = admission
        self.accountant = accountant
        self.audit = audit
        self.metrics = metrics
        self.policy = policy
        # () -> awaitable: returns once every audit row recorded so far is committed (audit.py)
        self.durable = audit.durable if audit is not None else None
        self._ids = 0
        self.observers: list = []   # fn(request_id, transport, outcome, code) after each request
        self.chain = build_chain(router=router, admission=admission, accountant=accountant,
                                 policy=policy, clock=clock, observers=self.observers,
                                 metrics=metrics, audit=audit)
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
        return _Scope(self.chain, RequestContext(request, principal, transport, started_ns))

    def _chain(self, trace: RequestContext) -> tuple:
        d = trace.decision
        return ((d.model,) + d.fallbacks)[:MAX_ATTEMPTS]

    def _attempt_failed(self, trace: RequestContext, chain: tuple, attempt: int, exc: AtpError,
                        emitted: int) -> RouteDecision:
        """Decide after a failed attempt: re-raise, or return the decision for the next model."""
        model_id = chain[attempt]
        if emitted or not exc.retryable or attempt + 1 >= len(chain):
            if emitted and exc.code is not ErrorCode.UPSTREAM_CUT:
                raise AtpError(ErrorCode.UPSTREAM_CUT,
                               f"{model_id} failed mid-stream: {exc.message}") from exc
            raise exc
        trace.failures.append(f"{model_id}: {exc.name}")
        nxt = self.router.models[chain[attempt + 1]]
        event("failover", request_id=trace.request.request_id, tenant=trace.principal.tenant,
              failed=model_id, code=exc.name, next=nxt.id)
        d = trace.decision
        trace.decision = RouteDecision(
            nxt.provider, nxt.id, d.estimated_cost_usd, nxt.latency_ms, d.confidence,
            d.reasons + (f"failed over after {'; '.join(trace.failures)}",),
            tuple(m for m in chain if m != nxt.id))
        return trace.decision

    def _succeeded(self, trace: RequestContext, principal: Principal, model, request, finish: Finish,
                   tokens: int):
        trace.usage = usage = self.accountant.usage(model, request, finish, tokens)
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
            chain = self._chain(trace)
            health, clock = self.router.health, self.clock
            for attempt, model_id in enumerate(chain):
                model = self.router.models[model_id]
                emitted = tokens = 0
                finish = None
                try:
                    with _Call(health, model_id, clock):
                        async with aclosing(self.adapters[model.provider].stream(model, request)) as up:
                            it = up.__aiter__()
                            while True:
                                u0 = time.perf_counter_ns()
                                try:
                                    item = await it.__anext__()
                                except StopAsyncIteration:
                                    break
                                finally:
                                    trace.upstream_ns += time.perf_counter_ns() - u0
                                if type(item) is TextDelta:
                                    yield Delta(emitted, item.text, item.tokens)
                                    emitted += 1
                                    tokens += item.tokens
                                elif type(item) is Finish:
                                    finish = item
                                    break
                        if finish is None:
                            raise AtpError(ErrorCode.UPSTREAM_CUT,
                                           f"{model_id} ended the stream without finishing")
                except AtpError as exc:
                    yield Routed(self._attempt_failed(trace, chain, attempt, exc, emitted))
                    continue
                usage = self._succeeded(trace, principal, model, request, finish, tokens)
                done = Done(finish.reason, usage, trace.decision, trace.overhead_us())
                break
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
            chain = self._chain(trace)
            health, clock = self.router.health, self.clock
            for attempt, model_id in enumerate(chain):
                model = self.router.models[model_id]
                adapter = self.adapters[model.provider]
                u0 = time.perf_counter_ns()
                try:
                    with _Call(health, model_id, clock):
                        if hasattr(adapter, "complete"):
                            text, finish = await adapter.complete(model, request)
                            tokens = finish.output_tokens or 0
                        else:
                            text, finish, tokens = await _drain(adapter, model, request)
                except AtpError as exc:
                    self._attempt_failed(trace, chain, attempt, exc, 0)
                    continue
                finally:
                    trace.upstream_ns += time.perf_counter_ns() - u0
                usage = self._succeeded(trace, principal, model, request, finish, tokens)
                result = Completion(request.request_id, text, finish.reason, usage,
                                    trace.decision, trace.overhead_us())
                break
        if result is None:
            raise AtpError(ErrorCode.INTERNAL, "pipeline ended without a result")
        if self.durable is not None:   # the answer goes out once its audit row is committed
            await self.durable()
        return result


async def _drain(adapter, model, request: ChatRequest):
    """Collect an adapter's stream into (text, finish, tokens); a stream without Finish is a cut."""
    parts, tokens = [], 0
    async with aclosing(adapter.stream(model, request)) as items:
        async for item in items:
            if type(item) is TextDelta:
                parts.append(item.text)
                tokens += item.tokens
            elif type(item) is Finish:
                return "".join(parts), item, tokens
    raise AtpError(ErrorCode.UPSTREAM_CUT, f"{model.id} ended the stream without finishing")
