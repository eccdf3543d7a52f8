"""Embeddings: pick a model that serves them, call its adapter, account the tokens and the cost.

Smaller than the chat pipeline on purpose: embeddings have no streaming, no failover chain worth
having (one call, retried by the client) and no tier. They do respect the tenant's model
allowlist and skip models whose circuit is open, and are counted per tenant and model like chat.
"""
from codec.errors import ErrorCode

from .routing.spec import ModelSpec, estimate_tokens
from .types import AtpError, EmbeddingRequest, Embeddings, Usage


class Embedder:
    def __init__(self, router, adapters: dict, accountant, policy, clock):
        self._router, self._adapters, self._accountant = router, adapters, accountant
        self._policy, self._clock = policy, clock

    def _candidates(self, principal) -> list[ModelSpec]:
        allowed = getattr(self._policy, "allowed_models", None)
        only = None if allowed is None else allowed.get(principal.tenant, frozenset())
        return [m for m in self._router.models.values()
                if "embeddings" in m.capabilities and (only is None or m.id in only)]

    def choose(self, request: EmbeddingRequest, principal) -> ModelSpec:
        """The pinned model, which must serve embeddings; else the cheapest healthy one that does."""
        models = self._router.models
        if request.model is not None:
            model = models.get(request.model)
            if model is None:
                raise AtpError(ErrorCode.UNKNOWN_MODEL, f"the model {request.model!r} does not exist")
            if model not in self._candidates(principal):
                raise AtpError(ErrorCode.NO_ROUTE, f"{request.model} does not serve embeddings for this tenant"
                               if "embeddings" in model.capabilities else f"{request.model} lacks embeddings")
            return model
        health, now = self._router.health, self._clock()
        usable = [m for m in self._candidates(principal) if not health.is_open(m.id, now)]
        if not usable:
            raise AtpError(ErrorCode.NO_ROUTE, "no configured model serves embeddings")
        return min(usable, key=lambda m: (m.price_in_per_mtok, m.id))

    async def embed(self, request: EmbeddingRequest, principal) -> tuple[Embeddings, str, Usage]:
        model = self.choose(request, principal)
        adapter = self._adapters[model.provider]
        if not hasattr(adapter, "embed"):      # the model's "embeddings" capability is the declaration
            raise AtpError(ErrorCode.NO_ROUTE, f"provider {model.provider} does not serve embeddings")
        result = await adapter.embed(model, request)
        estimated = result.input_tokens is None
        tokens = (estimate_tokens(sum(len(s) for s in request.inputs)) if estimated
                  else result.input_tokens)
        usage = Usage(tokens, 0, model.cost_micros(tokens, 0), estimated)
        self._accountant.record(principal.tenant, model.id, usage)
        return result._replace(input_tokens=tokens), model.id, usage
