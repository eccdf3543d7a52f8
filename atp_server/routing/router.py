"""Route selection, pure: mask the models a request can use, score what is left, return a chain.

choose(request, now) never touches the network and changes no health state: it only reads the
HealthBoard (the pipeline reports to it). No route because of the request is NO_ROUTE (a 4xx); no
route because of health, even in part, is a retryable UNAVAILABLE with retry_after_ms. This is the
minimal real router (tier-weighted quality/cost/latency); the learned router replaces `_score`.
"""
from codec.errors import ErrorCode

from .spec import ModelSpec, estimate_tokens
from ..types import AtpError, ChatRequest, RouteDecision
from .health import HealthBoard

# tier -> weights for (quality, cost, latency); cost and latency are normalised over the candidates.
TIER_WEIGHTS = {"fast": (0.2, 0.3, 0.5), "balanced": (0.4, 0.4, 0.2), "high": (0.9, 0.05, 0.05)}

# Entries of the ranking cache. Its key is (pinned configured model or None, tier, normalised
# capability set): a deployment's traffic uses a handful of these, but the key space grows as
# 2^capabilities, so it is capped. An entry is one tuple of references (~200 B): 1,024 of them are
# ~200 KB, and a miss only costs one ranking (microseconds), so evicting is cheap.
RANKED_CACHE = 1024
_NO_CAPS = frozenset()


class Router:
    def __init__(self, models: list[ModelSpec], health: HealthBoard | None = None):
        if not models:
            raise ValueError("the router needs at least one model")
        self.models = {m.id: m for m in models}
        self.health = health or HealthBoard()
        self._min_context = min(m.context_window for m in models)
        # Capability names some model has: any other name cannot match, so it never enters a key.
        self._known_caps = frozenset().union(*(m.capabilities for m in models))
        # (pinned model, tier, capability set) -> (ranked models, reasons): the masks and scores
        # that depend on nothing but these, reused while every circuit is closed. Keys hold only
        # configured names (an unknown pinned model raises before it is stored); RANKED_CACHE
        # bounds the rest.
        self._ranked: dict[tuple, tuple] = {}

    def expected_cost_micros(self, model: ModelSpec, request: ChatRequest,
                             prompt_tokens: int | None = None) -> int:
        if prompt_tokens is None:
            prompt_tokens = estimate_tokens(request.prompt_chars())
        return model.cost_micros(prompt_tokens, request.max_tokens or model.max_output_tokens)

    def choose(self, request: ChatRequest, now: float) -> RouteDecision:
        prompt_tokens = estimate_tokens(request.prompt_chars())
        simple = (request.max_cost_usd is None and request.latency_slo_ms is None
                  and prompt_tokens + (request.max_tokens or 0) <= self._min_context
                  and self.health.all_closed())
        caps = request.capabilities
        if caps:
            # Sorted, deduplicated: a set. Unknown names cannot match any model, so such a request
            # is ranked (to say why nothing fits) but never cached.
            caps = frozenset(caps)
            simple = simple and caps <= self._known_caps
        else:
            caps = _NO_CAPS
        key = (request.model, request.tier, caps)
        cached = self._ranked.get(key) if simple else None
        if cached is None:
            cached = self._rank(request, prompt_tokens, now)
            if simple:
                if len(self._ranked) >= RANKED_CACHE:     # drop the oldest entry (insertion order)
                    del self._ranked[next(iter(self._ranked))]
                self._ranked[key] = cached
        ranked, reasons = cached
        best = ranked[0]
        return RouteDecision(
            provider=best.provider, model=best.id,
            estimated_cost_usd=self.expected_cost_micros(best, request, prompt_tokens) / 1e6,
            estimated_latency_ms=best.latency_ms,
            confidence=1.0 if request.model else round(0.5 + 0.5 / len(ranked), 3),
            reasons=reasons, fallbacks=tuple(m.id for m in ranked[1:]))

    def _rank(self, request: ChatRequest, prompt_tokens: int, now: float):
        if request.model:
            model = self.models.get(request.model)
            if model is None:
                raise AtpError(ErrorCode.UNKNOWN_MODEL, f"unknown model {request.model!r}; "
                               f"known: {', '.join(sorted(self.models))}")
            candidates, reasons = [model], ["pinned by request"]
        else:
            candidates, reasons = list(self.models.values()), []
        why_not: dict[str, str] = {}
        sick = []                  # excluded by health alone: retrying later can succeed
        usable = []
        needed = set(request.capabilities)
        for m in candidates:
            if not needed <= m.capabilities:
                why_not[m.id] = f"lacks {', '.join(sorted(needed - m.capabilities))}"
            elif prompt_tokens + (request.max_tokens or 0) > m.context_window:
                why_not[m.id] = f"context {m.context_window} too small"
            elif (request.max_cost_usd is not None
                  and self.expected_cost_micros(m, request, prompt_tokens) > request.max_cost_usd * 1e6):
                why_not[m.id] = "over max_cost_usd"
            elif (request.latency_slo_ms is not None and not request.model
                  and m.latency_ms > request.latency_slo_ms):
                why_not[m.id] = "latency prior over the SLO"
            elif not self.health.admits(m.id, now):
                why_not[m.id] = "circuit open"
                sick.append(m.id)
            else:
                usable.append(m)
        if not usable:
            detail = "; ".join(f"{k}: {v}" for k, v in sorted(why_not.items()))
            if sick:   # an upstream outage, not the caller's fault: retryable, with when to retry
                raise AtpError(ErrorCode.UNAVAILABLE, f"no model available now ({detail})",
                               retry_after_ms=self.health.retry_after_ms(sick, now))
            raise AtpError(ErrorCode.NO_ROUTE, f"no model satisfies the request ({detail})")
        max_cost = max(p.price_in_per_mtok + p.price_out_per_mtok for p in usable) or 1.0
        max_lat = max(p.latency_ms for p in usable) or 1.0
        weights = TIER_WEIGHTS[request.tier]
        ranked = sorted(usable, key=lambda m: self._score(m, weights, max_cost, max_lat),
                        reverse=True)
        if not request.model:
            reasons.append(f"tier {request.tier}: best quality/cost/latency of {len(usable)} candidates")
        if why_not:
            reasons.append("excluded " + ", ".join(f"{k} ({v})" for k, v in sorted(why_not.items())))
        return ranked, tuple(reasons)

    @staticmethod
    def _score(m: ModelSpec, weights, max_cost: float, max_lat: float) -> float:
        """Tier-weighted quality minus normalised price and latency (normalised over the pool)."""
        wq, wc, wl = weights
        cost = (m.price_in_per_mtok + m.price_out_per_mtok) / max_cost
        return wq * m.quality - wc * cost - wl * (m.latency_ms / max_lat)
