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

    async def stream(self, request: ChatRequest, principal: Principal, transport: str,
                     started_ns: int | None = None):
        """Async generator: Routed, then Delta..., then Done; failures raise AtpError.

        Closing the generator early (client gone) closes the upstream call with it.
        """
        t0 = started_ns or time.perf_counter_ns()
        upstream_ns = 0
        request.request_id = self._request_id(request)
        decision = None
        outcome, code, usage = "ok", 0, None
        admitted = finished = False
        try:
            request.validate()
            self.policy.check(principal, request)
            await self.admission.acquire()
            admitted = True
            decision = self.router.choose(request, self.clock())
            yield Routed(decision)
            chain = (decision.model,) + decision.fallbacks
            failures = []
            for attempt, model_id in enumerate(chain[:MAX_ATTEMPTS]):
                model = self.router.models[model_id]
                adapter = self.adapters[model.provider]
                breaker = self.router.health.breaker(model_id)
                breaker.on_dispatch()
                emitted = tokens = 0
                finish = None
                try:
                    async with aclosing(_upstream(adapter, model, request)) as upstream:
                        it = upstream.__aiter__()
                        while True:
                            u0 = time.perf_counter_ns()
                            try:
                                item = await it.__anext__()
                            except StopAsyncIteration:
                                break
                            finally:
                                upstream_ns += time.perf_counter_ns() - u0
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
                    breaker.on_failure(self.clock())
                    if emitted or not exc.retryable or attempt + 1 >= min(len(chain), MAX_ATTEMPTS):
                        if emitted and exc.code is not ErrorCode.UPSTREAM_CUT:
                            raise AtpError(ErrorCode.UPSTREAM_CUT,
                                           f"{model_id} failed mid-stream: {exc.message}") from exc
                        raise
                    failures.append(f"{model_id}: {exc.name}")
                    nxt = self.router.models[chain[attempt + 1]]
                    # Nothing was emitted yet: tell the transport who answers now (HTTP headers).
                    yield Routed(RouteDecision(
                        nxt.provider, nxt.id, decision.estimated_cost_usd, nxt.latency_ms,
                        decision.confidence, decision.reasons + (
                            f"failing over after {'; '.join(failures)}",),
                        tuple(m for m in chain if m != nxt.id)))
                    continue
                breaker.on_success()
                if failures:
                    decision = RouteDecision(
                        model.provider, model.id, decision.estimated_cost_usd,
                        model.latency_ms, decision.confidence,
                        decision.reasons + (f"failed over after {'; '.join(failures)}",),
                        tuple(m for m in chain if m != model.id))
                usage = self.accountant.usage(model, request, finish, tokens)
                self.accountant.record(principal.tenant, model.id, usage)
                overhead_us = (time.perf_counter_ns() - t0 - upstream_ns) // 1000
                finished = True     # a consumer closing us after Done is not a cancellation
                yield Done(finish.reason, usage, decision, overhead_us)
                return
        except AtpError as exc:
            outcome, code = exc.name, int(exc.code)
            raise
        except GeneratorExit:
            if not finished:
                outcome, code = "CANCELLED", int(ErrorCode.CANCELLED)
            raise
        except BaseException as exc:  # CancelledError or a bug: never leak a slot, always audit
            if not finished:
                outcome, code = ("CANCELLED", int(ErrorCode.CANCELLED)) if isinstance(
                    exc, asyncio.CancelledError) else ("INTERNAL", int(ErrorCode.INTERNAL))
            raise
        finally:
            if admitted:
                self.admission.release()
            self._finish(request, principal, transport, decision, outcome, code, usage, t0,
                         upstream_ns)

    def _finish(self, request, principal, transport, decision, outcome, code, usage, t0,
                upstream_ns) -> None:
        elapsed_ns = time.perf_counter_ns() - t0
        model = decision.model if decision else (request.model or "-")
        if self.metrics is not None:
            self.metrics.observe(
                transport, model, outcome, elapsed_ns / 1e9,
                (elapsed_ns - upstream_ns) / 1e9 if usage else None, principal.tenant,
                usage.input_tokens if usage else 0, usage.output_tokens if usage else 0,
                usage.cost_usd_micros if usage else 0)
        if self.audit is not None:
            self.audit.record(principal.tenant, principal.name, transport, request.request_id, model,
                              outcome, code, {
                                  "tier": request.tier, "provider": decision.provider if decision else None,
                                  "in": usage.input_tokens if usage else 0,
                                  "out": usage.output_tokens if usage else 0,
                                  "cost_micros": usage.cost_usd_micros if usage else 0,
                                  "elapsed_us": elapsed_ns // 1000})

    async def complete(self, request: ChatRequest, principal: Principal, transport: str,
                       started_ns: int | None = None) -> Completion:
        """A whole answer (non-streaming transports), assembled from the same stream."""
        parts = []
        async with aclosing(self.stream(request, principal, transport, started_ns)) as events:
            async for item in events:
                if type(item) is Delta:
                    parts.append(item.text)
                elif type(item) is Done:
                    return Completion(request.request_id, "".join(parts), item.finish_reason,
                                      item.usage, item.decision, item.overhead_us)
        raise AtpError(ErrorCode.INTERNAL, "pipeline ended without a result")


async def _upstream(adapter, model, request: ChatRequest):
    """The adapter's stream; for non-streaming requests its one-shot `complete` when it has one
    (a single JSON answer costs the upstream and us less than parsing an SSE stream)."""
    if request.stream or not hasattr(adapter, "complete"):
        async with aclosing(adapter.stream(model, request)) as items:
            async for item in items:
                yield item
        return
    text, finish = await adapter.complete(model, request)
    tokens = finish.output_tokens if finish.output_tokens is not None else 1
    yield TextDelta(text, tokens)
    yield finish
