"""The one request pipeline every transport calls: admit → policy → route → dispatch → stream →
account → audit → metrics. Authentication happens at the door (transport + auth.py) and arrives
here as a Principal."""
import asyncio
import time
from contextlib import aclosing
from dataclasses import dataclass

from codec.errors import ErrorCode

from .accounting import Accountant
from .admission import Admission
from .auth import Principal
from .metrics import NO_MODEL, UNKNOWN
from .routing.health import Action, HealthBoard, Signal, ended

_DISPATCH, _REJECT, _PROBE = Signal.DISPATCH, Action.REJECT, Action.PROBE   # enum lookups cost ~100 ns
from .routing.router import Router
from .types import (AtpError, ChatRequest, Completion, Delta, Done, Finish, RouteDecision, Routed,
                    TextDelta)

MAX_ATTEMPTS = 3   # first choice + two failovers down the chain, for errors before the first token


@dataclass(frozen=True, slots=True)
class BasicPolicy:
    """The policy hook's minimal real rule set: size caps and an optional per-tenant model allowlist."""

    max_prompt_chars: int = 400_000
    max_tokens: int = 32_768
    allowed_models: dict | None = None      # tenant -> frozenset of model ids

    def check(self, principal: Principal, request: ChatRequest) -> None:
        if request.prompt_chars() > self.max_prompt_chars:
            raise AtpError(ErrorCode.INVALID_REQUEST,
                           f"prompt of {request.prompt_chars()} chars exceeds {self.max_prompt_chars}")
        if request.max_tokens is not None and request.max_tokens > self.max_tokens:
            raise AtpError(ErrorCode.FORBIDDEN, f"max_tokens {request.max_tokens} exceeds policy "
                           f"limit {self.max_tokens}")
        if self.allowed_models is not None and request.model:
            allowed = self.allowed_models.get(principal.tenant, frozenset())
            if request.model not in allowed:
                raise AtpError(ErrorCode.FORBIDDEN, f"tenant {principal.tenant!r} may not use "
                               f"model {request.model!r}")


class _Trace:
    """What one request did, for accounting, audit and metrics at the end (whatever the end)."""

    __slots__ = ("t0", "upstream_ns", "decision", "usage", "outcome", "code", "finished",
                 "failures")

    def __init__(self, started_ns: int | None):
        self.t0 = started_ns or time.perf_counter_ns()
        self.upstream_ns = 0
        self.decision: RouteDecision | None = None
        self.usage = None
        self.outcome, self.code = "ok", 0
        self.finished = False          # the result was produced; a later close is not a cancel
        self.failures: list[str] = []

    def overhead_us(self) -> int:
        return (time.perf_counter_ns() - self.t0 - self.upstream_ns) // 1000


class _Admitted:
    """The request's admission scope (a class, not @asynccontextmanager: a third of the cost)."""

    __slots__ = ("p", "request", "principal", "transport", "trace", "admitted")

    def __init__(self, pipeline, request, principal, transport, started_ns):
        self.p, self.request, self.principal, self.transport = pipeline, request, principal, transport
        self.trace = _Trace(started_ns)
        self.admitted = False

    async def __aenter__(self) -> _Trace:
        p, request, trace = self.p, self.request, self.trace
        request.request_id = p._request_id(request)
        try:
            request.validate()
            p.policy.check(self.principal, request)
            await p.admission.acquire()
            self.admitted = True
            trace.decision = p.router.choose(request, p.clock())
        except BaseException as exc:
            self._close(exc)
            raise
        return trace

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        self._close(exc)
        return False

    def _close(self, exc: BaseException | None) -> None:
        trace = self.trace
        if isinstance(exc, AtpError):
            trace.outcome, trace.code = exc.name, int(exc.code)
        elif exc is not None and not trace.finished:   # client gone (GeneratorExit/cancel) or a bug
            cancelled = isinstance(exc, (GeneratorExit, asyncio.CancelledError))
            trace.outcome, trace.code = (("CANCELLED", int(ErrorCode.CANCELLED)) if cancelled
                                         else ("INTERNAL", int(ErrorCode.INTERNAL)))
        if self.admitted:
            self.admitted = False
            self.p.admission.release()
        self.p._record(self.request, self.principal, self.transport, trace)


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
        self.clock = clock
        self._ids = 0
        self.observers: list = []   # fn(request_id, transport, outcome, code) after each request

    def _request_id(self, request: ChatRequest) -> str:
        if request.request_id:
            return request.request_id
        self._ids += 1
        return f"atp-{int(time.time() * 1000):x}-{self._ids:x}"

    def route(self, request: ChatRequest, principal: Principal) -> RouteDecision:
        """Selection only (the Route RPC): validation, policy and routing, no dispatch."""
        request.validate()
        self.policy.check(principal, request)
        return self.router.choose(request, self.clock())

    def _admitted(self, request: ChatRequest, principal: Principal, transport: str,
                  started_ns: int | None) -> "_Admitted":
        """`async with`: validate, apply policy, take a dispatch slot and route; always release,
        always record the outcome."""
        return _Admitted(self, request, principal, transport, started_ns)

    def _chain(self, trace: _Trace) -> tuple:
        d = trace.decision
        return ((d.model,) + d.fallbacks)[:MAX_ATTEMPTS]

    def _attempt_failed(self, trace: _Trace, chain: tuple, attempt: int, exc: AtpError,
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
        d = trace.decision
        trace.decision = RouteDecision(
            nxt.provider, nxt.id, d.estimated_cost_usd, nxt.latency_ms, d.confidence,
            d.reasons + (f"failed over after {'; '.join(trace.failures)}",),
            tuple(m for m in chain if m != nxt.id))
        return trace.decision

    def _succeeded(self, trace: _Trace, principal: Principal, model, request, finish: Finish,
                   tokens: int):
        trace.usage = usage = self.accountant.usage(model, request, finish, tokens)
        self.accountant.record(principal.tenant, model.id, usage)
        trace.finished = True
        return usage

    async def stream(self, request: ChatRequest, principal: Principal, transport: str,
                     started_ns: int | None = None):
        """Async generator: Routed, then Delta..., then Done; failures raise AtpError.

        Closing the generator early (client gone) closes the upstream call with it. After a
        failover before the first token a second Routed names the model that answers now.
        """
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
                yield Done(finish.reason, usage, trace.decision, trace.overhead_us())
                return

    async def complete(self, request: ChatRequest, principal: Principal, transport: str,
                       started_ns: int | None = None) -> Completion:
        """A whole answer (non-streaming callers): the adapter's one-shot `complete` when it has
        one — a single JSON answer costs the upstream and us less than an SSE stream — else its
        stream, drained. Same admission, failover, accounting and audit as stream()."""
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
                return Completion(request.request_id, text, finish.reason, usage, trace.decision,
                                  trace.overhead_us())
        raise AtpError(ErrorCode.INTERNAL, "pipeline ended without a result")

    def _record(self, request, principal, transport, trace: _Trace) -> None:
        elapsed_ns = time.perf_counter_ns() - trace.t0
        decision, usage = trace.decision, trace.usage
        if decision is not None:
            model = decision.model
        elif request.model:    # refused before routing: the client's name only if we serve it
            model = request.model if request.model in self.router.models else UNKNOWN
        else:
            model = NO_MODEL
        if self.metrics is not None:
            self.metrics.observe(transport, model, trace.outcome, elapsed_ns / 1e9,
                                 (elapsed_ns - trace.upstream_ns) / 1e9 if usage else None)
        if self.audit is not None:
            self.audit.record(principal.tenant, principal.name, transport, request.request_id, model,
                              trace.outcome, trace.code, {
                                  "tier": request.tier,
                                  "provider": decision.provider if decision else None,
                                  "in": usage.input_tokens if usage else 0,
                                  "out": usage.output_tokens if usage else 0,
                                  "cost_micros": usage.cost_usd_micros if usage else 0,
                                  "elapsed_us": elapsed_ns // 1000})
        for observer in self.observers:
            observer(request.request_id, transport, trace.outcome, trace.code)


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
