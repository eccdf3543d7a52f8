"""The narrow adapter protocol every provider family implements, and what an adapter declares."""
from typing import AsyncIterator, NamedTuple, Protocol

from ..routing.spec import ModelSpec, estimate_tokens
from ..types import ChatRequest, EmbeddingRequest, Embeddings, Finish, TextDelta, ToolCallDelta

__all__ = ["Adapter", "AdapterInfo", "FEATURES", "ModelSpec", "estimate_tokens", "required_capabilities"]

# What an adapter (and a model) may declare it can do. "chat" is the baseline; the others are
# what a request can need and routing masks on (a tools request never reaches a model without "tools").
FEATURES = frozenset({"chat", "streaming", "tools", "json", "vision", "embeddings", "long_context"})


class AdapterInfo(NamedTuple):
    """An adapter's declaration: its features and limits (0 = no limit of its own; the model's
    context_window / max_output_tokens from config still apply)."""
    features: frozenset
    max_context_tokens: int = 0
    max_output_tokens: int = 0


def required_capabilities(request: ChatRequest) -> tuple[str, ...]:
    """What serving `request` needs beyond chat, read off the request itself: tools → "tools",
    a JSON response_format → "json", an image part → "vision". Merged with what the caller asked."""
    need = set(request.capabilities)
    if request.tools:
        need.add("tools")
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        need.add("json")
    if any(d is not None and any(type(p) is not str for p in d.parts) for d in request.details):
        need.add("vision")
    return tuple(sorted(need))


class Adapter(Protocol):
    """One provider family (OpenAI-compatible, Anthropic, Ollama, simulated...).

    `stream` yields TextDelta / ToolCallDelta items and ends with exactly one Finish. Failures raise
    types.AtpError with an upstream code (UPSTREAM_ERROR, UPSTREAM_TIMEOUT, UPSTREAM_CUT, ...);
    an iterator that stops without Finish is treated by the pipeline as UPSTREAM_CUT. Closing the
    iterator early (client went away) must cancel the upstream call promptly.

    `complete` (optional; the pipeline drains `stream` without it) returns the whole text and a
    Finish carrying any tool calls. `embed`, `list_models` and `health` are optional too: an
    adapter without "embeddings" in `capabilities` is never asked to embed.
    """

    name: str
    capabilities: frozenset       # a subset of FEATURES

    def stream(self, model: ModelSpec, request: ChatRequest) -> AsyncIterator[TextDelta | ToolCallDelta | Finish]:
        ...

    async def complete(self, model: ModelSpec, request: ChatRequest) -> tuple[str, Finish]:
        ...

    async def embed(self, model: ModelSpec, request: EmbeddingRequest) -> Embeddings:
        ...

    async def list_models(self) -> list[str]:
        """The upstream model names the provider serves now (discovery)."""
        ...

    async def health(self) -> bool:
        """True when the provider answers at all (a cheap probe, not a completion)."""
        ...

    async def aclose(self) -> None:
        ...
