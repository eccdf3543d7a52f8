"""Dispatch policy: which model each attempt goes to, how long to back off, when to hedge, and the race.

The pipeline walks a request's failover chain with an attempt budget (`[routing] max_attempts`, or
the decision's own `max_attempts`). Attempt n goes to the next chain model not yet tried; once the
chain is used up the walk starts over from the top (a retry), after an exponential backoff with
AWS "full jitter" — sleep uniform(0, min(cap, base * 2**retry)) — and never sooner than the
upstream's Retry-After. A different model is tried at once: its provider owes us no cool-down.
Only retryable codes (codec.errors.RETRYABLE) move on; anything else is the answer. A model whose
breaker refused, or whose Retry-After is longer than we are willing to wait, leaves the walk.

Hedging (optional, for latency-critical tiers): if the first attempt has produced nothing after
`hedge_after_ms`, the next one starts too; the first to answer wins and the loser's task is
cancelled, which closes its upstream call and releases its breaker probe and concurrency slot
(pipeline._Attempt and _Call report however a call ends).
The clock of every wait is the injected `sleep`, and the jitter the injected `rng`, so tests are
deterministic without sleeping.
"""
import asyncio
import random
from dataclasses import dataclass

from codec.errors import ErrorCode

from .types import TIERS, AtpError

__all__ = ["CHECKS", "Caps", "DispatchConfig", "Plan", "first_item"]


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    """The `[routing]` keys that govern dispatch (retries, failover, hedging)."""

    # First choice + two more: absorbs one dead provider and one flaky answer, while a client's
    # worst-case wait stays ~3x one upstream's time to first byte.
    max_attempts: int = 3
    # 100 ms: a transient 5xx (a restarted worker, a load balancer reshuffle) has usually cleared
    # by then; doubling per retry, so the second retry waits up to 200 ms.
    backoff_base_ms: float = 100.0
    # 2 s: past this a client is better told to come back (it has its own retry budget) than held.
    backoff_cap_ms: float = 2000.0
    # A Retry-After longer than this ends the retries of that model: we would hold the client
    # longer than it would wait for us, so the error (with its retry_after_ms) goes back instead.
    max_retry_after_ms: float = 5000.0
    # 0 = no hedging. Otherwise: start the next candidate when the first has produced no token
    # after this long. Only for the tiers below: a hedge may pay for two answers.
    hedge_after_ms: float = 0.0
    hedge_tiers: tuple[str, ...] = ("fast",)

    def backoff_s(self, retry: int, rng: random.Random) -> float:
        """Full jitter: uniform over [0, min(cap, base * 2**retry)) seconds; retry counts from 0."""
        ceiling_ms = min(self.backoff_cap_ms, self.backoff_base_ms * (2 ** min(retry, 32)))
        return rng.random() * ceiling_ms / 1000

    def hedge_s(self, tier: str) -> float | None:
        """Seconds before a hedge starts for this tier, or None when it does not hedge."""
        if self.hedge_after_ms > 0 and tier in self.hedge_tiers:
            return self.hedge_after_ms / 1000
        return None


# Range rules for config.py's _check. The budget is at least the first call and at most 20: beyond
# that, capped backoffs alone would hold a client for most of a minute before it hears anything.
CHECKS = {"max_attempts": ("in", 1, 20), "backoff_base_ms": (">=", 0), "backoff_cap_ms": (">=", 0),
          "max_retry_after_ms": (">=", 0), "hedge_after_ms": (">=", 0)}


def check_tiers(tiers) -> str | None:
    """The problem with a hedge_tiers value, or None."""
    bad = [t for t in tiers if t not in TIERS]
    return f"unknown tier(s) {bad} (known: {', '.join(TIERS)})" if bad else None


class Plan:
    """The walk over one request's chain: which model is next, and how long to wait before it.

    Pure bookkeeping (no I/O, no clock): `next()` answers (model id, wait s) or None when the
    budget or the chain is spent; `failed()` records why an attempt ended.
    """

    __slots__ = ("chain", "budget", "config", "rng", "started", "tried", "dropped", "retry_after_ms",
                 "retries")

    def __init__(self, chain: tuple, budget: int, config: DispatchConfig, rng: random.Random):
        self.chain, self.budget, self.config, self.rng = chain, budget, config, rng
        self.started = 0             # attempts begun
        self.tried: set = set()      # models that have had an attempt
        self.dropped: set = set()    # models out of the walk (breaker refused, Retry-After too long)
        self.retry_after_ms: dict = {}   # model -> what its last failure asked for
        self.retries = 0             # attempts on a model already tried (the backoff exponent)

    def next(self) -> tuple[str, float] | None:
        if self.started >= self.budget:
            return None
        live = [m for m in self.chain if m not in self.dropped]
        if not live:
            return None
        fresh = [m for m in live if m not in self.tried]
        self.started += 1
        if fresh:
            model = fresh[0]
            self.tried.add(model)
            return model, 0.0
        # Every live model has been tried once: start over from the top, after a backoff.
        model = live[self.retries % len(live)]
        wait = self.config.backoff_s(self.retries, self.rng)
        wait = max(wait, self.retry_after_ms.get(model, 0) / 1000)
        self.retries += 1
        return model, wait

    def failed(self, model: str, exc: AtpError) -> None:
        """Record a retryable failure of `model` (the caller re-raises the others)."""
        if exc.code is ErrorCode.UNAVAILABLE:      # its breaker refused: retrying it now cannot help
            self.dropped.add(model)
        elif exc.retry_after_ms > self.config.max_retry_after_ms:
            self.dropped.add(model)
        elif exc.retry_after_ms:
            self.retry_after_ms[model] = exc.retry_after_ms


class Caps:
    """Per-provider in-flight caps (an adapter's `max_concurrency`; 0 or absent = none).

    Taken before the breaker hears of the call and given back whatever ends it: a full cap says
    nothing about the upstream's health, only that we promised not to send it more at once.
    Keyed by configured provider names only, so bounded by the configuration.
    """

    __slots__ = ("limits", "inflight")

    def __init__(self, adapters: dict):
        self.limits = {name: cap for name, a in adapters.items()
                       if (cap := getattr(a, "max_concurrency", 0) or 0) > 0}
        self.inflight = dict.fromkeys(self.limits, 0)

    def take(self, provider: str) -> bool:
        """Count one call in; False when the provider has no cap (nothing to give back)."""
        cap = self.limits.get(provider)
        if cap is None:
            return False
        if self.inflight[provider] >= cap:
            raise AtpError(ErrorCode.OVERLOADED, f"{provider}: {cap} calls in flight (its "
                                                 "max_concurrency); trying elsewhere or later")
        self.inflight[provider] += 1
        return True

    def give_back(self, provider: str) -> None:
        self.inflight[provider] -= 1


async def first_item(chain: tuple, budget: int, config: DispatchConfig, rng: random.Random, start,
                     hedge_s: float | None, sleep, on_fail, discard=None):
    """Start attempts down the chain until one gets as far as its first item: (model id, result).

    `start(model_id)` is a coroutine that makes one call and returns once it has something (the
    first stream item, or the whole answer), closing its own call if it fails; `on_fail(model_id,
    exc)` hears each retryable failure; `discard(result)` closes a hedge that succeeded too late.
    A non-retryable error is raised at once; when the plan is spent the last failure is raised.
    The first try builds nothing (no Plan, no task): that is nearly every request.
    """
    if hedge_s is not None:
        return await _hedged(Plan(chain, budget, config, rng), start, hedge_s, sleep, on_fail, discard)
    plan, model_id, wait = None, chain[0], 0.0
    while True:
        if wait:
            await sleep(wait)
        try:
            return model_id, await start(model_id)
        except AtpError as exc:
            if not exc.retryable:
                raise
            last = exc
        if plan is None:
            plan = Plan(chain, budget, config, rng)
            plan.next()                            # the first try, made above without it
        plan.failed(model_id, last)
        on_fail(model_id, last)
        step = plan.next()
        if step is None:
            raise last
        model_id, wait = step


async def _hedged(plan: Plan, start, hedge_s: float, sleep, on_fail, discard):
    """first_item with hedging: a timer per start; when it fires first, the next attempt starts
    beside the running ones. Whatever ends this (a winner, an error, our own cancellation), every
    other attempt is cancelled and awaited, so its upstream call is closed and its breaker
    report (a cancel: neutral, the probe handed back) made before we return."""
    running: dict = {}            # task -> model id
    timer = last = None
    try:
        while True:
            if not running or (timer is not None and timer.done()):
                step = plan.next()
                if step is None:
                    if not running:
                        raise last
                    timer = None                 # nothing left to hedge with: wait for those out
                else:
                    model_id, wait = step
                    if wait and not running:     # a backoff only when nothing is in flight
                        await sleep(wait)
                    running[asyncio.ensure_future(start(model_id))] = model_id
                    timer = asyncio.ensure_future(sleep(hedge_s))
            waiting = set(running) if timer is None else {*running, timer}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finished = [t for t in running if t in done]
            # A winner beats a failure that landed in the same loop turn.
            finished.sort(key=lambda t: t.exception() is not None)
            for task in finished:
                model_id = running.pop(task)
                exc = task.exception()
                if exc is None:
                    return model_id, task.result()
                if not isinstance(exc, AtpError) or not exc.retryable:
                    raise exc
                plan.failed(model_id, exc)
                on_fail(model_id, exc)
                last = exc
    finally:
        if timer is not None:
            timer.cancel()
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        for task in running:                       # finished with a result nobody will read
            if discard is not None and not task.cancelled() and task.exception() is None:
                await discard(task.result())
