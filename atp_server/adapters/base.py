"""The narrow adapter protocol every provider family implements, and the model spec it serves."""
from dataclasses import dataclass
from typing import AsyncIterator, Protocol

from ..types import ChatRequest, Finish, TextDelta


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A routable model: which adapter serves it, what the provider calls it, what it costs."""

    id: str                                   # what clients ask for / see
    provider: str                             # adapter instance name (config [[providers]].name)
    upstream: str                             # the provider's own model name
    price_in_per_mtok: float = 0.0            # USD per million input tokens
    price_out_per_mtok: float = 0.0           # USD per million output tokens
    context_window: int = 8192
    capabilities: frozenset = frozenset({"chat"})
    quality: float = 0.5                      # prior, 0..1
    latency_ms: float = 500.0                 # prior for a typical answer
    max_output_tokens: int = 1024

    def cost_micros(self, input_tokens: int, output_tokens: int) -> int:
        """Cost in USD micros (price per Mtok × tokens = micro-dollars, exactly)."""
        return round(input_tokens * self.price_in_per_mtok + output_tokens * self.price_out_per_mtok)


class Adapter(Protocol):
    """One provider family (OpenAI-compatible, Anthropic, simulated...).

    `stream` yields TextDelta items and ends with exactly one Finish. Failures raise
    types.AtpError with an upstream code (UPSTREAM_ERROR, UPSTREAM_TIMEOUT, UPSTREAM_CUT, ...);
    an iterator that stops without Finish is treated by the pipeline as UPSTREAM_CUT. Closing the
    iterator early (client went away) must cancel the upstream call promptly.
    """

    name: str
    capabilities: frozenset

    def stream(self, model: ModelSpec, request: ChatRequest) -> AsyncIterator[TextDelta | Finish]:
        ...

    async def aclose(self) -> None:
        ...


def estimate_tokens(text_chars: int) -> int:
    """Rough token count when a provider reports none (~4 characters per token)."""
    return max(1, (text_chars + 3) // 4)
